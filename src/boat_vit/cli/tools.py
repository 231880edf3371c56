"""``boat-vit convert``, ``export``, ``bench``, ``show-clusters`` and ``ablate``: shells over the checkpoint,
hub-folder, export, measuring, picture and ablation functions."""
import argparse
import json
import logging
import os
from pathlib import Path
from typing import Optional

from .. import ablation
from .. import bench as bench_api
from .. import export as export_api
from .. import hub, visualize
from ..classification import load_classifier
from ..classification.evaluate import eval_transform_for
from ..engine import default_device, set_threads
from ..errors import Argument, ConfigError, first_line
from ..files import check_output
from ..models import create_model, weights_filter
from ..weights import convert_checkpoint
from .options import (
    DeprecatedSpelling,
    add_amp_arguments,
    add_device_argument,
    add_threads_argument,
    json_object,
    positive_float,
    positive_int,
)

__all__ = ["add_parsers"]

# Python arguments of the library whose flag has another name (see options.flag_spelling)
MODEL_SOURCE_FLAGS = dict(model_name="--model", weights="--pretrained-file", use_ema="--ema",
                          pretrained_cfg_overlay="--pretrained-file")
PRETRAINED_HELP = ("the model's pretrained weights (the released ones for BOAT models), downloaded once into timm's "
                   "cache ($TORCH_HOME/hub/checkpoints) as timm.create_model(MODEL, pretrained=True) downloads them")


def _run_convert(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if (args.output is None) == (args.hub_dir is None):
        raise ValueError("give OUT (a safetensors file) or --hub-dir FOLDER, one of them")
    if args.ema and (args.hub_dir is None or args.model is not None):
        raise ValueError("--ema picks the EMA weights of a training run checkpoint for --hub-dir (without --model); "
                         "for another file, --key names the entry")
    if args.hub_dir is not None:
        if args.model is None:  # a training run's checkpoint: the model as trained, its classes and accuracy
            if args.model_kwargs or args.key is not None:
                raise ValueError("a training run checkpoint brings its own model and weights; drop --model-kwargs "
                                 "and --key (or name the model with --model)")
            folder = hub.hub_folder_from_run(args.input, args.hub_dir, use_ema=args.ema, overwrite=args.overwrite)
        else:
            folder = hub.hub_folder_from_weights(args.input, args.hub_dir, args.model, args.model_kwargs,
                                                 key=args.key, overwrite=args.overwrite)
        print(f"wrote {folder}/ (model.safetensors, config.json, README.md); after `import boat_vit`, "
              f"timm.create_model(\"local-dir:{folder}\", pretrained=True) loads it")
        return 0
    if args.model is None:
        raise ValueError("--model names the model the weights are for (needed to write OUT)")
    model = create_model(args.model, **args.model_kwargs)
    written = convert_checkpoint(args.input, args.output, model, weights_filter(model), key=args.key,
                                 overwrite=args.overwrite,
                                 metadata={"model": args.model, "model_kwargs": json.dumps(args.model_kwargs,
                                                                                            sort_keys=True)})
    source = f"entry {written['source_key']!r}" if written["source_key"] else "the whole file"
    print(f"wrote {args.output} ({args.model}, weights from {source} of {args.input})")
    return 0


EXPORT_SEED = 0  # of the random check images
CHECK_IMAGES = 16  # images each export is checked on: half random, half crops of real photographs
CHECK_PHOTOS = ("china", "flower")  # scikit-learn's sample photographs (no download)
CROP_SHRINK = 0.2  # each further crop of a photograph is this much smaller (as a share of its height)
EXPORT_DESCRIPTION = f"""\
Export a classifier to ONNX, TorchScript or a torch.export program (.pt2).
The export is reloaded and checked against eager PyTorch on random images
and on crops of two real photographs; the file is written only if the
check passes, and a failure or Ctrl-C leaves nothing behind. Each step
prints its time: eager (reference outputs, float32 and float64), trace,
convert (ONNX only), save, reload, check.

ONNX files and torch.export programs are built for one image size (the
model's, or --img-size) and, without --dynamic-batch, one batch size.
TorchScript takes any batch and image size.

How the check judges agreement: BOAT's feature-space attention groups
tokens by sorting clustering scores, a discrete choice. Where two scores
tie (flat image regions make exact ties), another rounding of float32 can
put a token in the other group, and that image's logits move by more than
rounding (up to about 3e-2 on the six models). Eager PyTorch does the same
against itself: run in float64, it moves such images as far. So the check
first runs the model in float64 as well: on the images float64 leaves
within --tolerance (free of near ties), the median image must agree within
--tolerance (float rounding, default {export_api.DEFAULT_TOLERANCE:g}); every image
within --near-tie-tolerance (default {export_api.DEFAULT_NEAR_TIE_TOLERANCE:g}) or {export_api.NEAR_TIE_SPREAD} times the
largest move float64 makes, whichever is larger. A wrong weight or
operation moves the images free of near ties too, and fails. The check
prints how many images agree, top-1 and top-5 agreement and how many
images float64 moves. TorchScript agrees exactly.

ONNX export needs: pip install 'boat-vit[export]'
"""


def _photo_crops(count: int, transform) -> "torch.Tensor":
    """``count`` square crops of the sample photographs, smaller and further right in turn, as the model sees them."""
    import torch

    photos = [visualize.sample_image(name) for name in CHECK_PHOTOS]
    crops = []
    for index in range(count):
        photo, turn = photos[index % len(photos)], index // len(photos)
        width, height = photo.size
        side = max(1, int(height * (1 - CROP_SHRINK * (turn % round(1 / CROP_SHRINK)))))
        left = (width - side) * (turn % 3) // 2
        crops.append(transform(photo.crop((left, height - side, left + side, height))))
    return torch.stack(crops)


def _check_images(args: argparse.Namespace, size: tuple, data_config: dict) -> dict:
    """Named batches of random and real check images, half and half.

    An export that takes any batch gets one batch of each kind (other sizes than the example's); one with a fixed
    batch gets batches of that size (each kind rounded up to whole batches).
    """
    import torch

    any_batch = args.dynamic_batch or args.format == "torchscript"
    per_kind = -(-args.check_images // 2)
    step = per_kind if any_batch else args.batch_size
    per_kind = -(-per_kind // step) * step
    random = torch.randn(per_kind, 3, *size, generator=torch.Generator().manual_seed(EXPORT_SEED))
    real = _photo_crops(per_kind, eval_transform_for(data_config))
    return {f"{kind} {start // step}": images[start : start + step]
            for kind, images in (("random", random), ("photos", real)) for start in range(0, per_kind, step)}


def _run_export(args: argparse.Namespace) -> int:
    import torch

    set_threads(args.threads)
    export_api.require_format(args.format)
    check_output(args.output, args.overwrite, argument="output")  # before the model is loaded and exported
    if args.checkpoint:
        model, _, data_config = load_classifier(args.checkpoint, weights=args.pretrained_file, use_ema=args.ema,
                                                pretrained=args.pretrained)
        if args.model != model.pretrained_cfg.get("architecture", args.model):
            raise ValueError(f"{args.checkpoint} holds {model.pretrained_cfg.get('architecture')}, not {args.model}")
    else:
        model, _, data_config = load_classifier(model_name=args.model, weights=args.pretrained_file,
                                                pretrained=args.pretrained)
    size = tuple(args.img_size) if args.img_size else tuple(data_config["input_size"][1:])
    size = (size[0], size[-1])
    if size != tuple(data_config["input_size"][1:]) and hasattr(model, "set_input_size"):
        try:
            model.set_input_size(img_size=size)  # timm's resize (a Swin's windows follow the token grid)
        except Exception as error:  # what the model's resize raises for a size it cannot take
            raise ConfigError("argument ", Argument("img_size"), f": {args.model} does not run at {size[0]}x{size[1]} "
                              f"({first_line(error)})") from error
    data_config = dict(data_config, input_size=(3, *size))
    example = torch.randn(args.batch_size, 3, *size, generator=torch.Generator().manual_seed(EXPORT_SEED))
    result = export_api.export_model(
        model, args.format, args.output, example, _check_images(args, size, data_config),
        dynamic_batch=args.dynamic_batch, opset=args.opset, overwrite=args.overwrite, tolerance=args.tolerance,
        near_tie_tolerance=args.near_tie_tolerance, on_step=lambda line: print(line, flush=True),
    )
    batch = "dynamic" if args.dynamic_batch or args.format == "torchscript" else str(args.batch_size)
    print(f"wrote {result.path} ({args.format}, {size[0]}x{size[1]}, batch {batch}) in "
          f"{sum(result.seconds.values()):.0f} s")
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    import torch

    reports = {argument: getattr(args, argument) for argument in ("csv", "json") if getattr(args, argument)}
    if len(set(map(os.path.abspath, reports.values()))) < len(reports):
        raise ConfigError(Argument("csv", args.csv), " and ", Argument("json", args.json), " are the same file")
    for argument, path in reports.items():
        check_output(path, args.overwrite, argument)  # before the work
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


def _run_show_clusters(args: argparse.Namespace) -> int:
    summary = visualize.show_clusters(
        args.output, model_name=args.model, image=args.image, sample=args.sample, checkpoint=args.checkpoint,
        pretrained_file=args.pretrained_file, pretrained=args.pretrained, model_kwargs=args.model_kwargs,
        stage=args.stage, block=args.block, heads=args.head, patch=args.patch, img_size=args.img_size,
        panel_width=args.panel_width, seed=args.seed, overwrite=args.overwrite,
    )
    height, width = summary["token_map"]
    print(f"{summary['layer']}: {height}x{width} tokens (input {summary['input_size'][0]}x{summary['input_size'][1]}),"
          f" {visualize.plural(summary['num_groups'], 'group')} of {summary['group_size']}; selected patch {summary['patch']}")
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


CONVERT_DESCRIPTION = """\
Reads a weights file without running code from it and writes it in the layout of a timm model:

  boat-vit convert IN OUT.safetensors --model MODEL   a safetensors file in MODEL's layout, for
                                                     timm.create_model(MODEL, checkpoint_path=OUT)
  boat-vit convert IN --hub-dir FOLDER --model MODEL  a Hugging Face Hub folder (model.safetensors, config.json,
                                                     README.md model card) for timm.create_model("local-dir:FOLDER",
                                                     pretrained=True), or "hf-hub:ORG/NAME" once uploaded
  boat-vit convert RUN/best.pth --hub-dir FOLDER      the same for a training run's checkpoint: the model as
                                                     trained, with its class names, data settings and accuracy

IN: released BOAT weights as downloaded, a Swin/CSWin/timm checkpoint, a safetensors file, a state dict or (with
--model) a boat-vit run checkpoint. Loading a hub folder needs `import boat_vit` first (it registers the models).
"""


def _add_convert(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert weights to a safetensors file or a Hugging Face Hub folder in timm's layout",
        description=CONVERT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", metavar="IN", type=Path, help="weights file or training run checkpoint to convert")
    parser.add_argument("output", metavar="OUT", type=Path, nargs="?", help="safetensors file to write")
    parser.add_argument("--hub-dir", type=Path, help="instead of OUT: the Hugging Face Hub folder to write")
    parser.add_argument("--model", help="timm model name, e.g. boat_swin_tiny_patch4_window7_224 (not needed for a "
                                        "training run checkpoint with --hub-dir)")
    parser.add_argument("--key", default=None, help="checkpoint entry holding the weights ('model', 'state_dict', "
                                                    "'state_dict_ema', ...; '' for a plain state dict); default: EMA "
                                                    "weights if present")
    parser.add_argument("--model-kwargs", type=json_object, default={},
                        help='JSON keyword arguments for the model, e.g. \'{"num_classes": 10}\'')
    parser.add_argument("--model-args", dest="model_kwargs", type=json_object, action=DeprecatedSpelling,
                        help=argparse.SUPPRESS)
    parser.add_argument("--ema", action="store_true", help="with a training run checkpoint: its EMA weights")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT or the --hub-dir folder if it exists")
    parser.set_defaults(func=_run_convert, flags=dict(folder="--hub-dir"))


class _ImageSize(argparse.Action):
    """``--img-size S`` or ``--img-size H W``: one or two integers."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) > 2:
            parser.error(f"argument {option_string}: expected one or two integers (S, or H W), got {len(values)}")
        setattr(namespace, self.dest, values)


def _opset(text: str) -> int:
    value = positive_int(text)
    try:
        export_api.check_opset(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def _add_export(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export a classifier to ONNX, TorchScript or a torch.export "
                                                  "program, checked against eager PyTorch before it is written",
                                   description=EXPORT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("model", metavar="MODEL", help="timm model name (with --checkpoint: the checkpoint's)")
    add("--format", required=True, choices=export_api.FORMATS, help="what to write")
    add("--output", required=True, type=Path, help="the file (.onnx, .pt for TorchScript, .pt2 for a program); "
                                                   "an existing one is kept unless --overwrite")
    add("--overwrite", action="store_true", help="replace an existing --output")
    add("--checkpoint", help="a boat-vit training checkpoint (best.pth / last.pth)")
    add("--pretrained-file", help="instead of --checkpoint: weights for MODEL (e.g. released BOAT weights)")
    add("--pretrained", action="store_true", help=f"instead of --checkpoint: {PRETRAINED_HELP}")
    add("--ema", action="store_true", help="the checkpoint's EMA weights")
    add("--img-size", type=positive_int, nargs="+", action=_ImageSize, metavar="SIZE",
        help="export size: S, or H W (default: the model's input size)")
    add("--batch-size", type=positive_int, default=2, help="batch of the example input (default 2)")
    add("--dynamic-batch", action="store_true", help="any batch size (TorchScript always takes any)")
    add("--opset", type=_opset, default=export_api.DEFAULT_OPSET,
        help=f"ONNX opset, {export_api.MIN_OPSET} to {export_api.MAX_OPSET} (default {export_api.DEFAULT_OPSET})")
    add("--check-images", type=positive_int, default=CHECK_IMAGES,
        help=f"images the export is checked on: half random, half crops of photographs, in whole batches "
             f"(default {CHECK_IMAGES})")
    add("--tolerance", type=positive_float, default=export_api.DEFAULT_TOLERANCE,
        help=f"largest |exported - eager| of the median check image free of near ties (default "
             f"{export_api.DEFAULT_TOLERANCE:g})")
    add("--near-tie-tolerance", type=positive_float, default=export_api.DEFAULT_NEAR_TIE_TOLERANCE,
        help=f"largest |exported - eager| of any check image, at least (default "
             f"{export_api.DEFAULT_NEAR_TIE_TOLERANCE:g}; more where float64 moves an image further)")
    add_threads_argument(parser)
    parser.set_defaults(func=_run_export, flags=dict(MODEL_SOURCE_FLAGS, path="--output"))


BENCH_DESCRIPTION = """\
Throughput, latency, peak memory, parameters and MACs of timm models side by side.

All models are built in one process and timed in one run: warm-up passes of every model, then timed
passes round-robin with the order rotating every repeat. Latency is the median time of one batch;
throughput is batch / median; the throughput ratio against the first model is the median of the
per-repeat ratios. A pass is an inference forward, or with --train a forward, a backward and an AdamW
step. MACs are those of one forward pass of one image.

Peak memory is measured for each model alone in a fresh process (one warm-up pass, then the peak over
one more pass): on CUDA torch.cuda.max_memory_allocated; on CPU the peak resident size above the
process's resident size before the model was created.
"""

SHOW_CLUSTERS_DESCRIPTION = """\
Draws which patches attend to which through FSLA: the model runs once on one image, and the groups of
the chosen FSLA layer are recorded as the layer used them.

One column per chosen head. Top: every patch coloured by its FSLA group. Bottom: the groups of one
selected patch (red frame): the members of its group (orange) and the tokens of the sibling group that
its group also uses as keys and values (the overlap, cyan). Members far from the selected patch are the
point of feature-space attention: window attention never reaches them. The clustering runs on the
layer's queries, so a model with random weights also groups patches by content; trained weights give
semantic groups.
"""


def _add_bench(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="throughput, latency, memory, params and MACs of models",
                                   description=BENCH_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    add("--overwrite", action="store_true", help="replace existing --csv and --json files (checked before the "
                                                 "measurements)")
    parser.set_defaults(func=_run_bench)


def _add_show_clusters(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("show-clusters", help="draw the FSLA groups of a model on an image",
                                   description=SHOW_CLUSTERS_DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("image", nargs="?", help="image file (any size); default: the --sample image")
    add("--sample", choices=visualize.SAMPLES, default=visualize.DEFAULT_SAMPLE,
        help="built-in image without IMAGE: scikit-learn's china or flower photograph, or a handwritten digit "
             f"(default {visualize.DEFAULT_SAMPLE})")
    add("--model", help="timm model name, e.g. boat_swin_tiny_patch4_window7_224 (not needed with --checkpoint)")
    add("--checkpoint", help="a boat-vit training checkpoint, e.g. the digits demo's best.pth")
    add("--pretrained-file", help="weights for --model through its checkpoint filter (e.g. released BOAT weights); "
                                  "without weights the model is random and still groups by content")
    add("--pretrained", action="store_true", help=f"instead of --pretrained-file: {PRETRAINED_HELP}")
    add("--model-kwargs", type=json_object, help='JSON keyword arguments for --model, e.g. \'{"embed_dim": 48}\'')
    add("--output", required=True, help="PNG file to write (an existing one is kept unless --overwrite)")
    add("--overwrite", action="store_true", help="replace an existing --output")
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
    parser.set_defaults(func=_run_show_clusters, flags=MODEL_SOURCE_FLAGS)


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
