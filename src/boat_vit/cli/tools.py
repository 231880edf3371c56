"""``boat-vit convert``, ``export``, ``bench``, ``show-clusters`` and ``ablate``: shells over the checkpoint,
export, measuring, picture and ablation functions."""
import argparse
import json
import logging
from pathlib import Path
from typing import Optional

from .. import ablation
from .. import bench as bench_api
from .. import export as export_api
from .. import visualize
from ..checkpoint import convert_checkpoint
from ..classification import load_classifier
from ..classification.data import DigitsDataset
from ..classification.evaluate import eval_transform_for
from ..engine import default_device, set_threads
from ..models import create_model
from .options import (
    add_amp_arguments,
    add_device_argument,
    add_threads_argument,
    json_object,
    positive_float,
    positive_int,
)

__all__ = ["add_parsers"]


def _run_convert(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model = create_model(args.model, **args.model_args)
    written = convert_checkpoint(args.input, args.output, model, key=args.key, overwrite=args.overwrite,
                                 metadata={"model": args.model, "model_args": json.dumps(args.model_args,
                                                                                          sort_keys=True)})
    source = f"entry {written['source_key']!r}" if written["source_key"] else "the whole file"
    print(f"wrote {args.output} ({args.model}, weights from {source} of {args.input})")
    return 0


EXPORT_SEED = 0  # of the random check inputs
DIGITS_CHECKED = 4  # real images (the embedded digits' validation split) the export is checked on


def _run_export(args: argparse.Namespace) -> int:
    import torch

    set_threads(args.threads)
    export_api.check_output(args.output, args.overwrite)  # before the model is loaded and exported
    if args.checkpoint:
        model, _, data_config = load_classifier(args.checkpoint, weights=args.pretrained_file, use_ema=args.ema)
        if args.model != model.pretrained_cfg.get("architecture", args.model):
            raise ValueError(f"{args.checkpoint} holds {model.pretrained_cfg.get('architecture')}, not {args.model}")
    else:
        model, _, data_config = load_classifier(model_name=args.model, weights=args.pretrained_file)
    size = tuple(args.img_size) if args.img_size else tuple(data_config["input_size"][1:])
    size = (size[0], size[-1])
    if size != tuple(data_config["input_size"][1:]) and hasattr(model, "set_input_size"):
        model.set_input_size(img_size=size)  # timm's resize (a Swin's windows follow the token grid)
    data_config = dict(data_config, input_size=(3, *size))
    generator = torch.Generator().manual_seed(EXPORT_SEED)
    # with a dynamic batch the checks use batch sizes other than the example's
    batches = (args.batch_size + 1, DIGITS_CHECKED) if args.dynamic_batch else (args.batch_size, args.batch_size)
    transform, digits = eval_transform_for(data_config), DigitsDataset("val")
    inputs = {
        "random": torch.randn(batches[0], 3, *size, generator=generator),
        "digits": torch.stack([transform(digits[i][0]) for i in range(batches[1])]),
    }
    path = export_api.export_model(model, args.format, args.output, torch.randn(args.batch_size, 3, *size,
                                                                                generator=generator),
                                   dynamic_batch=args.dynamic_batch, opset=args.opset, overwrite=args.overwrite)
    exported = export_api.load_exported(path, args.format)
    differences = {name: export_api.check_export(model, exported, batch, args.tolerance)
                   for name, batch in inputs.items()}
    batch = "dynamic" if args.dynamic_batch or args.format == "torchscript" else str(args.batch_size)
    print(f"wrote {path} ({args.format}, {size[0]}x{size[1]}, batch {batch}); max |exported - eager|: "
          + ", ".join(f"{name} {difference:.2e}" for name, difference in differences.items())
          + f" (tolerance {args.tolerance:g})")
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    bench_api.use_allocator(args.allocator)
    config = bench_api.BenchConfig(
        batch_size=args.batch_size, img_size=args.img_size, device=args.device or default_device(), dtype=args.dtype,
        amp=bool(args.amp), amp_dtype=args.amp_dtype, compile=args.compile, channels_last=args.channels_last,
        train=args.train, warmup=args.warmup, repeats=args.repeats, model_kwargs=args.model_kwargs or {},
        measure_memory=not args.no_memory, seed=args.seed,
    )
    rows = bench_api.benchmark_models(args.models, config)
    info = bench_api.environment(config.device)
    print(bench_api.describe(config, info))
    print(f"{config.warmup} warm-up and {config.repeats} timed passes per model, interleaved; ratios against "
          f"{rows[0]['model']}\n")
    print(bench_api.model_table(rows))
    if args.csv:
        bench_api.write_csv(rows, args.csv)
    if args.json:
        bench_api.write_json(dict(environment=info, config=vars(config), results=rows), args.json)
    return 0


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _run_show_clusters(args: argparse.Namespace) -> int:
    summary = visualize.show_clusters(
        args.output, model_name=args.model, image=args.image, sample=args.sample, checkpoint=args.checkpoint,
        pretrained_file=args.pretrained_file, model_kwargs=args.model_kwargs, stage=args.stage, block=args.block,
        heads=args.head, patch=args.patch, img_size=args.img_size, panel_width=args.panel_width, seed=args.seed,
    )
    height, width = summary["token_map"]
    print(f"{summary['layer']}: {height}x{width} tokens (input {summary['input_size'][0]}x{summary['input_size'][1]}),"
          f" {_plural(summary['num_groups'], 'group')} of {summary['group_size']}; selected patch {summary['patch']}")
    if "prediction" in summary:
        print(f"predicted {summary['prediction'][0]} ({summary['prediction'][1]:.1%})")
    print(f"wrote {args.output} ({summary['figure_size'][0]}x{summary['figure_size'][1]} pixels)")
    return 0


def _heads(value: str) -> Optional[list[int]]:
    if value == "all":
        return None
    try:
        return [int(h) for h in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'all' or comma-separated head indices, got {value!r}") from None


def _add_convert(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a released checkpoint to a safetensors file in boat-vit's layout",
        description=(
            "Reads a released BOAT checkpoint (or a Swin/CSWin/timm one) without running code from it, "
            "converts it to the layout of --model and writes a safetensors file that "
            "timm.create_model(MODEL, checkpoint_path=OUT) loads."
        ),
    )
    parser.add_argument("input", metavar="IN", type=Path, help="checkpoint file to convert")
    parser.add_argument("output", metavar="OUT", type=Path, help="safetensors file to write")
    parser.add_argument("--model", required=True, help="timm model name, e.g. boat_swin_tiny_patch4_window7_224")
    parser.add_argument("--key", default=None, help="checkpoint entry holding the weights ('model', 'state_dict', "
                                                    "'state_dict_ema', ...; '' for a plain state dict); default: EMA "
                                                    "weights if present")
    parser.add_argument("--model-args", type=json_object, default={},
                        help='JSON object of extra model arguments, e.g. \'{"num_classes": 10}\'')
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.set_defaults(func=_run_convert)


def _add_export(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export a classifier to ONNX, TorchScript or a torch.export "
                                                  "program, checked against eager PyTorch",
                                   description=export_api.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("model", metavar="MODEL", help="timm model name (with --checkpoint: the checkpoint's)")
    add("--format", required=True, choices=export_api.FORMATS, help="what to write")
    add("--output", required=True, type=Path, help="the file (.onnx, .pt for TorchScript, .pt2 for a program); "
                                                   "an existing one is kept unless --overwrite")
    add("--overwrite", action="store_true", help="replace an existing --output")
    add("--checkpoint", help="a boat-vit training checkpoint (best.pth / last.pth)")
    add("--pretrained-file", help="instead of --checkpoint: weights for MODEL (e.g. released BOAT weights)")
    add("--ema", action="store_true", help="the checkpoint's EMA weights")
    add("--img-size", type=positive_int, nargs="+", help="export size, one or two (H W) ints (default: the "
                                                          "model's input size)")
    add("--batch-size", type=positive_int, default=2, help="batch of the example input (default 2)")
    add("--dynamic-batch", action="store_true", help="any batch size (TorchScript always takes any)")
    add("--opset", type=positive_int, default=export_api.DEFAULT_OPSET,
        help=f"ONNX opset, at least {export_api.MIN_OPSET} (default {export_api.DEFAULT_OPSET})")
    add("--tolerance", type=positive_float, default=export_api.DEFAULT_TOLERANCE,
        help=f"largest accepted |exported - eager| of the logits on the check inputs (default "
             f"{export_api.DEFAULT_TOLERANCE:g}); above it the command fails")
    add_threads_argument(parser)
    parser.set_defaults(func=_run_export)


def _add_bench(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="throughput, latency, memory, params and MACs of models",
                                   description=bench_api.models.__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("models", nargs="+", metavar="MODEL", help="timm model names, e.g. swin_tiny_patch4_window7_224 "
                                                    "boat_swin_tiny_patch4_window7_224")
    add("--batch-size", type=positive_int, default=bench_api.BenchConfig.batch_size,
        help=f"images per pass (default {bench_api.BenchConfig.batch_size})")
    add("--img-size", type=positive_int, help="square input size, given to each model's constructor where it "
                                              "takes one (default: each model's own)")
    add("--dtype", choices=sorted(bench_api.DTYPES), default="float32", help="dtype of weights and inputs "
                                                                            "(default float32)")
    add_amp_arguments(parser)
    add_device_argument(parser)
    add("--threads", type=positive_int, help="CPU threads (torch.set_num_threads; default: PyTorch's choice). On a "
                                             "shared machine 1 thread avoids stalls on descheduled worker threads")
    add("--allocator", choices=bench_api.ALLOCATORS, default="retain", help=bench_api.ALLOCATOR_HELP)
    add("--compile", action="store_true", help="run the models through torch.compile")
    add("--channels-last", action="store_true", help="channels-last weights and inputs")
    add("--train", action="store_true", help="time forward + backward + AdamW step instead of inference")
    add("--warmup", type=int, default=bench_api.BenchConfig.warmup,
        help=f"untimed passes per model (default {bench_api.BenchConfig.warmup})")
    add("--repeats", type=positive_int, default=bench_api.BenchConfig.repeats,
        help=f"timed passes per model (default {bench_api.BenchConfig.repeats})")
    add("--model-kwargs", type=json_object, help='JSON keyword arguments for every model, e.g. \'{"embed_dim": 48}\'')
    add("--no-memory", action="store_true", help="skip the peak-memory measurement (one process per model)")
    add("--seed", type=int, default=0, help="seed of weights and inputs (default 0)")
    add("--csv", help="also write the rows to this CSV file")
    add("--json", help="also write environment, settings and rows to this JSON file")
    parser.set_defaults(func=_run_bench)


def _add_show_clusters(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("show-clusters", help="draw the FSLA groups of a model on an image",
                                   description=visualize.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("image", nargs="?", help="image file (any size); default: the --sample image")
    add("--sample", choices=visualize.SAMPLES, default=visualize.DEFAULT_SAMPLE,
        help="built-in image without IMAGE: scikit-learn's china or flower photograph, or a handwritten digit "
             f"(default {visualize.DEFAULT_SAMPLE})")
    add("--model", help="timm model name, e.g. boat_swin_tiny_patch4_window7_224 (not needed with --checkpoint)")
    add("--checkpoint", help="a boat-vit training checkpoint, e.g. the digits demo's best.pth")
    add("--pretrained-file", help="weights for --model through its checkpoint filter (e.g. released BOAT weights); "
                                  "without weights the model is random and still groups by content")
    add("--model-kwargs", type=json_object, help='JSON keyword arguments for --model, e.g. \'{"embed_dim": 48}\'')
    add("--output", required=True, help="PNG file to write")
    add("--stage", type=int, help="stage of the FSLA layer (default: the first stage with FSLA)")
    add("--block", type=int, help="block of the FSLA layer in the stage (default: the stage's first FSLA block)")
    add("--head", type=_heads, default=None, help="'all' (default) or comma-separated head indices")
    add("--patch", type=int, nargs=2, metavar=("ROW", "COL"),
        help="selected patch in the layer's token map (default: the centre)")
    add("--img-size", type=positive_int, help="shorter side of the image for the model; both sides are rounded to "
                                              "a multiple of the model's stride (default: the model's input size)")
    add("--panel-width", type=int, default=visualize.DEFAULT_PANEL_WIDTH,
        help=f"pixels per panel (default {visualize.DEFAULT_PANEL_WIDTH})")
    add("--seed", type=int, default=0, help="seed of random weights (default 0)")
    parser.set_defaults(func=_run_show_clusters)


ABLATE_DESCRIPTION = """\
Does FSLA help? Trains every contender of an ablation design on generated digit tasks, once per seed, paired
by seed (same data order and initial weights), then writes the report.

The default design (long-range) asks whether FSLA gives a windowed Swin the range its windows lack: two digits
at opposite edges of the canvas (far) that no final token of the FSLA-off Swin sees together, and both in one
window (near, the positive control). A pilot first sets the training budget; the decisions follow the analysis
plan in the README. --design first repeats the project's first ablation.

Output folder: one run per task, contender and seed (TASK/CONTENDER/seedN/), the pilot's runs (pilot/), the
initial weights (init/), example held-out images (examples/), pilot.json, results.csv, results.md,
curves.png and cost.png. Run the same command again to resume: finished runs are kept, interrupted ones
continue exactly; a folder run with other settings is refused.
"""


def _ablation_config(args: argparse.Namespace) -> "ablation.AblationConfig":
    """The ablation the options of ``boat-vit ablate`` ask for."""
    if args.quick:
        config = ablation.quick_config(args.output or "runs/ablation-quick")
    else:
        config = ablation.design_config(args.design, args.output)
    config = ablation.narrow(config, args.tasks, args.contenders, args.epochs, args.seeds)
    for key in ("jobs", "threads", "device"):
        if getattr(args, key) is not None:
            setattr(config, key, getattr(args, key))
    return config


def _run_ablate(args: argparse.Namespace) -> int:
    config = _ablation_config(args)
    _, config, _ = ablation.run_ablation(config, report_only=args.report_only)
    print(f"results in {config.output}/ (results.md, results.csv, curves.png, cost.png)")
    return 0


def _add_ablate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ablate", help="does FSLA help? the ablation on generated digit tasks",
                                   description=ABLATE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    designs = list(ablation.DESIGNS)
    add("--design", choices=designs, default=ablation.DEFAULT_DESIGN,
        help=f"which experiment: {designs[0]} (default: far and near digit pairs for a Swin without a global "
             "stage, after a pilot that sets the budget) or first (the first ablation, kept reproducible)")
    add("--output", help="ablation folder: one run per task, contender and seed, results.csv, results.md, "
                         "curves.png, cost.png (default runs/ablation-long-range; first: runs/ablation; --quick: "
                         "runs/ablation-quick); run the same command again to resume")
    add("--quick", action="store_true", help="about a minute: the long-range design on tiny splits and models, one "
                                             "epoch (checks the machinery; its accuracies mean nothing)")
    add("--jobs", type=positive_int, help="runs trained at once, each in its own process with --threads threads "
                                          "(default 1; results are the same for any value)")
    add("--seeds", type=positive_int, help="seeds 0..N-1 for every task (default: the design's)")
    add("--tasks", nargs="+", metavar="TASK", help="only these tasks of the design (long-range: far, near, cswin; "
                                                   "first: pairs, control)")
    add("--contenders", nargs="+", metavar="NAME",
        help=f"run these contenders on every selected task instead of the task's own list (any of "
             f"{', '.join(ablation.CONTENDERS)}); their FSLA-off baselines come too; finished runs in --output "
             "are reused")
    add("--epochs", type=positive_int, help="training epochs of every task and contender, instead of the design's "
                                            "(and of the pilot's choice); use a new --output: finished runs of "
                                            "another budget are refused")
    add("--threads", type=positive_int, help="torch CPU threads per run (default 1: runs are small)")
    add_device_argument(parser)
    add("--report-only", action="store_true", help="rebuild the report from the finished runs, train nothing")
    parser.set_defaults(func=_run_ablate)


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``convert``, ``export``, ``bench``, ``show-clusters`` and ``ablate``."""
    _add_convert(subparsers)
    _add_export(subparsers)
    _add_bench(subparsers)
    _add_show_clusters(subparsers)
    _add_ablate(subparsers)
