"""Command-line options that several commands share, argument types with one-line errors, and the set-up
of the commands that train or run a model."""
import argparse
import json
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import torch

from ..engine import (
    AMP_DTYPES,
    Distributed,
    RunCheckpoint,
    RunOptions,
    default_device,
    parse_device,
    set_threads,
    setup_distributed,
)
from ..errors import Argument

__all__ = [
    "add_amp_arguments",
    "add_backbone_arguments",
    "add_device_argument",
    "add_model_runtime_arguments",
    "add_run_arguments",
    "add_threads_argument",
    "DeprecatedSpelling",
    "USAGE_ERROR",
    "distributed_command",
    "flag_spelling",
    "json_object",
    "local_device",
    "non_negative_int",
    "options_of",
    "positive_float",
    "positive_int",
    "train_command",
]


COMMAND_KEYS = ("func", "prog", "flags")  # what the parser adds besides the options


class DeprecatedSpelling(argparse.Action):
    """An old spelling of an option: stores the value under the new option's name and warns on stderr."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: warning: {option_string} is deprecated; use --{self.dest.replace('_', '-')}",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def flag_spelling(args: argparse.Namespace) -> Callable[[Argument], str]:
    """How a command spells an argument named in a library error: its flag (``--reset-head``), with the value
    where it is not a switch (``--resume RUN``).

    A command names the flags whose Python argument has another name in ``set_defaults(flags={...})``.
    """
    flags = getattr(args, "flags", {})

    def spell(argument: Argument) -> str:
        flag = flags.get(argument.name, f"--{argument.name.replace('_', '-')}")
        if not argument.has_value or argument.value is True:
            return flag
        return f"{flag} {argument.value}"

    return spell


def options_of(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed options of a command, without the parser's own entries."""
    return {k: v for k, v in vars(args).items() if k not in COMMAND_KEYS}


def json_object(text: str) -> dict[str, Any]:
    """A JSON object (``{...}``) from the command line."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"embed_dim\": 48}}', got {text!r}")
    return value


def _bounded_int(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


positive_int = _bounded_int(1)
non_negative_int = _bounded_int(0)
USAGE_ERROR = 2  # exit status of bad input, as argparse's


def positive_float(text: str) -> float:
    """A number above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads`` (default: the cores this process may use, less its data workers)."""
    parser.add_argument("--threads", type=positive_int, help="intra-op CPU threads (default: the cores this process "
                                                              "may use, by affinity and cgroup quota, less its data "
                                                              "workers; OMP_NUM_THREADS also sets it)")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device`` (default: cuda where available, else cpu)."""
    parser.add_argument("--device", help=f"cpu, cuda or cuda:N (default {default_device()}); torchrun processes use "
                                         "cuda:LOCAL_RANK")


def add_amp_arguments(parser: argparse.ArgumentParser) -> None:
    """``--amp`` and ``--amp-dtype``."""
    parser.add_argument("--amp", action="store_true", default=None,
                        help="mixed precision: bfloat16 on CPU, float16 (with a grad scaler in training) on CUDA")
    parser.add_argument("--amp-dtype", choices=sorted(AMP_DTYPES), help="override the mixed-precision dtype")


def add_run_arguments(parser: argparse.ArgumentParser, defaults: RunOptions) -> None:
    """The :class:`~boat_vit.engine.RunOptions` of every training command."""
    add_amp_arguments(parser)
    add_device_argument(parser)
    add = parser.add_argument
    add("--seed", type=int, help=f"seed of weights, data order and augmentation (default {defaults.seed})")
    add("--workers", type=non_negative_int, help=f"data loading processes per training process (default: the "
                                                f"preset's, else {defaults.workers})")
    add_threads_argument(parser)
    add("--resume", help="continue a run from its run directory or a last.pth checkpoint, with the options it "
                         "started with (only run options such as --workers, --threads, --device may change)")
    add("--overwrite", action="store_true", default=None, help="start afresh in an --output folder that holds a "
                                                               "run (its files are replaced as the new run writes)")
    add("--no-progress", dest="progress", action="store_false", default=None, help="no progress bars")


def add_model_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--amp``, ``--amp-dtype`` and ``--threads`` of a command that runs a trained model."""
    add_device_argument(parser)
    add_amp_arguments(parser)
    add_threads_argument(parser)


def add_backbone_arguments(parser: argparse.ArgumentParser, defaults: Any, pretrained_help: Optional[str] = None,
                           kwargs_example: str = '{"fsla_stages": false}') -> None:
    """The backbone of a dense task's training command: ``--backbone``, ``--backbone-kwargs``,
    ``--backbone-weights``, ``--pretrained`` (where the task takes it: ``pretrained_help``) and
    ``--partial-weights``."""
    add = parser.add_argument
    add("--backbone", help=f"timm backbone with strides 4/8/16/32 (default {defaults.backbone})")
    add("--backbone-kwargs", type=json_object, help=f"JSON keyword arguments for the backbone, e.g. '{kwargs_example}'")
    add("--backbone-weights", help="initial backbone weights: released BOAT weights as downloaded, a safetensors "
                                   "file, a boat-vit classification checkpoint (best.pth) or a task run's backbone")
    weights = "--backbone-weights"
    if pretrained_help is not None:
        add("--pretrained", action="store_true", default=None, help=pretrained_help)
        weights += " or --pretrained"
    add("--partial-weights", action="store_true", default=None, help=f"with {weights}: accept a file that gives "
                                                                     "less than half of the backbone's weights")


def train_command(args: argparse.Namespace, task: str, resolve: Callable, train: Callable) -> dict:
    """Runs a training command: its options through the task's ``resolve`` (a resumed ``task`` run's checkpoint
    read once, here), then ``train``; returns the run's summary."""
    options = options_of(args)
    resumed = RunCheckpoint.read(options["resume"], task=task) if options.get("resume") else None
    return train(resolve(options, resumed), resumed)


@contextmanager
def distributed_command(args: argparse.Namespace) -> Iterator[Distributed]:
    """The processes of a command that ``torchrun`` may start several times (``--device``, ``--threads`` and
    ``--workers`` of each), shut down at the end."""
    world = setup_distributed(args.device or default_device())
    try:
        set_threads(args.threads, args.workers, world.local_world_size)
        yield world
    finally:
        world.shutdown()


def local_device(args: argparse.Namespace) -> torch.device:
    """The device of a command that runs in this process only (``--device``; ``--threads`` set)."""
    device = parse_device(args.device or default_device())
    set_threads(args.threads)
    return device
