"""Detection pictures (boxes, labels, scores and masks drawn on the image) and COCO-results files of images."""
import json
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from ..engine import autocast
from ..errors import Argument, ConfigError, OutputError, OutputExistsError
from ..files import atomic_write, check_output
from ..images import distinct_stems, image_problem, load_image, palette
from .data import CategoryMap
from .evaluate import MASK_THRESHOLD, to_coco_results

__all__ = ["PICTURE_SUFFIX", "RESULTS_FILE", "draw_detections", "output_paths", "predict_images"]

PICTURE_SUFFIX = "_detections.png"
RESULTS_FILE = "detections.json"
MASK_ALPHA = 0.45
BOX_WIDTH = 2
DEFAULT_SCORE_THRESHOLD = 0.5  # detections drawn (the results file keeps all the detector returns)


def draw_detections(image: Image.Image, output: dict[str, torch.Tensor], categories: CategoryMap,
                    score_threshold: float = DEFAULT_SCORE_THRESHOLD, upscale: int = 1) -> Image.Image:
    """``image`` with the detections scoring at least ``score_threshold``: masks (translucent), boxes and
    ``"name score"`` labels, one colour per category; ``upscale`` enlarges small images first (nearest).

    Raises:
        ConfigError: ``score_threshold`` outside [0, 1] or ``upscale`` below 1.
    """
    _check_drawing(score_threshold, upscale)
    keep = output["scores"] >= score_threshold
    colours = [tuple(int(c) for c in colour) for colour in palette(len(categories))]
    labels = output["labels"][keep].cpu()
    chosen = [colours[int(label) - 1] for label in labels]
    if upscale > 1:
        image = image.resize((image.width * upscale, image.height * upscale), Image.NEAREST)
    pixels = TF.pil_to_tensor(image)
    if "masks" in output and keep.any():
        masks = output["masks"][keep, 0].cpu() > MASK_THRESHOLD
        if upscale > 1:
            masks = masks.repeat_interleave(upscale, 1).repeat_interleave(upscale, 2)
        pixels = draw_segmentation_masks(pixels, masks, alpha=MASK_ALPHA, colors=chosen)
    if keep.any():
        texts = [f"{categories.names[int(label) - 1]} {score:.2f}" for label, score in
                 zip(labels, output["scores"][keep].tolist())]
        pixels = draw_bounding_boxes(pixels, output["boxes"][keep].cpu().float() * upscale, labels=texts,
                                     colors=chosen, width=BOX_WIDTH, label_colors="black",
                                     label_background_colors=chosen, fill_labels=True)
    return TF.to_pil_image(pixels)


def _check_drawing(score_threshold: float, upscale: int) -> None:
    if not 0.0 <= score_threshold <= 1.0:
        raise ConfigError(Argument("score_threshold"), f" must be between 0 and 1, got {score_threshold}")
    if isinstance(upscale, bool) or not isinstance(upscale, int) or upscale < 1:
        raise ConfigError(Argument("upscale"), f" must be a whole number of at least 1, got {upscale!r}")


def output_paths(images: Sequence[str], output: Path) -> list[Path]:
    """The picture of each image (``NAME_detections.png``, names made distinct by
    :func:`~boat_vit.images.distinct_stems`) and the results file, in the folder ``output``."""
    return [*(Path(output) / f"{stem}{PICTURE_SUFFIX}" for stem in distinct_stems(images)),
            Path(output) / RESULTS_FILE]


@torch.no_grad()
def predict_images(model: nn.Module, categories: CategoryMap, images: Sequence[str], output: Path,
                   score_threshold: float = DEFAULT_SCORE_THRESHOLD, upscale: int = 1,
                   amp_dtype: Optional[torch.dtype] = None, overwrite: bool = False) -> list[Path]:
    """Runs the detector on every image; writes ``NAME_detections.png`` per image and ``detections.json``.

    ``detections.json`` is in COCO's results format (``image_id``: the image's position, from 1, in
    ``images``), with each record's ``file_name`` added, and holds every detection the detector returns;
    pictures show those scoring at least ``score_threshold``. Before any prediction, every image's header is
    read and every output is checked: nothing is written when one cannot be.

    Raises:
        ValueError: an image is missing or cannot be read (named).
        ConfigError: the same image is given twice, or ``score_threshold`` / ``upscale`` out of range.
        OutputError: ``output`` is a file, or an output cannot be written there.
        OutputExistsError: an output file exists and ``overwrite`` is not set.
    """
    problems = [problem for problem in map(image_problem, images) if problem is not None]
    if problems:
        raise ValueError(problems[0] + (f" (and {len(problems) - 1} more images)" if len(problems) > 1 else ""))
    _check_drawing(score_threshold, upscale)
    output = Path(output)
    *pictures, results_path = outputs = output_paths(images, output)
    if output.exists() and not output.is_dir():
        raise OutputError(Argument("output", str(output)), " is a file, not a folder")
    existing = [str(path) for path in outputs if path.is_symlink() or path.exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more outputs)" if len(existing) > 1 else ""
        raise OutputExistsError(f"{existing[0]} exists{more}; pass ", Argument("overwrite", True), " to replace, "
                                "or choose another ", Argument("output"))
    output.mkdir(parents=True, exist_ok=True)
    for path in outputs:  # the folder takes new files, and no folder stands where a file goes
        check_output(path, overwrite=True)
    model.eval()
    device = next(model.parameters()).device
    results = []
    for image_id, (path, picture) in enumerate(zip(images, pictures), start=1):
        image = load_image(path)
        with autocast(device, amp_dtype):
            detections = model([TF.to_tensor(image).to(device)])[0]
        records, _ = to_coco_results(detections, image_id, categories)
        results += [dict(record, file_name=str(path)) for record in records]
        drawn = draw_detections(image, detections, categories, score_threshold, upscale)
        atomic_write(picture, lambda file: drawn.save(file, format="PNG"))
    atomic_write(results_path, lambda file: file.write(json.dumps(results)), mode="w")
    return outputs
