"""Reading image files for the models, and the colours that tell classes and groups apart in pictures."""
import colorsys
import math
import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from PIL import Image

from .errors import ConfigError

__all__ = ["distinct_stems", "image_problem", "load_image", "palette", "to_rgb"]

_GOLDEN_RATIO = (math.sqrt(5) - 1) / 2  # hue step: consecutive colours land far apart on the colour circle
_SATURATIONS = (0.95, 0.55)  # alternate every colour
_VALUES = (1.0, 0.75)  # alternate every second colour
UINT8_MAX = 255
_WIDE_INTEGER_MODES = ("I;16", "I;16B", "I;16L", "I")  # 16-bit (and 32-bit integer) grey images
_EIGHT_BITS = 8  # a 16-bit grey value keeps its top eight bits


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB; 16-bit grey images keep their top 8 bits (PIL's own conversion clips them to
    white)."""
    if image.mode in _WIDE_INTEGER_MODES:
        grey = np.clip(np.asarray(image, dtype=np.int64), 0, np.iinfo(np.uint16).max) >> _EIGHT_BITS
        image = Image.fromarray(grey.astype(np.uint8), mode="L")
    return image.convert("RGB")


def load_image(path: Union[str, Path]) -> Image.Image:
    """The image file at ``path`` as an RGB PIL image.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file cannot be read as an image, or has more pixels than PIL decodes safely (named
            in the message).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except Image.DecompressionBombError as error:
        raise ValueError(f"image {path} is too large to decode safely: {error}") from None
    except (OSError, ValueError) as error:  # PIL's errors for unreadable, corrupt and truncated files
        raise ValueError(f"cannot read image {path}: {error}") from None


def image_problem(path: Union[str, Path]) -> Union[str, None]:
    """What keeps ``path`` from being read as an image (``None``: nothing); reads only the file's header."""
    path = Path(path)
    if path.is_dir():
        return f"{path} is a folder, not an image file"
    if not path.is_file():
        return f"image not found: {path}"
    try:
        with Image.open(path):
            return None
    except Image.DecompressionBombError as error:
        return f"image {path} is too large to decode safely: {error}"
    except (OSError, ValueError) as error:
        return f"cannot read image {path}: {error}"


def distinct_stems(paths: Sequence[Union[str, Path]]) -> list[str]:
    """An output name for each of ``paths`` (distinct files), no two alike: the file name without its suffix;
    where names are shared, the path from the folder that holds them all (``a/x.png`` -> ``a_x``), then with
    the suffix too (``x.png``, ``x.jpg`` -> ``x_png``, ``x_jpg``); a name still taken gets a number (``x-2``).

    Raises:
        ConfigError: the same file is named twice.
    """
    resolved = [Path(path).resolve() for path in paths]
    repeated = sorted({str(path) for path in resolved if resolved.count(path) > 1})
    if repeated:
        raise ConfigError("the same image is given twice: " + ", ".join(repeated))
    if not resolved:
        return []
    common = Path(os.path.commonpath([path.parent for path in resolved]))
    spellings = (
        lambda path: path.stem,
        lambda path: "_".join(path.relative_to(common).with_suffix("").parts),
        lambda path: "_".join(path.relative_to(common).parts).replace(".", "_"),
    )
    names = [spellings[0](path) for path in resolved]
    for spelling in spellings[1:]:
        shared = {name for name in names if names.count(name) > 1}
        names = [spelling(path) if name in shared else name for path, name in zip(resolved, names)]
    taken = set(names)
    stems: list[str] = []
    for name in names:
        stem, number = name, 1
        while stem in stems or (stem != name and stem in taken):
            number += 1
            stem = f"{name}-{number}"
        stems.append(stem)
    return stems


def palette(num_colours: int) -> np.ndarray:
    """Distinct colours ``(num_colours, 3)`` uint8: hues spread by the golden ratio, alternating shades."""
    colours = [
        colorsys.hsv_to_rgb((i * _GOLDEN_RATIO) % 1.0, _SATURATIONS[i % 2], _VALUES[i // 2 % 2])
        for i in range(num_colours)
    ]
    return np.rint(np.array(colours, dtype=np.float64).reshape(-1, 3) * UINT8_MAX).astype(np.uint8)
