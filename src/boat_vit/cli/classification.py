"""``boat-vit train``, ``eval`` and ``predict``: shells over :mod:`boat_vit.classification`."""
import argparse
import math
import sys

from ..classification import (
    PRESETS,
    TrainConfig,
    evaluate_classifier,
    load_classifier,
    predict,
    resolve_config,
    train_classifier,
)
from ..classification.evaluate import TOP_K, eval_loader
from ..engine import amp_dtype_for
from .options import (
    USAGE_ERROR,
    DeprecatedSpelling,
    add_model_runtime_arguments,
    add_run_arguments,
    distributed_command,
    json_object,
    local_device,
    non_negative_int,
    positive_int,
    train_command,
)

__all__ = ["add_parsers"]

# Python arguments of the library whose flag has another name (see options.flag_spelling)
TRAIN_FLAGS = dict(allow_partial="--partial-weights", pretrained_cfg_overlay="--pretrained-file")
MODEL_SOURCE_FLAGS = dict(model_name="--model", weights="--pretrained-file", use_ema="--ema",
                          allow_partial="--partial-weights", pretrained_cfg_overlay="--pretrained-file")
PRETRAINED_HELP = ("the model's pretrained weights (the released ones for BOAT models), downloaded once into timm's "
                   "cache ($TORCH_HOME/hub/checkpoints) as timm.create_model(MODEL, pretrained=True) downloads them")


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train`` options; every recipe knob defaults to the preset, then to :class:`TrainConfig`."""
    defaults = TrainConfig()
    add = parser.add_argument
    add("--model", help=f"timm model name (default: the preset's, else {defaults.model})")
    add("--data", help="ImageNet-style folder with train/ and val/ class sub-folders, or 'digits' "
                       "(embedded handwritten digits, no download; the default)")
    add("--output", help=f"run directory for checkpoints, metrics.csv, summary.json, curves.png "
                         f"(default {defaults.output})")
    add("--preset", choices=sorted(PRESETS), help="a recipe: 'digits' (the embedded demo), 'boat_swin' or "
                                                  "'boat_cswin' (the released ImageNet recipes); options override it")
    add("--model-kwargs", type=json_object, help='JSON keyword arguments for the model, e.g. \'{"embed_dim": 48}\'')
    add("--img-size", type=int, help="square training/eval resolution (default: the model's pretrained cfg)")
    add("--epochs", type=int, help=f"training epochs (default {defaults.epochs})")
    add("--batch-size", type=int, help="global images per optimizer step, over all processes and accumulation "
                                       f"steps (default {defaults.batch_size})")
    add("--accum-steps", type=int, help="gradient accumulation steps per optimizer step (default 1)")
    add("--lr", type=float, help="peak learning rate (default: base lr x batch size / lr base batch)")
    add("--base-lr", type=float, help=f"learning rate per --lr-base-batch images (default {defaults.base_lr})")
    add("--lr-base-batch", type=int, help=f"batch size the base lr refers to (default {defaults.lr_base_batch})")
    add("--min-lr", type=float, help=f"final cosine learning rate (default {defaults.min_lr})")
    add("--warmup-lr", type=float, help=f"learning rate at the start of the linear warm-up (default {defaults.warmup_lr})")
    add("--warmup-epochs", type=int, help="linear warm-up epochs, stepped per update (default 0)")
    add("--cooldown-epochs", type=int, help="epochs at min lr after the cosine (default 0)")
    add("--weight-decay", type=float, help=f"AdamW weight decay; norms, biases and the model's no_weight_decay "
                                           f"set are exempt (default {defaults.weight_decay})")
    add("--clip-grad", type=float, help="clip the gradient norm to this value (default: no clipping)")
    add("--label-smoothing", type=float, help=f"label smoothing (default {defaults.label_smoothing})")
    add("--mixup", type=float, help="mixup alpha, 0 disables (default 0)")
    add("--cutmix", type=float, help="cutmix alpha, 0 disables (default 0)")
    add("--auto-augment", help="timm auto-augment policy, e.g. rand-m9-mstd0.5-inc1 (default: none)")
    add("--color-jitter", type=float, help=f"colour jitter strength (default {defaults.color_jitter})")
    add("--hflip", type=float, help=f"horizontal flip probability (default {defaults.hflip})")
    add("--reprob", type=float, help="random erasing probability (default 0)")
    add("--drop-path", type=float, help="stochastic depth rate (default: the released rate for the model size)")
    add("--ema-decay", type=float, help="keep an EMA of the weights with this decay, evaluated and saved")
    add("--grad-checkpointing", action="store_true", default=None, help="trade compute for activation memory")
    add_run_arguments(parser, defaults)
    add("--pretrained-file", help="initial weights: released BOAT weights as downloaded, a boat-vit checkpoint, a "
                                  "safetensors file or a state dict (through the model's checkpoint filter)")
    add("--initial-checkpoint", dest="pretrained_file", action=DeprecatedSpelling, help=argparse.SUPPRESS)
    add("--pretrained", action="store_true", default=None, help=f"initial weights: {PRETRAINED_HELP}; a classifier "
                                                                "of another class count starts afresh")
    add("--reset-head", action="store_true", default=None, help="with --pretrained-file: start the classifier "
                                                                "afresh when its class count differs")
    add("--partial-weights", action="store_true", default=None, help="with --pretrained-file or --pretrained: accept "
                                                                     "a file that gives less than half of the model's "
                                                                     "weights")


TRAIN_DESCRIPTION = """\
Trains a classifier: any timm model, the embedded digits or an ImageNet-style folder, with a recipe
(--preset) whose every value an option can override.

Runs scale from one CPU process to `torchrun --nproc_per_node N -m boat_vit train` (DistributedDataParallel).
Every epoch writes last.pth (and best.pth), a metrics.csv row and curves.png into --output, each file
atomically. --resume RUN continues a run exactly, with the options it started with: every epoch starts
from RNG states derived from the seed and the epoch, so a resumed run repeats the interrupted epoch bit
for bit.
"""


def _run_train(args: argparse.Namespace) -> int:
    summary = train_command(args, "classification", resolve_config, train_classifier)
    if summary.get("output"):
        print(f"best top-1 {summary['best_top1']:.2f}% (epoch {summary['best_epoch'] + 1}), final top-1 "
              f"{summary['final_top1']:.2f}%; results in {summary['output']}/ "
              f"(summary.json, metrics.csv, curves.png, best.pth, last.pth)")
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    with distributed_command(args) as world:
        model, class_names, data_config = load_classifier(args.checkpoint, args.model, args.pretrained_file, args.ema,
                                                          args.pretrained)
        loader = eval_loader(args.data, data_config, world, args.batch_size, args.workers,
                             class_names if args.checkpoint else None)
        amp_dtype = amp_dtype_for(world.device, bool(args.amp), args.amp_dtype)
        metrics = evaluate_classifier(model.to(world.device), loader, world, amp_dtype, progress=world.is_main)
        if world.is_main:
            print(f"top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  loss {metrics['loss']:.4f}  "
                  f"({metrics['count']} images, {metrics['skipped']} unreadable skipped)")
            if not math.isfinite(metrics["loss"]):
                print(f"{args.prog}: warning: the loss is {metrics['loss']}: the model gives non-finite outputs (NaN "
                      f"or infinite weights in {args.checkpoint or args.pretrained_file}?); the accuracies above "
                      "mean nothing", file=sys.stderr)
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    """Prints the top classes of every readable image; an unreadable one gets a line on stderr (status 2)."""
    device = local_device(args)
    model, class_names, data_config = load_classifier(args.checkpoint, args.model, args.pretrained_file, args.ema,
                                                      args.pretrained)
    amp_dtype = amp_dtype_for(device, bool(args.amp), args.amp_dtype)
    model.to(device)
    unreadable = 0
    for path in args.images:
        try:
            (top,) = predict(model, class_names, data_config, [path], args.top_k, amp_dtype)
        except (FileNotFoundError, ValueError) as error:
            print(f"{args.prog}: error: {error}", file=sys.stderr)
            unreadable += 1
            continue
        print(path)
        for name, probability in top:
            print(f"  {probability:7.2%}  {name}")
        if not all(math.isfinite(probability) for _, probability in top):
            print(f"{args.prog}: warning: non-finite probabilities for {path}: the model of "
                  f"{args.checkpoint or args.pretrained_file} gives NaN or infinite outputs (NaN or infinite weights?)",
                  file=sys.stderr)
    return USAGE_ERROR if unreadable else 0


def _add_model_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="a boat-vit training checkpoint (best.pth / last.pth)")
    parser.add_argument("--model", help="instead of --checkpoint: a timm model name")
    parser.add_argument("--pretrained-file", help="with --model: weights file (e.g. released BOAT weights)")
    parser.add_argument("--pretrained", action="store_true", help=f"with --model: {PRETRAINED_HELP}")
    parser.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    add_model_runtime_arguments(parser)


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``train``, ``eval`` and ``predict``."""
    parser = subparsers.add_parser("train", help="train a classifier", description=TRAIN_DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_train_arguments(parser)
    parser.set_defaults(func=_run_train, flags=TRAIN_FLAGS)

    evaluation = subparsers.add_parser("eval", help="top-1/top-5 of a model on a dataset",
                                       description="Reports top-1, top-5 and loss of a model on a dataset "
                                                   "(torchrun for several processes).")
    _add_model_source(evaluation)
    evaluation.add_argument("--data", default="digits", help="'digits' (embedded test split), a folder with val/, "
                                                             "or a folder of class sub-folders (default digits)")
    evaluation.add_argument("--batch-size", type=positive_int, default=64, help="images per forward (default 64)")
    evaluation.add_argument("--workers", type=non_negative_int, default=2, help="data loading processes (default 2)")
    evaluation.set_defaults(func=_run_eval, flags=MODEL_SOURCE_FLAGS)

    prediction = subparsers.add_parser("predict", help="top-5 classes of images",
                                       description="Prints the top classes with probabilities for each image.")
    prediction.add_argument("images", nargs="+", help="image files")
    _add_model_source(prediction)
    prediction.add_argument("--top-k", type=positive_int, default=TOP_K, help=f"classes to show (default {TOP_K})")
    prediction.set_defaults(func=_run_predict, flags=MODEL_SOURCE_FLAGS)
