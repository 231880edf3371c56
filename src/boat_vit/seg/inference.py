"""Segmentation inference at any image size: whole image, sliding window, multi-scale and flip."""
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import Argument, ConfigError

__all__ = ["as_pair", "sliding_windows", "slide_logits", "segment"]

WINDOW_BATCH = 4  # windows per forward in sliding-window inference


def as_pair(value: Any) -> tuple:
    """``(height, width)`` from one value or a sequence of one or two (command-line sizes)."""
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if len(values) not in (1, 2):
        raise ValueError(f"expected one value or two (height width), got {list(values)}")
    return (values[0], values[-1])


def sliding_windows(height: int, width: int, crop: Sequence[int], stride: Sequence[int]) -> list[tuple[int, int]]:
    """Top-left corners of windows every ``stride`` pixels covering an image. Windows are ``crop`` clamped
    to the image size; those at the far edges are shifted back inside the image."""
    (crop_h, crop_w), (stride_h, stride_w) = crop, stride
    if stride_h < 1 or stride_w < 1 or stride_h > crop_h or stride_w > crop_w:
        raise ValueError(f"stride {tuple(stride)} must be between 1 and the crop size {tuple(crop)}")
    crop_h, crop_w = min(crop_h, height), min(crop_w, width)
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    tops = [max(min(r * stride_h + crop_h, height) - crop_h, 0) for r in range(rows)]
    lefts = [max(min(c * stride_w + crop_w, width) - crop_w, 0) for c in range(cols)]
    return [(top, left) for top in tops for left in lefts]


def slide_logits(model: nn.Module, images: torch.Tensor, num_classes: int, crop: Sequence[int],
                 stride: Sequence[int]) -> torch.Tensor:
    """Logits ``(B, K, H, W)`` averaged over overlapping ``crop`` windows every ``stride`` pixels."""
    batch, _, height, width = images.shape
    windows = sliding_windows(height, width, crop, stride)
    crop_h, crop_w = min(crop[0], height), min(crop[1], width)
    logits = images.new_zeros(batch, num_classes, height, width, dtype=torch.float32)
    counts = images.new_zeros(1, 1, height, width, dtype=torch.float32)
    for start in range(0, len(windows), WINDOW_BATCH):
        chunk = windows[start:start + WINDOW_BATCH]
        crops = torch.cat([images[..., t:t + crop_h, l:l + crop_w] for t, l in chunk])
        outputs = model(crops).float().split(batch)
        for (top, left), output in zip(chunk, outputs):
            logits[..., top:top + crop_h, left:left + crop_w] += output
            counts[..., top:top + crop_h, left:left + crop_w] += 1
    return logits / counts


@torch.no_grad()
def segment(
    model: nn.Module,
    images: torch.Tensor,
    num_classes: int,
    out_size: Sequence[int],
    mode: str = "whole",
    crop: Sequence[int] = (512, 512),
    stride: Sequence[int] = (341, 341),
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> torch.Tensor:
    """Class probabilities ``(B, K, *out_size)`` for normalised ``images`` (B, 3, H, W) of any size.

    Args:
        model: Maps images to per-pixel logits at their size.
        mode: ``"whole"`` (one forward of the whole image) or ``"slide"`` (``crop`` windows every ``stride``).
        out_size: Size of the returned map (the original image size); logits are resized bilinearly.
        scales: Image scale factors; with several (and/or ``flip``), softmax outputs are averaged.
        flip: Also predict on the horizontally flipped image.
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"inference mode must be 'whole' or 'slide', got {mode!r}")
    if not scales or any(not scale > 0 for scale in scales):
        raise ConfigError(Argument("scales"), f" must be positive, got {list(scales)}")
    height, width = images.shape[-2:]
    probabilities = None
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = images if size == (height, width) else F.interpolate(images, size, mode="bilinear",
                                                                      align_corners=False)
        for flipped in (False, True) if flip else (False,):
            view = scaled.flip(-1) if flipped else scaled
            logits = (slide_logits(model, view, num_classes, crop, stride) if mode == "slide"
                      else model(view).float())
            logits = logits.flip(-1) if flipped else logits
            if tuple(logits.shape[-2:]) != tuple(out_size):
                logits = F.interpolate(logits, tuple(out_size), mode="bilinear", align_corners=False)
            p = logits.softmax(dim=1)
            probabilities = p if probabilities is None else probabilities + p
    return probabilities / (len(scales) * (2 if flip else 1))
