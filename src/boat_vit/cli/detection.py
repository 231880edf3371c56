"""``boat-vit det-train``, ``det-eval`` and ``det-predict``: shells over :mod:`boat_vit.det`."""
import argparse
import dataclasses
import json
import math
import os
from pathlib import Path

from ..det import evaluate_detection, format_scores, load_detector, predict_images
from ..det.data import CocoDetection, resolve_coco_split
from ..det.recipes import PRESETS, DetTrainConfig, resolve_det_config
from ..det.train import data_root, train_detector
from ..engine import amp_dtype_for
from ..errors import Argument, ConfigError
from ..files import check_output, write_text
from .options import (
    add_backbone_arguments,
    add_model_runtime_arguments,
    add_run_arguments,
    distributed_command,
    local_device,
    non_negative_int,
    positive_int,
    train_command,
)

__all__ = ["add_parsers"]

TRAIN_FLAGS = dict(allow_partial="--partial-weights")  # library arguments whose flag has another name
TRAIN_DESCRIPTION = """\
Trains Mask R-CNN (or Faster R-CNN) with an FPN on a BOAT (or any timm) backbone for object detection and
instance segmentation on COCO-format data. The default recipe is the host papers' Mask R-CNN 1x
(--preset coco_maskrcnn_1x: 12 epochs, shorter side 800 and longer at most 1333, AdamW 1e-4, weight decay 0.05,
steps at epochs 8 and 11, 500 warm-up iterations, batch 16); --preset coco_maskrcnn_3x trains 36 epochs at
shorter sides 480-800; --preset digit_det trains the generated digit-det task in minutes on a CPU. Every value
an option can override.

Runs scale from one CPU process to `torchrun --nproc_per_node N -m boat_vit det-train`. Evaluations (COCO box
and mask AP) and checkpoints (last.pth, best.pth by box AP), metrics.csv and curves.png go into --output, each
file atomically. --resume RUN continues a run exactly from its last checkpoint.
"""


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``det-train`` options; every recipe knob defaults to the preset, then to :class:`DetTrainConfig`."""
    defaults = DetTrainConfig()
    add = parser.add_argument
    add("--preset", choices=sorted(PRESETS), help="coco_maskrcnn_1x (the defaults), coco_maskrcnn_3x or digit_det; "
                                                  "options override it")
    add_backbone_arguments(parser, defaults)
    add("--data", help="COCO-format root (annotations/instances_{train,val}2017.json, train2017/, val2017/), or "
                       f"digit-det[:key=value,...] (generated once into $BOAT_VIT_DATA) (default {defaults.data})")
    add("--train-split", help=f"training split (default {defaults.train_split}: instances_train2017.json or "
                              "instances_train.json)")
    add("--val-split", help=f"validation split (default {defaults.val_split})")
    add("--output", help=f"run directory: checkpoints, metrics.csv, summary.json, curves.png (default {defaults.output})")
    add("--kind", choices=["mask_rcnn", "faster_rcnn"], help=f"detector (default {defaults.kind})")
    add("--fpn-channels", type=positive_int, help=f"feature pyramid width (default {defaults.fpn_channels})")
    add("--box-head-channels", type=positive_int, help=f"box head width (default {defaults.box_head_channels})")
    add("--mask-head-channels", type=positive_int, help=f"mask head width (default {defaults.mask_head_channels})")
    add("--roi-samples", type=positive_int, help=f"proposals per image that train the box head "
                                                 f"(default {defaults.roi_samples})")
    add("--detections-per-image", type=positive_int, help=f"most detections per image at test time "
                                                          f"(default {defaults.detections_per_image})")
    add("--drop-path", type=float, help="backbone stochastic depth (default: 0.2 tiny, 0.2 small, 0.3 base, else 0)")
    add("--train-scales", type=positive_int, nargs="+", help="training shorter sides, one drawn per image "
                                                             "(default 800; 3x: 480 512 ... 800)")
    add("--max-size", type=positive_int, help=f"longer side at most, training and test (default {defaults.max_size})")
    add("--test-scale", type=positive_int, help=f"shorter side at test time (default {defaults.test_scale})")
    add("--hflip", type=float, help=f"horizontal flip probability (default {defaults.hflip})")
    add("--keep-empty", action=argparse.BooleanOptionalAction, default=None,
        help="train on images without annotations too (default: skip them, as COCO training does)")
    add("--on-bad", choices=["skip", "error"], help="bad annotations: skip them and report the counts (default), "
                                                    "or stop at the first with its file and id")
    add("--epochs", type=positive_int, help=f"training epochs (default {defaults.epochs})")
    add("--lr-steps", type=non_negative_int, nargs="*", help="epochs after which the learning rate is multiplied by "
                                                             "--lr-decay (default 8 11)")
    add("--lr-decay", type=float, help=f"step factor (default {defaults.lr_decay})")
    add("--batch-size", type=positive_int, help=f"global images per iteration over all processes "
                                                f"(default {defaults.batch_size})")
    add("--lr", type=float, help=f"AdamW learning rate (default {defaults.lr})")
    add("--weight-decay", type=float, help=f"AdamW weight decay; norms, biases and relative position tables are "
                                           f"exempt (default {defaults.weight_decay})")
    add("--warmup-iters", type=non_negative_int, help=f"linear warm-up iterations (default {defaults.warmup_iters})")
    add("--warmup-ratio", type=float, help=f"warm-up start as a fraction of --lr (default {defaults.warmup_ratio})")
    add("--clip-grad", type=float, help="clip the gradient norm to this value (default: no clipping)")
    add("--eval-interval", type=positive_int, help="evaluate every this many iterations (default: every epoch)")
    add("--checkpoint-interval", type=positive_int, help="write last.pth every this many iterations (default: at "
                                                         "every evaluation)")
    add_run_arguments(parser, defaults)


def _run_train(args: argparse.Namespace) -> int:
    summary = train_command(args, "detection", resolve_det_config, train_detector)
    if summary:
        print(f"best box AP {summary['best_box_ap']:.2f} at iteration {summary['best_iteration']} (final "
              f"{summary['final_box_ap']:.2f}); run directory {summary['output']}/")
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    with distributed_command(args) as world:
        reports = {argument: getattr(args, argument) for argument in ("json", "results") if getattr(args, argument)}
        if len(set(map(os.path.abspath, reports.values()))) < len(reports):
            raise ConfigError(Argument("json", args.json), " and ", Argument("results", args.results),
                              " are the same file")
        if world.is_main:
            for argument, path in reports.items():
                check_output(path, args.overwrite, argument)  # before the work
        detector = load_detector(args.checkpoint, world.device)
        split = resolve_coco_split(data_root(args.data, world), args.split)
        dataset = CocoDetection(split, masks=detector.has_masks, categories=detector.categories)
        amp_dtype = amp_dtype_for(world.device, bool(args.amp), args.amp_dtype)
        scores, results = evaluate_detection(detector.model, dataset, world, amp_dtype, args.workers,
                                             progress=world.is_main)
        if world.is_main:
            if dataset.report.bad_total:
                print(dataset.report.summary())
            print(format_scores(scores))
            if args.json:  # undefined scores (no object of a size) as null: NaN is not JSON
                values = dataclasses.asdict(scores)
                for kind in ("box", "mask"):
                    if values[kind] is not None:
                        values[kind] = {k: None if math.isnan(v) else v for k, v in values[kind].items()}
                write_text(args.json, json.dumps(values, indent=2))
            if args.results:
                write_text(args.results, json.dumps(results))
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    device = local_device(args)
    detector = load_detector(args.checkpoint, device)
    amp_dtype = amp_dtype_for(device, bool(args.amp), args.amp_dtype)
    for path in predict_images(detector.model, detector.categories, args.images, Path(args.output),
                               args.score_threshold, args.upscale, amp_dtype, args.overwrite):
        print(path)
    return 0


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a det-train checkpoint (best.pth / last.pth)")
    add_model_runtime_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace output files that exist")


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``det-train``, ``det-eval`` and ``det-predict``."""
    parser = subparsers.add_parser("det-train", help="train Mask R-CNN on a BOAT backbone (detection, instances)",
                                   description=TRAIN_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_train_arguments(parser)
    parser.set_defaults(func=_run_train, flags=TRAIN_FLAGS)

    evaluation = subparsers.add_parser(
        "det-eval", help="COCO box and mask AP of a detection checkpoint",
        description="Reports COCO box (and mask) AP, AP50, AP75 and AP for small, medium and large objects of a "
                    "detection checkpoint on a COCO-format split (torchrun for several processes: every image is "
                    "scored once).")
    _add_common(evaluation)
    evaluation.add_argument("--data", required=True, help="COCO-format root, or digit-det[:key=value,...]")
    evaluation.add_argument("--split", default="val", help="split to evaluate (default val: instances_val2017.json "
                                                           "or instances_val.json)")
    evaluation.add_argument("--workers", type=non_negative_int, default=2, help="data loading processes (default 2)")
    evaluation.add_argument("--json", help="also write the scores to this JSON file")
    evaluation.add_argument("--results", help="also write the detections to this file, in COCO's results format")
    evaluation.set_defaults(func=_run_eval)

    prediction = subparsers.add_parser(
        "det-predict", help="pictures of detections and a COCO results file for images",
        description="Writes NAME_detections.png (boxes, labels, scores and masks on the image) for each image and "
                    "detections.json (every detection, COCO's results format, image ids in the order given).")
    prediction.add_argument("images", nargs="+", help="image files")
    _add_common(prediction)
    prediction.add_argument("--output", default="predictions", help="output folder (default predictions)")
    prediction.add_argument("--score-threshold", type=float, default=0.5, help="draw detections scoring at least "
                                                                              "this (default 0.5)")
    prediction.add_argument("--upscale", type=positive_int, default=1, help="enlarge pictures by this factor "
                                                                          "(small images; default 1)")
    prediction.set_defaults(func=_run_predict)
