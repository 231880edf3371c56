"""Throughput, latency, peak memory, parameters and MACs of timm models side by side: ``boat-vit bench``.

All models are built in one process and timed in one run. After warm-up passes of every model, the timed
passes go round-robin over the models (the order rotates every repeat), so drift of a shared machine
(other jobs, clocks, temperature) hits all models alike. Latency is the median time of one batch;
throughput is ``batch / median``; the throughput ratio against the first model is the median over repeats
of the per-repeat ratio. A pass is an inference forward, or with ``train`` a forward, a backward and an
AdamW step.

MACs are those of one forward pass of one image, counted by ``torch.utils.flop_counter`` (FLOPs / 2);
PyTorch's CPU fused attention kernel is counted like its CUDA kernels (two matrix products).

Peak memory is measured for every model in a fresh process that runs the model alone: one warm-up pass,
then the peak is taken over one more pass.

* CUDA: ``torch.cuda.max_memory_allocated`` over that pass: weights, inputs, optimizer state, gradients
  and activations as allocated by PyTorch.
* CPU: the peak resident set size during that pass (Linux ``VmHWM``, reset just before it through
  ``/proc/self/clear_refs``) minus the resident size of the process before the model was created, so
  the interpreter and libraries do not count. glibc's adaptive ``malloc`` would keep freed buffers
  resident, so the process runs with a fixed mmap threshold (``MALLOC_MMAP_THRESHOLD_``): large tensors
  go back to the system when freed. Where ``clear_refs`` is not available the peak is the process's
  lifetime ``ru_maxrss``, an upper bound.
"""
import argparse
import csv
import ctypes
import ctypes.util
import dataclasses
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import timm
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .evaluate import amp_dtype_for
from .factory import check_model_name

__all__ = [
    "BenchConfig",
    "benchmark_models",
    "count_macs",
    "measure_peak_memory",
    "environment",
    "machine_line",
    "markdown_table",
    "write_csv",
    "write_json",
    "resident_bytes",
    "reset_peak_resident",
    "retain_freed_memory",
    "add_allocator_option",
    "use_allocator",
]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEFAULT_BATCH_SIZE = 8
DEFAULT_WARMUP = 3
DEFAULT_REPEATS = 10
MIB = 2**20
KIB = 1024
# glibc: allocations above this many bytes are mmapped and unmapped on free (fixed, not adaptive)
MEMORY_MMAP_THRESHOLD = 1 << 16
_ALLOCATOR_HELP = (
    "retain (default): keep freed memory in the process (boat_vit.bench.retain_freed_memory), so no contender pays "
    "page faults for recycled buffers; glibc: the C library's default, whose page-fault costs depend on what the "
    "process allocated before"
)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)
_MALLOPT_MAX = 2**31 - 1  # mallopt takes an int
_RESET_PEAK_RSS = "5"  # written to /proc/self/clear_refs: peak RSS := current RSS (Linux >= 4.0)
_MEMORY_CHILD = "from boat_vit.bench import _memory_child_main; _memory_child_main()"


@dataclass
class BenchConfig:
    """How every model is run.

    Attributes:
        batch_size: Images per pass.
        img_size: Square input size, passed to the model's constructor where it takes one (a Swin keeps its
            window size); ``None`` uses each model's own (its ``img_size`` keyword, else its pretrained config).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: Dtype of weights and inputs (``float32``, ``float16``, ``bfloat16``).
        amp: Autocast (mixed precision); ``amp_dtype`` defaults to bfloat16 on CPU, float16 on CUDA.
        amp_dtype: ``float16`` or ``bfloat16`` for ``amp``.
        compile: Run the models through ``torch.compile`` (compiled during the warm-up).
        channels_last: Weights and inputs in channels-last memory format.
        train: Time a training step (forward, backward, AdamW step) instead of an inference forward.
        warmup: Untimed passes per model before timing.
        repeats: Timed passes per model.
        model_kwargs: Keyword arguments for every ``timm.create_model`` call.
        measure_memory: Measure peak memory (one fresh process per model).
        seed: Seed of weights and inputs.
    """

    batch_size: int = DEFAULT_BATCH_SIZE
    img_size: Optional[int] = None
    device: str = "cpu"
    dtype: str = "float32"
    amp: bool = False
    amp_dtype: Optional[str] = None
    compile: bool = False
    channels_last: bool = False
    train: bool = False
    warmup: int = DEFAULT_WARMUP
    repeats: int = DEFAULT_REPEATS
    model_kwargs: dict = field(default_factory=dict)
    measure_memory: bool = True
    seed: int = 0

    def check(self) -> None:
        """Raises a ValueError for settings that cannot run."""
        if self.batch_size < 1 or self.repeats < 1 or self.warmup < 0:
            raise ValueError(f"need batch_size >= 1, repeats >= 1, warmup >= 0; got {self.batch_size}, "
                             f"{self.repeats}, {self.warmup}")
        if self.compile and self.warmup < 1:
            raise ValueError("compile needs warmup >= 1 (compilation happens in the warm-up)")
        if self.img_size is not None and self.img_size < 1:
            raise ValueError(f"img_size must be positive, got {self.img_size}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.amp_dtype is not None and self.amp_dtype not in ("float16", "bfloat16"):
            raise ValueError(f"amp_dtype must be float16 or bfloat16, got {self.amp_dtype!r}")
        try:
            device = torch.device(self.device)
        except RuntimeError:
            device = None
        if device is None or device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("CUDA is not available on this machine; use --device cpu")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_fused_attention_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """FLOPs of ``aten._scaled_dot_product_flash_attention_for_cpu``: ``q @ k^T`` and ``weights @ v``."""
    *lead, queries, head_dim = query_shape
    keys, value_dim = key_shape[-2], value_shape[-1]
    rows = 1
    for size in lead:
        rows *= size
    return 2 * rows * queries * keys * (head_dim + value_dim)


_EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_fused_attention_flops}


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward of ``model`` on ``example`` (FLOPs / 2, module docstring)."""
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS)
    with torch.no_grad(), counter:
        model(example)
    return counter.get_total_flops() // 2


def _create_model(name: str, config: BenchConfig) -> tuple[nn.Module, tuple[int, int]]:
    """The model and its input size; ``img_size`` is a constructor argument (architecture unchanged)."""
    kwargs = dict(config.model_kwargs)
    if config.img_size is not None:
        kwargs["img_size"] = config.img_size
    try:
        model = timm.create_model(name, **kwargs)
    except TypeError:
        if config.img_size is None:
            raise
        del kwargs["img_size"]  # a model of any input size (e.g. a convolutional network)
        model = timm.create_model(name, **kwargs)
    size = config.img_size or config.model_kwargs.get("img_size")
    if size is not None:
        return model, timm.layers.to_2tuple(size)
    return model, tuple(timm.data.resolve_model_data_config(model)["input_size"][1:])


@dataclass
class _Contender:
    """One model, ready to run: ``step`` runs one (untimed) pass."""

    name: str
    model: nn.Module
    input_size: tuple[int, int]
    params: int
    step: Callable[[], None]


def _prepare(name: str, config: BenchConfig) -> _Contender:
    """Builds ``name`` on the device in the configured dtype and format; returns its pass function."""
    device, dtype = torch.device(config.device), DTYPES[config.dtype]
    torch.manual_seed(config.seed)
    model, input_size = _create_model(name, config)
    params = sum(p.numel() for p in model.parameters())
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(device=device, dtype=dtype, memory_format=memory_format)
    images = torch.randn(config.batch_size, 3, *input_size, device=device, dtype=dtype)
    images = images.contiguous(memory_format=memory_format)
    runner = torch.compile(model) if config.compile else model
    amp_dtype = amp_dtype_for(device, config.amp, config.amp_dtype)
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype is not None else nullcontext

    if config.train:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters())

        def step() -> None:
            with autocast():
                loss = runner(images).float().square().mean()  # a stand-in loss of negligible cost
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    else:
        model.eval()

        def step() -> None:
            with torch.inference_mode(), autocast():
                runner(images)

    return _Contender(name, model, input_size, params, step)


def _macs_per_image(contender: _Contender, config: BenchConfig) -> int:
    """MACs of one image through the eager model in eval mode (the training mode is restored after)."""
    model = contender.model
    example = torch.randn(1, 3, *contender.input_size, device=config.device, dtype=DTYPES[config.dtype])
    was_training = model.training
    macs = count_macs(model.eval(), example)
    model.train(was_training)
    return macs


def _warm_up(contenders: Sequence[_Contender], passes: int) -> None:
    for _ in range(passes):
        for contender in contenders:
            contender.step()


def _timed(step: Callable[[], None], device: torch.device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    step()
    _synchronize(device)
    return time.perf_counter() - start


def resident_bytes(peak: bool = False) -> int:
    """This process's current (``VmRSS``) or peak (``VmHWM``) resident set size in bytes (Linux)."""
    key = "VmHWM:" if peak else "VmRSS:"
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) * KIB
    raise OSError(f"/proc/self/status has no {key}")


def reset_peak_resident() -> bool:
    """Sets this process's peak resident size to its current size; False where the system cannot (not Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write(_RESET_PEAK_RSS)
        resident_bytes(peak=True)
    except OSError:
        return False
    return True


def retain_freed_memory() -> bool:
    """Makes glibc ``malloc`` keep freed memory for reuse instead of returning it to the system.

    By default glibc unmaps large freed blocks and trims its heap once the free top passes an adaptive
    threshold. A CPU pass that allocates tens of MB of temporaries then pays a page fault per 4 KiB it
    touches, on some calls and not others, depending on what the process allocated before: timings swing
    by a third between runs. This fixes both thresholds high for the rest of the process (as the
    ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` variables would), the steady state of a
    caching allocator such as jemalloc or tcmalloc. Memory measurements (:func:`measure_peak_memory`) run
    in their own processes and are unaffected.

    Returns:
        False where the C library has no ``mallopt`` (not glibc); nothing is changed then.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MALLOPT_MAX) and mallopt(_M_TRIM_THRESHOLD, _MALLOPT_MAX))


def add_allocator_option(parser: argparse.ArgumentParser) -> None:
    """Adds ``--allocator retain|glibc`` (default ``retain``) to a benchmark's command line."""
    parser.add_argument("--allocator", choices=["retain", "glibc"], default="retain", help=_ALLOCATOR_HELP)


def use_allocator(choice: str) -> str:
    """Applies an ``--allocator`` choice; returns the one in effect (``glibc`` where ``retain`` is unavailable)."""
    if choice == "retain":
        if retain_freed_memory():
            return "retain"
        print("note: --allocator retain needs glibc; running with the default allocator", file=sys.stderr)
    return "glibc"


def _lifetime_peak_rss_bytes() -> int:
    """``ru_maxrss`` in bytes: it is in KiB on Linux, bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * KIB


def _peak_memory_here(name: str, config: BenchConfig) -> int:
    """Peak bytes of one pass of ``name`` run alone in this (fresh) process (module docstring)."""
    device = torch.device(config.device)
    if device.type == "cuda":
        contender = _prepare(name, config)
        contender.step()
        _synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        contender.step()
        _synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    resettable = reset_peak_resident()
    baseline = resident_bytes() if resettable else _lifetime_peak_rss_bytes()
    contender = _prepare(name, config)
    contender.step()
    if not resettable:
        contender.step()
        return _lifetime_peak_rss_bytes() - baseline
    reset_peak_resident()
    contender.step()
    return resident_bytes(peak=True) - baseline


def _memory_child_main() -> None:
    """Entry of the memory-measuring process: a JSON request on stdin, the peak bytes on stdout."""
    request = json.load(sys.stdin)
    torch.set_num_threads(request["threads"])
    config = BenchConfig(**request["config"])
    torch.zeros(1).add_(1)  # initialise the runtime before the baseline
    print(json.dumps(_peak_memory_here(request["name"], config)))


def measure_peak_memory(name: str, config: BenchConfig) -> int:
    """Peak bytes of one pass of ``name``, measured in a fresh process (module docstring)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MEMORY_MMAP_THRESHOLD))
    request = json.dumps(dict(name=name, config=dataclasses.asdict(config), threads=torch.get_num_threads()))
    result = subprocess.run([sys.executable, "-c", _MEMORY_CHILD], input=request, env=env, capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise RuntimeError(f"memory measurement of {name} failed:\n{result.stderr[-2000:]}")
    return int(result.stdout.strip().splitlines()[-1])


def environment(config: BenchConfig) -> dict[str, Any]:
    """Where and when the numbers were measured: device name, threads, library versions, date."""
    device = torch.device(config.device)
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as cpuinfo:
                device_name = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return dict(device=str(device), device_name=device_name, threads=torch.get_num_threads(),
                cpu_count=os.cpu_count(), torch=torch.__version__, timm=timm.__version__,
                python=platform.python_version(), date=datetime.date.today().isoformat())


def benchmark_models(names: Sequence[str], config: Optional[BenchConfig] = None) -> list[dict[str, Any]]:
    """Measures every model in one interleaved run (module docstring).

    Args:
        names: Registered timm model names (ours are registered by ``import boat_vit``).
        config: How to run them; defaults to :class:`BenchConfig`'s defaults.

    Returns:
        One row per model, in order: ``model``, ``input_size``, ``batch_size``, ``params``, ``gmacs`` (per
        image), ``throughput`` (images/s), ``latency_ms`` (median per batch), ``peak_memory_mib`` (``None``
        when not measured), and ``throughput_ratio``, ``gmacs_ratio``, ``params_ratio``,
        ``memory_ratio`` against the first model.
    """
    config = config or BenchConfig()
    config.check()
    if not names:
        raise ValueError("give at least one model name")
    for name in names:
        check_model_name(name)
    device = torch.device(config.device)
    contenders = [_prepare(name, config) for name in names]
    macs = [_macs_per_image(contender, config) for contender in contenders]
    _warm_up(contenders, config.warmup)
    seconds = [[0.0] * config.repeats for _ in contenders]
    for repeat in range(config.repeats):
        for offset in range(len(contenders)):
            index = (repeat + offset) % len(contenders)
            seconds[index][repeat] = _timed(contenders[index].step, device)
    shapes = [(c.input_size, c.params) for c in contenders]
    del contenders  # free the memory before the measuring processes run

    memory = [measure_peak_memory(name, config) / MIB if config.measure_memory else None for name in names]
    rows = []
    for name, (input_size, params), times, count, peak in zip(names, shapes, seconds, macs, memory):
        latency = statistics.median(times)
        rows.append(dict(
            model=name, input_size=f"{input_size[0]}x{input_size[1]}", batch_size=config.batch_size,
            params=params, gmacs=count / 1e9, throughput=config.batch_size / latency, latency_ms=latency * 1e3,
            peak_memory_mib=peak,
            throughput_ratio=statistics.median(first / own for first, own in zip(seconds[0], times)),
            gmacs_ratio=count / macs[0], params_ratio=params / shapes[0][1],
            memory_ratio=peak / memory[0] if peak is not None and memory[0] else None,
        ))
    return rows


_COLUMNS = (  # (row key, table heading, format)
    ("model", "model", "{}"),
    ("input_size", "input", "{}"),
    ("params", "params (M)", "{:.2f}"),
    ("gmacs", "GMACs", "{:.2f}"),
    ("throughput", "img/s", "{:.1f}"),
    ("latency_ms", "ms/batch", "{:.1f}"),
    ("peak_memory_mib", "peak MiB", "{:.0f}"),
    ("throughput_ratio", "img/s ratio", "{:.2f}x"),
    ("gmacs_ratio", "GMACs ratio", "{:.2f}x"),
    ("memory_ratio", "memory ratio", "{:.2f}x"),
)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The results as a markdown table; ratios are against the first row."""
    lines = ["| " + " | ".join(heading for _, heading, _ in _COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for row in rows:
        cells = []
        for key, _, fmt in _COLUMNS:
            value = row[key]
            if key == "params":
                value = value / 1e6
            cells.append("n/a" if value is None else fmt.format(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(rows: Sequence[dict[str, Any]], path: str) -> None:
    """One line per model, every row key a column."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_json(rows: Sequence[dict[str, Any]], config: BenchConfig, path: str) -> None:
    """``{"environment": ..., "config": ..., "results": rows}``."""
    with open(path, "w") as f:
        json.dump(dict(environment=environment(config), config=dataclasses.asdict(config), results=list(rows)), f,
                  indent=2)


def machine_line(info: dict[str, Any]) -> str:
    """``device name (device, N threads)`` from :func:`environment`."""
    threads = f"{info['threads']} thread" + ("s" if info["threads"] > 1 else "")
    return f"{info['device_name']} ({info['device']}, {threads})"


def _describe(config: BenchConfig, info: dict[str, Any]) -> str:
    precision = config.dtype + (f" + autocast {config.amp_dtype or 'default'}" if config.amp else "")
    extras = [flag for flag, on in (("compiled", config.compile), ("channels-last", config.channels_last)) if on]
    return (f"{'training step' if config.train else 'inference'}, batch {config.batch_size}, {precision}"
            f"{', ' + ', '.join(extras) if extras else ''}; {machine_line(info)}; torch {info['torch']}, "
            f"timm {info['timm']}; {info['date']}")


def run_from_args(args: argparse.Namespace) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    use_allocator(args.allocator)
    config = BenchConfig(
        batch_size=args.batch_size, img_size=args.img_size, device=args.device, dtype=args.dtype, amp=args.amp,
        amp_dtype=args.amp_dtype, compile=args.compile, channels_last=args.channels_last, train=args.train,
        warmup=args.warmup, repeats=args.repeats, model_kwargs=args.model_kwargs or {},
        measure_memory=not args.no_memory, seed=args.seed,
    )
    rows = benchmark_models(args.models, config)
    print(_describe(config, environment(config)))
    print(f"{config.warmup} warm-up and {config.repeats} timed passes per model, interleaved; ratios against "
          f"{rows[0]['model']}\n")
    print(markdown_table(rows))
    if args.csv:
        write_csv(rows, args.csv)
    if args.json:
        write_json(rows, config, args.json)
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="throughput, latency, memory, params and MACs of models",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("models", nargs="+", metavar="MODEL", help="timm model names, e.g. swin_tiny_patch4_window7_224 "
                                                    "boat_swin_tiny_patch4_window7_224")
    add("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help=f"images per pass (default {DEFAULT_BATCH_SIZE})")
    add("--img-size", type=int, help="square input size, given to each model's constructor where it takes one "
                                     "(default: each model's own)")
    add("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of weights and inputs (default float32)")
    add("--amp", action="store_true", help="autocast: bfloat16 on CPU, float16 on CUDA")
    add("--amp-dtype", choices=["float16", "bfloat16"], help="override the autocast dtype")
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")
    add("--threads", type=int, help="CPU threads (torch.set_num_threads; default: PyTorch's choice). On a shared "
                                    "machine 1 thread avoids stalls on descheduled worker threads")
    add_allocator_option(parser)
    add("--compile", action="store_true", help="run the models through torch.compile")
    add("--channels-last", action="store_true", help="channels-last weights and inputs")
    add("--train", action="store_true", help="time forward + backward + AdamW step instead of inference")
    add("--warmup", type=int, default=DEFAULT_WARMUP, help=f"untimed passes per model (default {DEFAULT_WARMUP})")
    add("--repeats", type=int, default=DEFAULT_REPEATS, help=f"timed passes per model (default {DEFAULT_REPEATS})")
    add("--model-kwargs", type=json.loads, help='JSON keyword arguments for every model, e.g. \'{"embed_dim": 48}\'')
    add("--no-memory", action="store_true", help="skip the peak-memory measurement (one process per model)")
    add("--seed", type=int, default=0, help="seed of weights and inputs (default 0)")
    add("--csv", help="also write the rows to this CSV file")
    add("--json", help="also write environment, settings and rows to this JSON file")
    parser.set_defaults(func=run_from_args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .cli import main as cli_main

    return cli_main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
