"""Detection pictures (boxes, labels, scores and masks drawn on the image) and COCO-results files of images."""
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from ..errors import Argument, ConfigError, OutputExistsError
from ..files import atomic_write
from ..engine import autocast
from ..images import load_image, palette
from .data import CategoryMap
from .evaluate import MASK_THRESHOLD, to_coco_results

__all__ = ["PICTURE_SUFFIX", "RESULTS_FILE", "draw_detections", "output_stems", "predict_images"]

PICTURE_SUFFIX = "_detections.png"
RESULTS_FILE = "detections.json"
MASK_ALPHA = 0.45
BOX_WIDTH = 2
DEFAULT_SCORE_THRESHOLD = 0.5  # detections drawn (the results file keeps all the detector returns)


def draw_detections(image: Image.Image, output: dict[str, torch.Tensor], categories: CategoryMap,
                    score_threshold: float = DEFAULT_SCORE_THRESHOLD, upscale: int = 1) -> Image.Image:
    """``image`` with the detections scoring at least ``score_threshold``: masks (translucent), boxes and
    ``"name score"`` labels, one colour per category; ``upscale`` enlarges small images first (nearest)."""
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


def output_stems(images: Sequence[str]) -> list[str]:
    """A distinct output name for each image path: its file name without suffix, or where two share one, its
    path from the folder that holds them all (``train/a.jpg`` -> ``train_a``).

    Raises:
        ConfigError: the same image is given twice.
    """
    paths = [Path(image).resolve() for image in images]
    stems = [path.stem for path in paths]
    if len(set(stems)) == len(stems):
        return stems
    if len(set(paths)) < len(paths):
        repeated = sorted({str(p) for p in paths if paths.count(p) > 1})
        raise ConfigError("the same image is given twice: " + ", ".join(repeated))
    common = Path(os.path.commonpath([path.parent for path in paths]))
    return ["_".join(path.relative_to(common).with_suffix("").parts) for path in paths]


@torch.no_grad()
def predict_images(model: nn.Module, categories: CategoryMap, images: Sequence[str], output: Path,
                   score_threshold: float = DEFAULT_SCORE_THRESHOLD, upscale: int = 1,
                   amp_dtype: Optional[torch.dtype] = None, overwrite: bool = False) -> list[Path]:
    """Runs the detector on every image; writes ``NAME_detections.png`` per image and ``detections.json``.

    ``detections.json`` is in COCO's results format (``image_id``: the image's position, from 1, in
    ``images``), with each record's ``file_name`` added, and holds every detection the detector returns;
    pictures show those scoring at least ``score_threshold``.

    Raises:
        OutputExistsError: an output file exists and ``overwrite`` is not set (nothing is written).
        FileNotFoundError, ValueError: an image cannot be read (named).
    """
    output = Path(output)
    missing = [str(path) for path in images if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"image not found: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    stems = output_stems(images)
    pictures = [output / f"{stem}{PICTURE_SUFFIX}" for stem in stems]
    results_path = output / RESULTS_FILE
    existing = [str(path) for path in (*pictures, results_path) if os.path.lexists(path)]  # a link counts
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more outputs)" if len(existing) > 1 else ""
        raise OutputExistsError(f"{existing[0]} exists{more}; pass ", Argument("overwrite", True), " to replace, "
                                "or choose another ", Argument("output"))
    output.mkdir(parents=True, exist_ok=True)
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
    return [*pictures, results_path]
