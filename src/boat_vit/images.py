"""Reading image files for the models, and the colours that tell classes and groups apart in pictures."""
import colorsys
import math
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

__all__ = ["load_image", "palette"]

_GOLDEN_RATIO = (math.sqrt(5) - 1) / 2  # hue step: consecutive colours land far apart on the colour circle
_SATURATIONS = (0.95, 0.55)  # alternate every colour
_VALUES = (1.0, 0.75)  # alternate every second colour
UINT8_MAX = 255


def load_image(path: Union[str, Path]) -> Image.Image:
    """The image file at ``path`` as an RGB PIL image.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file cannot be read as an image (named in the message).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as error:  # PIL's errors for unreadable, corrupt and truncated files
        raise ValueError(f"cannot read image {path}: {error}") from None


def palette(num_colours: int) -> np.ndarray:
    """Distinct colours ``(num_colours, 3)`` uint8: hues spread by the golden ratio, alternating shades."""
    colours = [
        colorsys.hsv_to_rgb((i * _GOLDEN_RATIO) % 1.0, _SATURATIONS[i % 2], _VALUES[i // 2 % 2])
        for i in range(num_colours)
    ]
    return np.rint(np.array(colours, dtype=np.float64).reshape(-1, 3) * UINT8_MAX).astype(np.uint8)
