"""The premise of the long-range task, measured on the model itself: which pixels each final token sees.

A token's receptive field is the set of input pixels its features depend on: the support of the input
gradient of the token's features (random projections of them, in float64). timm's Swin masks attention
across the seams of its shifted windows with a logit of -100 rather than minus infinity, so a masked pair
still has weight ``e**-100`` (about ``4e-44``). Measured on the long-range design's model, such leakage stays
below ``1e-45`` of a token's largest gradient and every real path above ``1e-10``; :data:`RF_TOLERANCE`
lies between the two (the tests check the gap).

The head of the ablation's models averages the final tokens and applies one linear layer. If no final token
sees both digits of a pair, the logit is a sum of terms that each depend on one digit (plus clutter), and
no such sum can tell "same" from "different" for every pair of classes (:mod:`boat_vit.classification.tasks`).
So ``far`` pairs need a path that the windows lack; ``near`` pairs (both in one window) do not.
"""
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

__all__ = ["RF_TOLERANCE", "field_strengths", "receptive_fields", "tokens_seeing", "pair_coverage"]

RF_TOLERANCE = 1e-25  # relative gradient below which a pixel is outside a token's field (module docstring)
PROJECTIONS = 2  # random projections of a token's features whose gradients are combined
_SEED = 0


def field_strengths(model: nn.Module, img_size: int) -> np.ndarray:
    """``(tokens, img_size, img_size)``: each final token's input gradient, relative to its largest.

    Args:
        model: A timm model whose ``forward_features`` returns ``(B, H, W, C)`` tokens (Swin layout); a
            float64 copy in eval mode is measured, the model itself is left as it is.
        img_size: Side of the square input.
    """
    import copy

    model = copy.deepcopy(model).double().eval()
    generator = torch.Generator().manual_seed(_SEED)
    image = torch.randn(1, model.patch_embed.proj.in_channels, img_size, img_size, dtype=torch.float64,
                        generator=generator, requires_grad=True)
    tokens = model.forward_features(image)
    if tokens.ndim != 4:
        raise ValueError(f"expected (B, H, W, C) final tokens, got shape {tuple(tokens.shape)}")
    flat = tokens[0].reshape(-1, tokens.shape[-1])
    fields = []
    for token in flat:
        strength = torch.zeros(img_size, img_size, dtype=torch.float64)
        for _ in range(PROJECTIONS):
            direction = torch.randn(flat.shape[-1], dtype=torch.float64, generator=generator)
            (grad,) = torch.autograd.grad(token @ direction, image, retain_graph=True)
            strength = torch.maximum(strength, grad[0].abs().amax(dim=0))
        fields.append((strength / strength.max()).numpy())
    return np.stack(fields)


def receptive_fields(model: nn.Module, img_size: int, tolerance: float = RF_TOLERANCE) -> np.ndarray:
    """``(tokens, img_size, img_size)`` booleans: the input pixels each final token of ``model`` depends on
    (:func:`field_strengths` above ``tolerance``)."""
    return field_strengths(model, img_size) > tolerance


def tokens_seeing(fields: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """``(tokens,)`` booleans: whose field holds at least one pixel of ``box`` (top, left, bottom, right)."""
    top, left, bottom, right = (int(v) for v in box)
    return fields[:, top:bottom, left:right].any(axis=(1, 2))


def pair_coverage(fields: np.ndarray, boxes: np.ndarray) -> dict[str, np.ndarray]:
    """Per image of ``boxes`` (``(n, 2, 4)``): how many final tokens see both digits.

    Returns:
        ``touching``: tokens whose field holds a pixel of each digit; ``covering``: tokens whose field
        holds both digits whole.
    """
    touching, covering = [], []
    for first, second in boxes:
        touching.append(int((tokens_seeing(fields, first) & tokens_seeing(fields, second)).sum()))
        whole = [fields[:, t:b, l:r].all(axis=(1, 2)) for t, l, b, r in (first, second)]
        covering.append(int((whole[0] & whole[1]).sum()))
    return dict(touching=np.array(touching), covering=np.array(covering))
