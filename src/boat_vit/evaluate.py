"""Evaluation and prediction: ``boat-vit eval`` and ``boat-vit predict`` over importable functions."""
import argparse
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from .data import ShardSampler, build_eval_dataset, collate_skipping
from .distributed import Distributed, setup_distributed
from .factory import create_classifier
from .runs import load_checkpoint

__all__ = ["evaluate", "predict", "load_classifier", "amp_dtype_for", "eval_transform_for"]

TOP_K = 5
_AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def amp_dtype_for(device: torch.device, enabled: bool, name: Optional[str] = None) -> Optional[torch.dtype]:
    """Mixed-precision dtype: ``None`` when off; bfloat16 on CPU and float16 on CUDA unless ``name`` says."""
    if not enabled:
        return None
    if name is not None:
        return _AMP_DTYPES[name]
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def eval_transform_for(data_config: dict):
    """Resize by crop_pct, centre crop, interpolation and mean/std of the model's data config."""
    from timm.data import create_transform

    return create_transform(
        data_config["input_size"], is_training=False, interpolation=data_config["interpolation"],
        mean=data_config["mean"], std=data_config["std"], crop_pct=data_config["crop_pct"],
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    world: Distributed = Distributed(),
    amp_dtype: Optional[torch.dtype] = None,
    progress: bool = False,
    description: str = "eval",
) -> dict:
    """Loss, top-1 and top-5 (%) over ``loader``; sums are reduced over processes (each sample once)."""
    model.eval()
    device = world.device
    totals = torch.zeros(5, dtype=torch.float64)  # loss, top-1, top-5, count, skipped
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    for images, targets, skipped in tqdm(loader, desc=description, disable=not progress, leave=False):
        totals[4] += skipped
        if not len(images):
            continue
        images, targets = images.to(device), targets.to(device)
        with autocast:
            logits = model(images)
        logits = logits.float()
        ranked = logits.topk(min(TOP_K, logits.shape[1]), dim=1).indices
        hits = ranked == targets[:, None]
        totals[0] += float(F.cross_entropy(logits, targets, reduction="sum"))
        totals[1] += float(hits[:, :1].sum())
        totals[2] += float(hits.sum())
        totals[3] += len(targets)
    totals = world.all_reduce_sum(totals)
    count = max(float(totals[3]), 1.0)
    return dict(loss=float(totals[0]) / count, top1=100 * float(totals[1]) / count,
                top5=100 * float(totals[2]) / count, count=int(totals[3]), skipped=int(totals[4]))


def load_classifier(
    checkpoint: Optional[str] = None,
    model_name: Optional[str] = None,
    pretrained_file: Optional[str] = None,
    use_ema: bool = False,
) -> tuple[nn.Module, list[str], dict]:
    """A classifier in eval mode with its class names and data config.

    Either a boat-vit training ``checkpoint`` (model name, classes and weights inside; ``use_ema`` picks the
    EMA weights), or ``model_name`` with ``pretrained_file`` (e.g. released BOAT weights; ImageNet indices
    as class names).
    """
    from timm.data import resolve_data_config

    if checkpoint is not None:
        state = load_checkpoint(Path(checkpoint))
        class_names = state["class_names"]
        model = create_classifier(state["model_name"], num_classes=len(class_names), **state["model_kwargs"])
        weights = state["model"]
        if use_ema:
            if state.get("ema") is None:
                raise ValueError(f"{checkpoint} has no EMA weights (the run did not use --ema-decay)")
            weights = {k.removeprefix("module."): v for k, v in state["ema"].items()}
        model.load_state_dict(weights)
        data_config = state["data_config"]
    elif model_name is not None:
        model = create_classifier(model_name, num_classes=1000, pretrained_file=pretrained_file)
        class_names = [str(i) for i in range(model.num_classes)]
        data_config = resolve_data_config(model=model)
    else:
        raise ValueError("give a training checkpoint, or a model name (and usually its weights file)")
    return model.eval(), class_names, data_config


@torch.no_grad()
def predict(model: nn.Module, class_names: Sequence[str], data_config: dict, images: Sequence[str],
            top_k: int = TOP_K) -> list[list[tuple[str, float]]]:
    """Top-``k`` (class name, probability) for each image file."""
    transform = eval_transform_for(data_config)
    results = []
    for path in images:
        if not Path(path).is_file():
            raise FileNotFoundError(f"image not found: {path}")
        try:
            image = Image.open(path).convert("RGB")
        except OSError as error:
            raise ValueError(f"cannot read image {path}: {error}") from None
        probs = model(transform(image)[None]).softmax(dim=-1)[0]
        values, indices = probs.topk(min(top_k, len(class_names)))
        results.append([(class_names[i], float(p)) for p, i in zip(values, indices)])
    return results


def _run_eval(args: argparse.Namespace) -> int:
    world = setup_distributed(args.device)
    try:
        model, class_names, data_config = load_classifier(args.checkpoint, args.model, args.pretrained_file, args.ema)
        dataset = build_eval_dataset(args.data, eval_transform_for(data_config))
        if hasattr(dataset, "classes") and list(dataset.classes) != list(class_names) and args.checkpoint:
            raise ValueError(f"the classes of {args.data} differ from the checkpoint's ({len(class_names)} classes)")
        loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate_skipping,
                            sampler=ShardSampler(len(dataset), world.rank, world.world_size))
        metrics = evaluate(model.to(world.device), loader, world, progress=world.is_main)
        if world.is_main:
            print(f"top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  loss {metrics['loss']:.4f}  "
                  f"({metrics['count']} images, {metrics['skipped']} unreadable skipped)")
    finally:
        world.shutdown()
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    model, class_names, data_config = load_classifier(args.checkpoint, args.model, args.pretrained_file, args.ema)
    for path, top in zip(args.images, predict(model, class_names, data_config, args.images, args.top_k)):
        print(path)
        for name, probability in top:
            print(f"  {probability:7.2%}  {name}")
    return 0


def _add_model_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="a boat-vit training checkpoint (best.pth / last.pth)")
    parser.add_argument("--model", help="instead of --checkpoint: a timm model name")
    parser.add_argument("--pretrained-file", help="with --model: weights file (e.g. released BOAT weights)")
    parser.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")


def add_parser(subparsers) -> None:
    evaluation = subparsers.add_parser("eval", help="top-1/top-5 of a checkpoint on a dataset",
                                       description="Reports top-1, top-5 and loss of a model on a dataset.")
    _add_model_source(evaluation)
    evaluation.add_argument("--data", default="digits", help="'digits' (embedded test split), a folder with val/, "
                                                             "or a folder of class sub-folders (default digits)")
    evaluation.add_argument("--batch-size", type=int, default=64, help="images per forward (default 64)")
    evaluation.add_argument("--workers", type=int, default=2, help="data loading processes (default 2)")
    evaluation.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                            help="cpu, cuda or cuda:N")
    evaluation.set_defaults(func=_run_eval)

    prediction = subparsers.add_parser("predict", help="top-5 classes of images",
                                       description="Prints the top classes with probabilities for each image.")
    prediction.add_argument("images", nargs="+", help="image files")
    _add_model_source(prediction)
    prediction.add_argument("--top-k", type=int, default=TOP_K, help=f"classes to show (default {TOP_K})")
    prediction.set_defaults(func=_run_predict)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .cli import main as cli_main

    return cli_main(["eval", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
