"""What a contender costs: parameters, MACs per image, the MAC-matched width, and training throughput
measured for all contenders in one interleaved run (so that a shared machine's load affects them alike)."""
import math
from typing import Sequence

import torch
import torch.nn as nn

from ..bench import count_macs, time_interleaved
from ..models import create_model
from .design import FAMILY_MODELS

__all__ = ["build_model", "params_and_macs", "match_width", "width_step", "head_dim_scale", "training_throughput"]


def build_model(family: str, kwargs: dict, num_classes: int) -> nn.Module:
    """The family's model with ``kwargs`` (which hold ``img_size``), no drop path."""
    return create_model(FAMILY_MODELS[family], num_classes=num_classes, drop_path_rate=0.0, **kwargs)


def params_and_macs(family: str, kwargs: dict, num_classes: int) -> tuple[int, int]:
    """Parameters and MACs of one forward pass of one image."""
    model = build_model(family, kwargs, num_classes).eval()
    side = kwargs["img_size"]
    return sum(p.numel() for p in model.parameters()), count_macs(model, torch.zeros(1, 3, side, side))


def width_step(num_heads: Sequence[int]) -> int:
    """Smallest embedding step keeping every stage's width (``embed * 2**i``) divisible by its heads."""
    step = 1
    for i, heads in enumerate(num_heads):
        need = heads // math.gcd(heads, 2**i)
        step = step * need // math.gcd(step, need)
    return step


def head_dim_scale(kwargs: dict) -> float:
    """``head_dim ** -0.5`` of a configuration whose head dimension is the same in every stage."""
    head_dims = {kwargs["embed_dim"] * 2**i // heads for i, heads in enumerate(kwargs["num_heads"])}
    if len(head_dims) != 1:
        raise ValueError(f"head dimensions differ between stages ({sorted(head_dims)}): no single FSLA scale")
    return head_dims.pop() ** -0.5


def match_width(family: str, kwargs: dict, num_classes: int, target_macs: int) -> int:
    """The embedding width whose MACs are closest to ``target_macs`` (searching upward from ``kwargs``)."""
    step = width_step(kwargs["num_heads"])
    width = kwargs["embed_dim"]
    best = (abs(params_and_macs(family, kwargs, num_classes)[1] - target_macs), width)
    while True:
        width += step
        macs = params_and_macs(family, dict(kwargs, embed_dim=width), num_classes)[1]
        best = min(best, (abs(macs - target_macs), width))
        if macs >= target_macs:
            return best[1]


def training_throughput(models: dict[str, tuple[str, dict]], num_classes: int, batch_size: int, repeats: int,
                        warmup: int = 1) -> dict[str, tuple[float, float]]:
    """Training images per second of each model (one AdamW step on a random batch), timed interleaved, and its
    throughput relative to the first model (the median of the per-repeat ratios).

    Args:
        models: ``{name: (family, kwargs)}``.
        num_classes: Classes of the heads.
        batch_size: Images per step.
        repeats: Timed steps per model (median taken).
        warmup: Untimed steps per model first.
    """
    torch.manual_seed(0)
    steps = []
    for family, kwargs in models.values():
        model = build_model(family, kwargs, num_classes).train()
        optimizer = torch.optim.AdamW(model.parameters())
        side = kwargs["img_size"]
        images, targets = torch.randn(batch_size, 3, side, side), torch.randint(num_classes, (batch_size,))

        def step(model=model, optimizer=optimizer, images=images, targets=targets):
            loss = nn.functional.cross_entropy(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        steps.append(step)
    timings = time_interleaved(steps, repeats, warmup)
    return {name: (batch_size / timings.median(i), timings.speedup(i, 0)) for i, name in enumerate(models)}
