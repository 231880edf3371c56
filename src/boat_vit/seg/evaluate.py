"""Segmentation evaluation and prediction: ``boat-vit seg-eval`` and ``boat-vit seg-predict``."""
import argparse
import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data import ShardSampler
from ..distributed import Distributed, setup_distributed
from ..evaluate import amp_dtype_for
from ..runs import load_checkpoint
from .data import DatasetSpec, EvalTransform, SegmentationFolder, checked_batches, collate_segmentation, palette
from .inference import as_pair, segment
from .metrics import ConfusionMatrix, SegmentationScores
from .model import BoatUPerNet

__all__ = ["InferenceOptions", "Segmenter", "evaluate_segmentation", "load_segmenter", "predict_images"]

OVERLAY_ALPHA = 0.5
PALETTE_SIZE = 256  # entries of a PNG palette


@dataclass(frozen=True)
class InferenceOptions:
    """How to run a segmenter on a whole image: mode, windows, scales and flip (see :func:`segment`)."""

    mode: str = "whole"
    crop: tuple[int, int] = (512, 512)
    stride: tuple[int, int] = (341, 341)
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False

    def __call__(self, model: nn.Module, images: torch.Tensor, num_classes: int, out_size: Sequence[int]):
        return segment(model, images, num_classes, out_size, self.mode, self.crop, self.stride, self.scales, self.flip)


class Segmenter:
    """A trained segmentation model with what it needs at test time: data spec, normalisation, test scale."""

    def __init__(self, model: BoatUPerNet, spec: DatasetSpec, transform: EvalTransform):
        self.model, self.spec, self.transform = model, spec, transform

    def colour_table(self) -> np.ndarray:
        """RGB colour of every label value as written to files (the data set's own label convention)."""
        table = np.zeros((PALETTE_SIZE, 3), dtype=np.uint8)
        shift = int(self.spec.reduce_zero_label)
        table[shift:shift + self.spec.num_classes] = palette(self.spec.num_classes)[:PALETTE_SIZE - shift]
        return table


def load_segmenter(checkpoint: str, device: torch.device = torch.device("cpu")) -> Segmenter:
    """The segmenter of a ``seg-train`` checkpoint (``best.pth`` / ``last.pth``), in eval mode."""
    state = load_checkpoint(Path(checkpoint))
    if "segmenter" not in state:
        raise ValueError(f"{checkpoint} is not a segmentation checkpoint (written by `boat-vit seg-train`)")
    model = BoatUPerNet(**state["segmenter"])
    model.load_state_dict(state["model"])
    spec = DatasetSpec(**state["spec"])
    data = state["data"]
    return Segmenter(model.to(device).eval(), spec, EvalTransform(data["mean"], data["std"], data["test_scale"]))


@torch.no_grad()
def evaluate_segmentation(
    model: nn.Module,
    loader: DataLoader,
    spec: DatasetSpec,
    inference: InferenceOptions = InferenceOptions(),
    world: Distributed = Distributed(),
    amp_dtype: Optional[torch.dtype] = None,
    progress: bool = False,
    description: str = "eval",
) -> SegmentationScores:
    """mIoU, per-class IoU and accuracies over ``loader`` (items: test-scale image, original label).

    Predictions are resized to each label's size; the confusion matrix is summed over processes.
    """
    model.eval()
    confusion = ConfusionMatrix(spec.num_classes, spec.ignore_index)
    autocast = torch.autocast(world.device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    for images, labels, _ in tqdm(checked_batches(loader), total=len(loader), desc=description,
                                  disable=not progress, leave=False):
        with autocast:
            probabilities = inference(model, images.to(world.device), spec.num_classes, labels.shape[-2:])
        confusion.update(probabilities.argmax(1).cpu(), labels)
    confusion.all_reduce(world)
    return confusion.scores()


def eval_loader(data: str, split: str, segmenter_spec: DatasetSpec, transform: EvalTransform, world: Distributed,
                workers: int) -> DataLoader:
    """One image per batch (sizes differ); each process takes its shard, every image is used once."""
    dataset = SegmentationFolder(Path(data), split, segmenter_spec, transform)
    return DataLoader(dataset, batch_size=1, sampler=ShardSampler(len(dataset), world.rank, world.world_size),
                      num_workers=workers, collate_fn=collate_segmentation)


def format_scores(scores: SegmentationScores, class_names: Sequence[str], per_class: bool = True) -> str:
    lines = [f"mIoU {scores.miou:.2f}  mAcc {scores.macc:.2f}  aAcc {scores.aacc:.2f}  ({scores.pixels} pixels)"]
    if per_class:
        width = max(len(name) for name in class_names)
        lines.append(f"{'class':<{width}}    IoU    Acc")
        lines += [f"{name:<{width}}  {iou:5.2f}  {acc:5.2f}"
                  for name, iou, acc in zip(class_names, scores.iou, scores.acc)]
    return "\n".join(lines)


@torch.no_grad()
def predict_images(segmenter: Segmenter, images: Sequence[str], output: Path,
                   inference: InferenceOptions = InferenceOptions()) -> list[tuple[Path, Path]]:
    """Writes ``NAME_labels.png`` (label map with a colour palette, in the data set's label convention) and
    ``NAME_overlay.png`` (image blended with the colours) for each image; returns their paths."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    colours = segmenter.colour_table()
    shift = int(segmenter.spec.reduce_zero_label)
    device = next(segmenter.model.parameters()).device
    written = []
    for path in map(Path, images):
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        try:
            image = Image.open(path).convert("RGB")
        except OSError as error:
            raise ValueError(f"cannot read image {path}: {error}") from None
        pixels = segmenter.transform.image(image)[None].to(device)
        probabilities = inference(segmenter.model, pixels, segmenter.spec.num_classes, (image.height, image.width))
        labels = probabilities.argmax(1)[0].cpu().numpy().astype(np.int64) + shift
        label_path, overlay_path = output / f"{path.stem}_labels.png", output / f"{path.stem}_overlay.png"
        if segmenter.spec.num_classes + shift <= PALETTE_SIZE:
            label_image = Image.fromarray(labels.astype(np.uint8), mode="P")
            label_image.putpalette(colours.flatten().tolist())
        else:  # more classes than a palette holds: colours only
            label_image = Image.fromarray(palette(segmenter.spec.num_classes)[labels - shift])
        label_image.save(label_path)
        Image.blend(image, label_image.convert("RGB"), OVERLAY_ALPHA).save(overlay_path)
        written.append((label_path, overlay_path))
    return written


def _inference_options(args: argparse.Namespace) -> InferenceOptions:
    return InferenceOptions(args.mode, as_pair(args.crop_size), as_pair(args.stride), tuple(args.scales), args.flip)


def _run_eval(args: argparse.Namespace) -> int:
    world = setup_distributed(args.device)
    try:
        segmenter = load_segmenter(args.checkpoint, world.device)
        loader = eval_loader(args.data, args.split, segmenter.spec, segmenter.transform, world, args.workers)
        amp_dtype = amp_dtype_for(world.device, args.amp)
        scores = evaluate_segmentation(segmenter.model, loader, segmenter.spec, _inference_options(args), world,
                                       amp_dtype, progress=world.is_main)
        if world.is_main:
            print(format_scores(scores, segmenter.spec.class_names))
            if args.json:
                Path(args.json).write_text(json.dumps(dict(vars(scores), class_names=segmenter.spec.class_names),
                                                      indent=2))
    finally:
        world.shutdown()
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    segmenter = load_segmenter(args.checkpoint, torch.device(args.device))
    for label_path, overlay_path in predict_images(segmenter, args.images, Path(args.output), _inference_options(args)):
        print(f"{label_path}  {overlay_path}")
    return 0


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of :class:`InferenceOptions` (shared with ``seg-train``'s evaluation)."""
    add = parser.add_argument
    add("--mode", choices=["whole", "slide"], default="whole", help="whole-image or sliding-window inference")
    add("--crop-size", type=int, nargs="+", default=[512], help="sliding window size: one or two (H W) ints")
    add("--stride", type=int, nargs="+", default=[341], help="sliding window stride: one or two (H W) ints")
    add("--scales", type=float, nargs="+", default=[1.0], help="test scale factors, e.g. 0.5 0.75 1 1.25 1.5 "
                                                                 "1.75 (multi-scale; softmax outputs averaged)")
    add("--flip", action="store_true", help="also predict the horizontally flipped image")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a seg-train checkpoint (best.pth / last.pth)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")
    add_inference_arguments(parser)


def add_parser(subparsers) -> None:
    evaluation = subparsers.add_parser(
        "seg-eval", help="mIoU of a segmentation checkpoint on a data set",
        description="Reports mIoU, per-class IoU, mean accuracy and pixel accuracy of a segmentation checkpoint "
                    "(torchrun for several processes).")
    _add_common(evaluation)
    evaluation.add_argument("--data", required=True, help="data root (ADEChallengeData2016 layout: images/ and "
                                                          "annotations/ with training/ and validation/)")
    evaluation.add_argument("--split", default="validation", help="split to evaluate (default validation)")
    evaluation.add_argument("--workers", type=int, default=2, help="data loading processes (default 2)")
    evaluation.add_argument("--amp", action="store_true", help="mixed precision (bfloat16 CPU, float16 CUDA)")
    evaluation.add_argument("--json", help="also write the scores to this JSON file")
    evaluation.set_defaults(func=_run_eval)

    prediction = subparsers.add_parser(
        "seg-predict", help="label maps and overlays for images",
        description="Writes NAME_labels.png (palette label map) and NAME_overlay.png for each image.")
    prediction.add_argument("images", nargs="+", help="image files")
    _add_common(prediction)
    prediction.add_argument("--output", default="predictions", help="output folder (default predictions)")
    prediction.set_defaults(func=_run_predict)
