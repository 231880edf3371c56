"""``boat-vit seg-train``, ``seg-eval`` and ``seg-predict``: shells over :mod:`boat_vit.seg`."""
import argparse
import sys

from ..engine import amp_dtype_for
from ..seg import (
    PRESETS,
    SegTrainConfig,
    evaluate_segmentation,
    load_segmenter,
    predict_images,
    resolve_seg_config,
    train_segmentation,
)
from ..files import check_output, write_json
from ..seg.evaluate import InferenceOptions, eval_loader, format_scores, output_paths
from ..seg.inference import as_pair
from .options import (
    add_backbone_arguments,
    add_model_runtime_arguments,
    add_run_arguments,
    distributed_command,
    local_device,
    non_negative_int,
    positive_float,
    positive_int,
    train_command,
)

__all__ = ["add_parsers"]

# Python arguments of the library whose flag has another name (see options.flag_spelling)
INFERENCE_FLAGS = dict(crop="--crop-size")
TRAIN_FLAGS = dict(allow_partial="--partial-weights", mode="--eval-mode", stride="--eval-stride", crop="--crop-size",
                   pretrained_cfg_overlay="--backbone-weights")


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``seg-train`` options; every recipe knob defaults to the preset, then to :class:`SegTrainConfig`."""
    defaults = SegTrainConfig()
    add = parser.add_argument
    add_backbone_arguments(
        parser, defaults, kwargs_example='{"embed_dim": 48, "fsla_stages": false}',
        pretrained_help="initial backbone weights: the backbone's pretrained weights (the released ImageNet ones for "
                        "BOAT models), downloaded once into timm's cache ($TORCH_HOME/hub/checkpoints) as "
                        "timm.create_model(BACKBONE, pretrained=True) downloads them")
    add("--data", help=f"data root: ADEChallengeData2016 layout, images/ and annotations/ with training/ and "
                       f"validation/ (default {defaults.data})")
    add("--dataset", choices=["ade20k", "folder"], help="label convention: 'ade20k' (150 classes, 0 ignored, "
                                                        "labels shift by -1; the default) or 'folder'")
    add("--num-classes", type=int, help="number of classes (required for --dataset folder)")
    add("--ignore-index", type=int, help="label value excluded from loss and metrics (default 255)")
    add("--reduce-zero-label", action=argparse.BooleanOptionalAction, default=None,
        help="label 0 means 'other': ignore it and shift the others by -1 (default: on for ade20k)")
    add("--output", help=f"run directory: checkpoints, metrics.csv, summary.json, curves.png "
                         f"(default {defaults.output})")
    add("--preset", choices=sorted(PRESETS), help="'ade20k_upernet': the released ADE20K recipe (the defaults); "
                                                  "options override it")
    add("--decoder-channels", type=int, help=f"UperNet width (default {defaults.decoder_channels})")
    add("--aux-weight", type=float, help="auxiliary FCN head loss weight, 0 for no head "
                                         f"(default {defaults.aux_weight})")
    add("--drop-path", type=float, help=f"backbone stochastic depth (default {defaults.drop_path})")
    add("--crop-size", type=int, nargs="+", help="training crop, one or two (H W) ints; also the sliding window "
                                                 "(default 512)")
    add("--scale", type=int, nargs=2, help="base scale (long short) that the random ratio multiplies "
                                          "(default 2048 512)")
    add("--ratio-range", type=float, nargs=2, help="random rescale ratio range (default 0.5 2.0)")
    add("--cat-max-ratio", type=float, help="re-draw a crop (up to 10 times) while one class covers this share; "
                                            f"1 disables (default {defaults.cat_max_ratio})")
    add("--hflip", type=float, help=f"horizontal flip probability (default {defaults.hflip})")
    add("--photometric", action=argparse.BooleanOptionalAction, default=None,
        help="photometric distortion: brightness, contrast, saturation, hue (default on)")
    add("--test-scale", type=int, nargs=2, help="evaluation resize (long short), aspect kept (default 2048 512)")
    add("--no-test-resize", dest="test_scale", action="store_const", const=(), help="evaluate at the original size")
    add("--iterations", type=int, help=f"training iterations (default {defaults.iterations})")
    add("--batch-size", type=int, help="global images per iteration over all processes "
                                       f"(default {defaults.batch_size})")
    add("--lr", type=float, help=f"peak AdamW learning rate (default {defaults.lr})")
    add("--min-lr", type=float, help=f"learning rate at the end of the poly schedule (default {defaults.min_lr})")
    add("--weight-decay", type=float, help=f"AdamW weight decay; norms, biases and relative position tables "
                                           f"are exempt (default {defaults.weight_decay})")
    add("--poly-power", type=float, help=f"poly schedule power (default {defaults.poly_power})")
    add("--warmup-iters", type=int, help=f"linear warm-up iterations (default {defaults.warmup_iters})")
    add("--warmup-ratio", type=float, help=f"warm-up start as a fraction of --lr (default {defaults.warmup_ratio})")
    add("--clip-grad", type=float, help="clip the gradient norm to this value (default: no clipping)")
    add("--eval-interval", type=int, help=f"evaluate every this many iterations (default {defaults.eval_interval})")
    add("--checkpoint-interval", type=int, help="write last.pth every this many iterations "
                                                f"(default {defaults.checkpoint_interval})")
    add("--eval-mode", choices=["whole", "slide"], help="evaluation inference: whole image or sliding window of "
                                                        "--crop-size (default whole)")
    add("--eval-stride", type=int, nargs="+", help="sliding window stride, one or two ints (default 341)")
    add_run_arguments(parser, defaults)


TRAIN_DESCRIPTION = """\
Trains UperNet on a BOAT (or any timm) backbone for semantic segmentation, counted in iterations. The
default recipe is the released ADE20K one (--preset ade20k_upernet: 512x512 crops, AdamW 6e-5, weight decay
0.01, poly schedule with 1500 linear warm-up iterations, 160k iterations, batch 16); every value an option
can override.

Runs scale from one CPU process to `torchrun --nproc_per_node N -m boat_vit seg-train`. Evaluations and
checkpoints (last.pth, best.pth by mIoU), metrics.csv and curves.png go into --output, each file atomically.
--resume RUN continues a run exactly from its last checkpoint: every iteration starts from RNG states
derived from the seed and the iteration, and the data order and augmentation depend only on the seed.
"""


def _run_train(args: argparse.Namespace) -> int:
    summary = train_command(args, "segmentation", resolve_seg_config, train_segmentation)
    if summary:
        print(f"best mIoU {summary['best_miou']:.2f} at iteration {summary['best_iteration']} (final "
              f"{summary['final_miou']:.2f}); run directory {summary['output']}/")
    return 0


def _add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of :class:`InferenceOptions` (shared with ``seg-train``'s evaluation)."""
    add = parser.add_argument
    add("--mode", choices=["whole", "slide"], default="whole", help="whole-image or sliding-window inference")
    add("--crop-size", type=positive_int, nargs="+", default=[512], help="sliding window size: one or two (H W) ints")
    add("--stride", type=positive_int, nargs="+", default=[341], help="sliding window stride: one or two (H W) ints")
    add("--scales", type=positive_float, nargs="+", default=[1.0], help="test scale factors, e.g. 0.5 0.75 1 1.25 1.5 "
                                                                 "1.75 (multi-scale; softmax outputs averaged)")
    add("--flip", action="store_true", help="also predict the horizontally flipped image")


def _inference_options(args: argparse.Namespace) -> InferenceOptions:
    return InferenceOptions(args.mode, as_pair(args.crop_size), as_pair(args.stride), tuple(args.scales), args.flip)


def _run_eval(args: argparse.Namespace) -> int:
    with distributed_command(args) as world:
        if args.json and world.is_main:
            check_output(args.json, args.overwrite, argument="json")  # before the work
        segmenter = load_segmenter(args.checkpoint, world.device)
        loader = eval_loader(args.data, args.split, segmenter.spec, segmenter.transform, world, args.workers)
        amp_dtype = amp_dtype_for(world.device, bool(args.amp), args.amp_dtype)
        scores = evaluate_segmentation(segmenter.model, loader, segmenter.spec, _inference_options(args), world,
                                       amp_dtype, progress=world.is_main)
        if world.is_main:
            print(format_scores(scores, segmenter.spec.class_names))
            if scores.non_finite_pixels:
                print(f"{args.prog}: warning: {scores.non_finite_pixels} pixels got non-finite class scores from "
                      f"{args.checkpoint} (NaN or infinite weights?); the scores above mean nothing", file=sys.stderr)
            if args.json:
                write_json(args.json, dict(vars(scores), class_names=segmenter.spec.class_names))
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    device = local_device(args)
    output_paths(args.images, args.output)  # two inputs given as one image fail before the model loads
    segmenter = load_segmenter(args.checkpoint, device)
    amp_dtype = amp_dtype_for(device, bool(args.amp), args.amp_dtype)
    for label_path, overlay_path in predict_images(segmenter, args.images, args.output, _inference_options(args),
                                                   amp_dtype, overwrite=args.overwrite):
        print(f"{label_path}  {overlay_path}")
    return 0


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a seg-train checkpoint (best.pth / last.pth)")
    add_model_runtime_arguments(parser)
    _add_inference_arguments(parser)


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``seg-train``, ``seg-eval`` and ``seg-predict``."""
    parser = subparsers.add_parser("seg-train", help="train UperNet on a BOAT backbone (semantic segmentation)",
                                   description=TRAIN_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_train_arguments(parser)
    parser.set_defaults(func=_run_train, flags=TRAIN_FLAGS)

    evaluation = subparsers.add_parser(
        "seg-eval", help="mIoU of a segmentation checkpoint on a data set",
        description="Reports mIoU, per-class IoU, mean accuracy and pixel accuracy of a segmentation checkpoint "
                    "(torchrun for several processes).")
    _add_common(evaluation)
    evaluation.add_argument("--data", required=True, help="data root (ADEChallengeData2016 layout: images/ and "
                                                          "annotations/ with training/ and validation/)")
    evaluation.add_argument("--split", default="validation", help="split to evaluate (default validation)")
    evaluation.add_argument("--workers", type=non_negative_int, default=2, help="data loading processes (default 2)")
    evaluation.add_argument("--json", help="also write the scores to this JSON file (checked before the evaluation; an "
                                           "existing one is kept unless --overwrite)")
    evaluation.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    evaluation.set_defaults(func=_run_eval, flags=INFERENCE_FLAGS)

    prediction = subparsers.add_parser(
        "seg-predict", help="label maps and overlays for images",
        description="Writes NAME_labels.png (palette label map) and NAME_overlay.png for each image; two images "
                    "never share a NAME. Existing files are kept unless --overwrite.")
    prediction.add_argument("images", nargs="+", help="image files")
    _add_common(prediction)
    prediction.add_argument("--output", default="predictions", help="output folder (default predictions)")
    prediction.add_argument("--overwrite", action="store_true", help="replace existing outputs in --output")
    prediction.set_defaults(func=_run_predict, flags=INFERENCE_FLAGS)
