"""Throughput, latency, peak memory, parameters and MACs of timm models side by side (``boat-vit bench``).

All models are built in one process and timed in one run (:func:`~boat_vit.bench.time_interleaved`:
warm-up passes of every model, then timed passes round-robin with the order rotating every repeat).
Latency is the median time of one batch; throughput is ``batch / median``; the throughput ratio against the
first model is the median over repeats of the per-repeat ratio. A pass is an inference forward, or with
``train`` a forward, a backward and an AdamW step.

MACs are those of one forward pass of one image (:func:`~boat_vit.bench.count_macs`).

Peak memory is measured for every model in a fresh process that runs the model alone
(:func:`~boat_vit.bench.run_isolated`): one warm-up pass, then the peak is taken over one more pass.

* CUDA: ``torch.cuda.max_memory_allocated`` over that pass: weights, inputs, optimizer state, gradients
  and activations as allocated by PyTorch.
* CPU: the peak resident size during that pass above the resident size of the process before the model
  was created (:func:`~boat_vit.bench.peak_bytes`), so the interpreter and libraries do not count; freed
  blocks go back to the system at once in that process, so the resident size follows what is allocated.
"""
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import timm
import torch
import torch.nn as nn

from ..engine import AMP_DTYPES, amp_dtype_for, parse_device
from ..errors import Argument, ConfigError
from ..models import check_model_name, create_model
from .macs import count_macs
from .memory import peak_bytes, resident_bytes, run_isolated
from .report import Column, markdown_table
from .timing import time_interleaved

__all__ = ["BenchConfig", "MODEL_COLUMNS", "benchmark_models", "describe", "model_table"]

DTYPES = {"float32": torch.float32, **AMP_DTYPES}
DEFAULT_BATCH_SIZE = 8
DEFAULT_WARMUP = 3
DEFAULT_REPEATS = 10
MIB = 2**20


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
        device = parse_device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("CUDA is not available on this machine; use ", Argument("device", "cpu"))


def _create_model(name: str, config: BenchConfig) -> tuple[nn.Module, tuple[int, int]]:
    """The model and its input size; ``img_size`` is a constructor argument (architecture unchanged)."""
    model = create_model(name, **{"img_size": config.img_size, **config.model_kwargs})
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


def peak_memory(name: str, config: BenchConfig) -> int:
    """Peak bytes of one pass of ``name`` run alone in this process (module docstring); run it isolated."""
    device = torch.device(config.device)
    if device.type == "cuda":
        contender = _prepare(name, config)
        contender.step()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        contender.step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    baseline = resident_bytes()  # the process before the model: interpreter and libraries do not count
    contender = _prepare(name, config)
    contender.step()
    return peak_bytes(contender.step, baseline)


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
    contenders = [_prepare(name, config) for name in names]
    macs = [_macs_per_image(contender, config) for contender in contenders]
    timings = time_interleaved([c.step for c in contenders], config.repeats, config.warmup, torch.device(config.device))
    shapes = [(c.input_size, c.params) for c in contenders]
    del contenders  # free the memory before the measuring processes run

    memory = [run_isolated(peak_memory, name, config, threads=torch.get_num_threads()) / MIB
              if config.measure_memory else None for name in names]
    rows = []
    for index, (name, (input_size, params), count, peak) in enumerate(zip(names, shapes, macs, memory)):
        latency = timings.median(index)
        rows.append(dict(
            model=name, input_size=f"{input_size[0]}x{input_size[1]}", batch_size=config.batch_size,
            params=params, gmacs=count / 1e9, throughput=config.batch_size / latency, latency_ms=latency * 1e3,
            peak_memory_mib=peak, throughput_ratio=timings.speedup(index), gmacs_ratio=count / macs[0],
            params_ratio=params / shapes[0][1], memory_ratio=peak / memory[0] if peak is not None and memory[0] else None,
        ))
    return rows


MODEL_COLUMNS: tuple[Column, ...] = (
    ("model", "model", "{}"),
    ("input_size", "input", "{}"),
    ("params", "params (M)", lambda value: f"{value / 1e6:.2f}"),
    ("gmacs", "GMACs", "{:.2f}"),
    ("throughput", "img/s", "{:.1f}"),
    ("latency_ms", "ms/batch", "{:.1f}"),
    ("peak_memory_mib", "peak MiB", "{:.0f}"),
    ("throughput_ratio", "img/s ratio", "{:.2f}x"),
    ("gmacs_ratio", "GMACs ratio", "{:.2f}x"),
    ("memory_ratio", "memory ratio", "{:.2f}x"),
)


def model_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`benchmark_models` as a markdown table; ratios are against the first row."""
    return markdown_table(rows, MODEL_COLUMNS)


def describe(config: BenchConfig, info: dict[str, Any]) -> str:
    """One line: mode, batch, precision, extras, machine, library versions and date."""
    from .report import machine_line

    precision = config.dtype + (f" + autocast {config.amp_dtype or 'default'}" if config.amp else "")
    extras = [flag for flag, on in (("compiled", config.compile), ("channels-last", config.channels_last)) if on]
    return (f"{'training step' if config.train else 'inference'}, batch {config.batch_size}, {precision}"
            f"{', ' + ', '.join(extras) if extras else ''}; {machine_line(info)}; torch {info['torch']}, "
            f"timm {info['timm']}; {info['date']}")
