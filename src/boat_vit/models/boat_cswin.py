"""BOAT-CSWin: CSWin Transformers with feature-space local attention, as timm models.

CSWin (Dong et al., arXiv 2107.00652) attends inside cross-shaped windows: half of the heads of a block
attend inside vertical stripes of ``split_size`` columns, the other half inside horizontal stripes of
``split_size`` rows, each with a locally-enhanced positional encoding (LePE: a 3x3 depthwise convolution of
the values of the stripe, added to the attention output). A 7x7 stride-4 convolution embeds the image and a
3x3 stride-2 convolution merges tokens between stages. The last stage has one branch attending over its
whole map.

BOAT (Yu et al., arXiv 2201.13027) adds feature-space local attention
(:class:`~boat_vit.layers.FeatureSpaceLocalAttention`, FSLA) to the even blocks (0, 2, 4, ...) of every
stage: ``x = x + drop_path(fsla(norm_fsla(x)))`` after the stripe attention and before the MLP. As in the
released models, this FSLA scales its attention logits by 1.0 rather than ``head_dim ** -0.5``.

Any input size and batch
------------------------
The released code runs only at 224x224 and pairs the images of a batch in the stage-4 FSLA; these models:

* pad the token map to a multiple of the stripe width inside the stripe attention and crop back, as timm's
  Swin pads windows, but padded positions are masked out as keys and hold zero values, so every token
  sees exactly the real tokens of its (possibly shorter) stripe, and the LePE convolution sees the same
  zeros as at any stripe border. A stripe is never wider than the map (``min(split_size, map size)``);
  that is the same computation without the all-padding part.
* give the last stage one window covering the whole map at every input size (at 224 that is the released
  7x7 window; CSWin's own 384 models use the same rule with 12x12 maps).
* run FSLA through its general token-count rule (:func:`boat_vit.clustering.plan_groups`); with at most
  49 tokens (stage 4 at 224) it is one group with no sibling, so an image's output never depends on the
  rest of the batch, and batch 1 and odd batches work.

At 224x224 every computation before the stage-4 FSLA equals the released code; the stage-4 FSLA differs
from it only by the released cross-image pairing, which is a bug.

Deployment
----------
``torch.fx`` traces the models with timm's leaf registry (as timm's and torchvision's feature extraction do):
FSLA is a leaf module, and :func:`stripe_attention` and :func:`check_image` are leaf functions (their padding
and checks are Python control flow on the map size); everything else is traced. ``torch.jit.script``
compiles the models, which then run at any batch and size with results identical to eager PyTorch.
``torch.export`` and ONNX (:mod:`boat_vit.export`) trace them with a dynamic batch for one image size.

Weights
-------
``timm.create_model("boat_cswin_tiny_224", pretrained=True)`` downloads the released checkpoint
(github.com/mahaoyuHKU/pytorch-boat) into timm's cache and loads it, EMA weights first (:mod:`._pretrained`); a
local copy loads with ``pretrained_cfg_overlay=dict(file=PATH)`` or :func:`boat_vit.weights.load_weights`.
:func:`checkpoint_filter_fn`, the one conversion of this family, maps the released key layout to this one; plain
Microsoft CSWin checkpoints load too, with the FSLA branches freshly initialised and listed in a warning. A file
must give at least half of the model's weights (the classifier aside); ``pretrained_strict=False`` accepts less.
``checkpoint_path=`` takes files in this model's own layout (``boat-vit convert`` writes them).
"""
import logging
import re
import warnings
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.jit import Final
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    ClassifierHead,
    DropPath,
    Mlp,
    calculate_drop_path_rates,
    get_device_dtype,
    register_notrace_function,
    to_2tuple,
    trunc_normal_,
)
from timm.models import checkpoint_seq, generate_default_cfgs, register_model

from ..clustering import format_shape
from ..layers import FeatureSpaceLocalAttention
from ..weights import fill_missing_from_model
from ._metadata import BOAT_PAPER_CFG, released_weights
from ._pretrained import build_boat_model, load_pretrained_file
from ._stages import per_stage, stage_indices

__all__ = [
    "BoatCSWin",
    "BoatCSWinBlock",
    "ConvStem",
    "CrossShapedAttention",
    "checkpoint_filter_fn",
    "stripe_attention",
]

_logger = logging.getLogger(__name__)

_BoolOrBools = Union[bool, Sequence[bool]]

# The released BOAT-CSWin builds its FSLA with ``qk_scale=qkv_bias`` (True), so the logit scale is 1.0.
RELEASED_FSLA_SCALE = 1.0
# CSWin's stem (``stage1_conv_embed``): overlapping 7x7 patches every 4 pixels
STEM_KERNEL, STEM_STRIDE, STEM_PADDING = 7, 4, 2
# token merging between stages: a 3x3 convolution of stride 2
MERGE_KERNEL, MERGE_STRIDE = 3, 2
# LePE: a depthwise convolution of the values inside each stripe
LEPE_KERNEL = 3


class CrossShapedAttention(nn.Module):
    """Cross-shaped window self-attention with LePE, on ``(B, H, W, C)`` token maps.

    With two branches the channels (and heads) are split in halves: the first half attends inside vertical
    stripes (full height, ``split_size`` columns), the second inside horizontal stripes (``split_size`` rows,
    full width). With one branch all heads attend over the whole map. Each branch adds a 3x3 depthwise
    convolution of its values, computed inside each stripe (zero beyond the stripe's borders).

    State-dict keys: ``qkv.*``, ``lepe.{branch}.*``, ``proj.*``.
    """

    whole_map: Final[bool]  # one branch; a TorchScript constant, so only the branches in use are compiled

    def __init__(
        self,
        dim: int,
        num_heads: int,
        split_size: int = 7,
        num_branches: int = 2,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if num_branches not in (1, 2):
            raise ValueError(f"num_branches must be 1 or 2, got {num_branches}")
        if split_size < 1:
            raise ValueError(f"split_size must be >= 1, got {split_size}")
        if num_heads % num_branches or dim % num_heads:
            raise ValueError(
                f"dim ({dim}) must be a multiple of num_heads ({num_heads}), and num_heads of the number of "
                f"branches ({num_branches})"
            )
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.split_size = split_size
        self.num_branches = num_branches
        self.whole_map = num_branches == 1
        self.scale = self.head_dim**-0.5
        self.attn_drop = attn_drop
        branch_dim = dim // num_branches
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.lepe = nn.ModuleList(
            nn.Conv2d(branch_dim, branch_dim, LEPE_KERNEL, padding=LEPE_KERNEL // 2, groups=branch_dim, **dd)
            for _ in range(num_branches)
        )
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, split_size={self.split_size}, branches={self.num_branches}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        qkv = self.qkv(x).view(batch, height, width, 3, channels)
        heads = self.num_heads // self.num_branches
        dropout_p = self.attn_drop if self.training else 0.0
        if self.whole_map:
            # one window over the whole map: a stripe as tall as the map
            out = stripe_attention(qkv, self.lepe[0].weight, self.lepe[0].bias, height, heads, self.scale, dropout_p)
        else:
            half = channels // 2
            split = self.split_size
            # vertical stripes (full height, `split` columns) are horizontal stripes of the transposed map
            vertical = stripe_attention(
                qkv[..., :half].transpose(1, 2),
                self.lepe[0].weight.transpose(-1, -2),
                self.lepe[0].bias,
                split,
                heads,
                self.scale,
                dropout_p,
            ).transpose(1, 2)
            # horizontal stripes: `split` rows, full width
            horizontal = stripe_attention(
                qkv[..., half:], self.lepe[1].weight, self.lepe[1].bias, split, heads, self.scale, dropout_p
            )
            out = torch.cat([vertical, horizontal], dim=-1)
        return self.proj_drop(self.proj(out))


@register_notrace_function  # FX: the stripe padding is Python control flow on the map size
def stripe_attention(
    qkv: torch.Tensor,
    lepe_weight: torch.Tensor,
    lepe_bias: Optional[torch.Tensor],
    rows: int,
    num_heads: int,
    scale: float,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Attention inside horizontal stripes of ``min(rows, H)`` rows x full width, plus LePE.

    Stripes are whole rows of the row-major token map, so the stripes of an unpadded map are views; the last
    stripe is padded with zero tokens (masked as keys) when the stripe height does not divide ``H``.

    Args:
        qkv: ``(B, H, W, 3, c)`` queries, keys and values, any strides.
        lepe_weight: ``(c, 1, k, k)`` depthwise LePE kernel.
        lepe_bias: ``(c,)`` LePE bias or ``None``.
        rows: Stripe height; a stripe is never taller than the map.
        num_heads: Heads sharing the ``c`` channels.
        scale: Attention logit scale.
        dropout_p: Dropout on attention weights.

    Returns:
        ``(B, H, W, c)``.
    """
    batch, height, width, channels = qkv.shape[0], qkv.shape[1], qkv.shape[2], qkv.shape[4]
    rows = min(rows, height)
    head_dim = channels // num_heads
    pad = -height % rows
    if pad:
        # zeros: padded values add nothing to LePE (as at any stripe border); padded keys are masked
        qkv = F.pad(qkv, (0, 0, 0, 0, 0, 0, 0, pad))
    padded = height + pad
    num_stripes, stripe_len = batch * (padded // rows), rows * width
    # (stripes, tokens, 3, heads, d): a view when possible (rows of a row-major map), else one copy
    qkv = qkv.reshape(num_stripes, stripe_len, 3, num_heads, head_dim)
    q, k, v = qkv.unbind(2)

    mask: Optional[torch.Tensor] = None
    if pad:
        valid = torch.arange(padded, device=qkv.device).view(-1, rows, 1) < height
        valid = valid.expand(-1, -1, width).reshape(1, -1, 1, 1, stripe_len)
        mask = valid.expand(batch, -1, -1, -1, -1).reshape(num_stripes, 1, 1, stripe_len)
    attn = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, dropout_p=dropout_p, scale=scale
    )  # (stripes, heads, tokens, d)

    # LePE: each stripe is an image of `rows` x W pixels; channels-last, so the stripes are a free view
    values = qkv[:, :, 2].reshape(num_stripes, rows, width, channels)
    lepe = F.conv2d(
        values.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last),
        lepe_weight,
        lepe_bias,
        padding=lepe_weight.shape[-1] // 2,
        groups=channels,
    ).permute(0, 2, 3, 1)  # (stripes, rows, W, c)

    # in place on the convolution's output (its backward does not need it)
    shape = [batch, padded, width, channels]
    out = lepe.reshape(shape).add_(attn.transpose(1, 2).reshape(shape))
    return out[:, :height] if pad else out


class BoatCSWinBlock(nn.Module):
    """CSWin block with an optional FSLA branch, on ``(B, H, W, C)`` token maps.

    ``x + drop_path(attn(norm1(x)))``, then (with ``fsla``) ``x + drop_path(fsla(norm_fsla(x)))``, then
    ``x + drop_path(mlp(norm2(x)))``. ``fsla_grouping`` is FSLA's grouping rule
    (:class:`~boat_vit.layers.FeatureSpaceLocalAttention`).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        split_size: int = 7,
        num_branches: int = 2,
        fsla: bool = True,
        fsla_qk_scale: Optional[float] = RELEASED_FSLA_SCALE,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: type = nn.GELU,
        norm_layer: type = nn.LayerNorm,
        fsla_grouping: str = "content",
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = norm_layer(dim, **dd)
        self.attn = CrossShapedAttention(
            dim, num_heads, split_size, num_branches, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, **dd
        )
        if fsla:
            self.norm_fsla = norm_layer(dim, **dd)  # released name: norm3
            # as released: FSLA's output dropout is the attention dropout rate
            self.fsla = FeatureSpaceLocalAttention(
                dim, num_heads, qkv_bias=qkv_bias, qk_scale=fsla_qk_scale, attn_drop=attn_drop, proj_drop=attn_drop,
                grouping=fsla_grouping, **dd,
            )
        else:
            self.norm_fsla = self.fsla = None
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        if self.fsla is not None:
            x = x + self.drop_path(self.fsla(self.norm_fsla(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ConvStem(nn.Module):
    """CSWin's stem: 7x7 stride-4 convolution (padding 2), then LayerNorm; ``(B, C, H, W)`` -> ``(B, H', W', D)``.

    Not timm's ``PatchEmbed``: that one's kernel equals its stride (non-overlapping patches, ``H / 4`` tokens
    high), while CSWin's patches overlap and its map is ``(H - 3) // 4 + 1`` tokens high. Keys ``proj.*``,
    ``norm.*`` (as ``PatchEmbed``'s).
    """

    def __init__(self, in_chans: int, embed_dim: int, norm_layer: type = nn.LayerNorm, device=None, dtype=None):
        super().__init__()
        self.proj = nn.Conv2d(
            in_chans, embed_dim, STEM_KERNEL, stride=STEM_STRIDE, padding=STEM_PADDING, device=device, dtype=dtype
        )
        self.norm = norm_layer(embed_dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class MergeBlock(nn.Module):
    """Token merging: 3x3 stride-2 convolution, then LayerNorm; ``(B, C, H, W)`` -> ``(B, H/2, W/2, C')``."""

    def __init__(self, dim: int, out_dim: int, norm_layer: type = nn.LayerNorm, device=None, dtype=None):
        super().__init__()
        self.conv = nn.Conv2d(
            dim, out_dim, MERGE_KERNEL, stride=MERGE_STRIDE, padding=MERGE_KERNEL // 2, device=device, dtype=dtype
        )
        self.norm = norm_layer(out_dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x).permute(0, 2, 3, 1))


class BoatCSWinStage(nn.Module):
    """Optional merge block, then CSWin blocks (FSLA in the even ones). Outputs ``(B, C, H, W)``.

    Input: ``(B, C, H, W)`` with a merge block (stages 2-4), ``(B, H, W, C)`` without (stage 1, after the
    stem). The output is an NCHW view of channels-last memory, which the next merge convolution reads
    without a copy.
    """

    def __init__(
        self,
        dim: int,
        out_dim: int,
        depth: int,
        num_heads: int,
        split_size: int,
        downsample: bool,
        last_stage: bool,
        fsla: bool,
        fsla_qk_scale: Optional[float],
        mlp_ratio: float,
        qkv_bias: bool,
        proj_drop: float,
        attn_drop: float,
        drop_path: Sequence[float],
        norm_layer: type = nn.LayerNorm,
        fsla_grouping: str = "content",
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.grad_checkpointing = False
        self.downsample = MergeBlock(dim, out_dim, norm_layer, **dd) if downsample else nn.Identity()
        self.blocks = nn.Sequential(
            *[
                BoatCSWinBlock(
                    out_dim,
                    num_heads,
                    split_size,
                    num_branches=1 if last_stage else 2,
                    fsla=fsla and i % 2 == 0,
                    fsla_qk_scale=fsla_qk_scale,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_drop=proj_drop,
                    attn_drop=attn_drop,
                    drop_path=drop_path[i],
                    norm_layer=norm_layer,
                    fsla_grouping=fsla_grouping,
                    **dd,
                )
                for i in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x.permute(0, 3, 1, 2)


class BoatCSWin(nn.Module):
    """BOAT-CSWin: CSWin Transformer with feature-space local attention (arXiv 2201.13027).

    Args:
        img_size: Nominal input size (pretrained cfg, ``strict_img_size``); any size runs.
        in_chans: Input channels.
        num_classes: Classifier outputs; 0 for no classifier.
        global_pool: Pooling of the head, ``'avg'`` as released.
        embed_dim: Channels of stage 1; doubled at every merge.
        depths: Blocks per stage.
        num_heads: Heads per stage; even in the stages with two stripe branches (all but the last).
        split_size: Stripe width per stage (int or one per stage). The last stage attends over its whole map.
        mlp_ratio: MLP hidden width over channels.
        qkv_bias: Bias of the qkv projections (stripe attention and FSLA).
        fsla_stages: Which stages get FSLA in their even blocks: one flag for all, or one per stage. ``False``
            gives a plain CSWin.
        fsla_qk_scale: FSLA logit scale; the released models use 1.0, ``None`` means ``head_dim ** -0.5``.
        fsla_grouping: How FSLA groups tokens: ``'content'`` (BOAT, the default), or the ablation controls
            ``'random'`` (same group layout, tokens assigned at random) and ``'global'`` (one group of all
            tokens: global attention in place of each FSLA layer), ``'norm'`` (same layout, tokens ranked by
            query norm); see
            :class:`~boat_vit.layers.FeatureSpaceLocalAttention`.
        drop_rate: Dropout before the classifier.
        proj_drop_rate: Dropout after attention projections and in the MLP.
        attn_drop_rate: Attention dropout (stripe attention and FSLA; also FSLA's output dropout, as released).
        drop_path_rate: Stochastic depth, rising linearly over all blocks to this rate.
        norm_layer: Normalization layer.
        strict_img_size: Require inputs of exactly ``img_size``.
        fsla: Deprecated spelling of ``fsla_stages``.
    """

    def __init__(
        self,
        img_size: Union[int, Tuple[int, int]] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: int = 64,
        depths: Sequence[int] = (1, 2, 21, 1),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        split_size: Union[int, Sequence[int]] = (1, 2, 7, 7),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        fsla_stages: _BoolOrBools = True,
        fsla_qk_scale: Optional[float] = RELEASED_FSLA_SCALE,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_layer: type = nn.LayerNorm,
        strict_img_size: bool = False,
        fsla_grouping: str = "content",
        fsla: Optional[_BoolOrBools] = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if fsla is not None:
            warnings.warn("BoatCSWin(fsla=...) is deprecated; use fsla_stages=..., as BOAT-Swin does",
                          FutureWarning, stacklevel=2)
            fsla_stages = fsla
        dd = dict(device=device, dtype=dtype)
        num_stages = len(depths)
        if num_stages < 1:
            raise ValueError("depths must name at least one stage")
        num_heads = per_stage(num_heads, num_stages, "num_heads")
        split_size = per_stage(split_size, num_stages, "split_size")
        fsla_stages = per_stage(fsla_stages, num_stages, "fsla_stages")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.img_size = to_2tuple(img_size)
        self.strict_img_size = strict_img_size
        self.output_fmt = "NCHW"
        self.embed_dim = embed_dim
        self.fsla_stages = tuple(bool(f) for f in fsla_stages)
        dims = [embed_dim * 2**i for i in range(num_stages)]
        self.num_features = self.head_hidden_size = dims[-1]

        self.patch_embed = ConvStem(in_chans, embed_dim, norm_layer, **dd)
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        stages = []
        self.feature_info = []
        for i in range(num_stages):
            stages.append(
                BoatCSWinStage(
                    dim=dims[max(i - 1, 0)],
                    out_dim=dims[i],
                    depth=depths[i],
                    num_heads=num_heads[i],
                    split_size=split_size[i],
                    downsample=i > 0,
                    last_stage=i == num_stages - 1,
                    fsla=self.fsla_stages[i],
                    fsla_qk_scale=fsla_qk_scale,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_drop=proj_drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[i],
                    norm_layer=norm_layer,
                    fsla_grouping=fsla_grouping,
                    **dd,
                )
            )
            self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2**i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.norm = norm_layer(self.num_features, **dd)
        self.head = ClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt="NCHW", **dd
        )
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # as released: truncated-normal linear weights, zero biases, unit norms; convolutions keep torch's init
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            if module.weight is not None:
                nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    # ---- timm contract -------------------------------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Parameters exempt from weight decay: none beyond timm's default rule (biases and norms, ndim <= 1)."""
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^patch_embed",
            blocks=r"^stages\.(\d+)"
            if coarse
            else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool, in_features=self.num_features, **get_device_dtype(self))
        self.head.fc.apply(self._init_weights)
        self.head_hidden_size = self.head.num_features
        if global_pool is not None:
            self.global_pool = global_pool

    def set_input_size(self, img_size: Optional[Union[int, Tuple[int, int]]] = None) -> None:
        """Sets the nominal input size (checked with ``strict_img_size``); stripes and FSLA adapt to any size."""
        if img_size is not None:
            self.img_size = to_2tuple(img_size)


    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs (NCHW) at ``indices`` (last n stages if int, all if None), and the final features.

        ``norm`` applies the final norm to the last stage's intermediate.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        check_image(x, self.in_chans, self.img_size, self.strict_img_size)
        take_indices, max_index = stage_indices(len(self.stages), indices)
        last = len(self.stages) - 1
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[: max_index + 1]
        intermediates = []
        x = self.patch_embed(x)
        i = 0
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(self._apply_norm(x) if norm and i == last else x)
        if intermediates_only:
            return intermediates
        if i == last:
            x = self._apply_norm(x)
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> List[int]:
        take_indices, max_index = stage_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[: max_index + 1]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices

    def _apply_norm(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm (over channels) of an NCHW map; the result is NCHW."""
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised last-stage features, ``(B, C, H, W)``."""
        check_image(x, self.in_chans, self.img_size, self.strict_img_size)
        x = self.patch_embed(x)
        x = self.stages(x)
        return self._apply_norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def load_pretrained(self, checkpoint_path: str) -> None:
        """timm's custom-load hook (``pretrained=True``): loads a downloaded weights file, read safely, the way
        timm loads pretrained weights (:func:`~boat_vit.models._pretrained.load_pretrained_file`)."""
        load_pretrained_file(self, checkpoint_path, checkpoint_filter_fn)


@register_notrace_function  # FX: checks of the input's shape (FX wraps no function named _*)
def check_image(x: torch.Tensor, in_chans: int, img_size: Tuple[int, int], strict_img_size: bool) -> None:
    """Raises ``ValueError`` unless ``x`` is ``(B, in_chans, H, W)``, with ``(H, W) == img_size`` if strict."""
    if x.ndim != 4 or x.shape[1] != in_chans:
        raise ValueError(f"expected input (B, {in_chans}, H, W), got shape {format_shape(x.shape)}")
    if strict_img_size and (x.shape[2] != img_size[0] or x.shape[3] != img_size[1]):
        raise ValueError(
            f"input size ({x.shape[2]}, {x.shape[3]}) != img_size ({img_size[0]}, {img_size[1]}) "
            "(strict_img_size=True)"
        )


# ---- checkpoints -------------------------------------------------------------------------------------------

_DERIVED_BUFFERS = ("relative_position_index", "attn_mask", "num_batches_tracked")
_RELEASED_RULES = (
    (re.compile(r"^stage1_conv_embed\.0\."), "patch_embed.proj."),
    (re.compile(r"^stage1_conv_embed\.2\."), "patch_embed.norm."),
    (re.compile(r"^merge(\d+)\."), lambda m: f"stages.{int(m.group(1))}.downsample."),
    (re.compile(r"^stage(\d+)\.(\d+)\."), lambda m: f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}."),
    (re.compile(r"^head\.(weight|bias)$"), r"head.fc.\1"),
)
_BLOCK_RULES = (
    (re.compile(r"\.blocks\.(\d+)\.qkv\."), r".blocks.\1.attn.qkv."),
    (re.compile(r"\.blocks\.(\d+)\.proj\."), r".blocks.\1.attn.proj."),
    (re.compile(r"\.blocks\.(\d+)\.attns\.(\d+)\.get_v\."), r".blocks.\1.attn.lepe.\2."),
    (re.compile(r"\.blocks\.(\d+)\.content_attn\."), r".blocks.\1.fsla."),
    (re.compile(r"\.blocks\.(\d+)\.norm3\."), r".blocks.\1.norm_fsla."),
)
_FSLA_KEY = re.compile(r"\.blocks\.\d+\.(fsla|norm_fsla)\.")


def _rename_released(key: str) -> str:
    for pattern, repl in _RELEASED_RULES:
        new, count = pattern.subn(repl, key, count=1)
        if count:
            key = new
            break
    for pattern, repl in _BLOCK_RULES:
        key = pattern.sub(repl, key, count=1)
    return key


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Converts released BOAT-CSWin / Microsoft CSWin weights to this model's layout.

    Released keys (``stage1_conv_embed.*``, ``stage{i}.{j}.*``, ``merge{i}.*``, ``attns.{b}.get_v.*``,
    ``content_attn.*``, ``norm3.*``, ``norm.*``, ``head.*``) are renamed; keys already in this layout pass
    through. Derived buffers are dropped. FSLA weights that the checkpoint lacks altogether (a plain CSWin
    checkpoint) keep ``model``'s fresh initialisation and are listed in a warning; FSLA weights the model
    has no place for (FSLA turned off) are dropped with a warning. Every other mismatch is left to
    ``load_state_dict``.
    """
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.rsplit(".", 1)[-1] in _DERIVED_BUFFERS:
            continue
        out[_rename_released(key)] = value

    own = model.state_dict()
    fill_missing_from_model(out, model, lambda k: bool(_FSLA_KEY.search(k)), "FSLA")
    surplus = [k for k in out if k not in own and _FSLA_KEY.search(k)]
    if surplus:
        _logger.warning(
            "The model has FSLA off where the checkpoint has FSLA weights; dropping %d keys: %s",
            len(surplus), ", ".join(surplus),
        )
        for k in surplus:
            del out[k]
    return out


def _create_boat_cswin(variant: str, pretrained: bool = False, **kwargs) -> BoatCSWin:
    out_indices = kwargs.pop("out_indices", tuple(range(len(kwargs.get("depths", (1, 2, 21, 1))))))
    return build_boat_model(BoatCSWin, variant, pretrained, checkpoint_filter_fn,
                            feature_cfg=dict(flatten_sequential=True, out_indices=out_indices), **kwargs)


def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head.fc",
        **BOAT_PAPER_CFG,
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "boat_cswin_tiny_224.in1k": _cfg(**released_weights("boat_cswin_tiny_224")),
        "boat_cswin_small_224.in1k": _cfg(**released_weights("boat_cswin_small_224")),
        "boat_cswin_base_224.in1k": _cfg(**released_weights("boat_cswin_base_224")),
    }
)


@register_model
def boat_cswin_tiny_224(pretrained: bool = False, **kwargs) -> BoatCSWin:
    """BOAT-CSWin-T: embed 64, depths 1-2-21-1, heads 2-4-8-16, stripes 1-2-7-7 (26.39M params)."""
    args = dict(embed_dim=64, depths=(1, 2, 21, 1), num_heads=(2, 4, 8, 16), split_size=(1, 2, 7, 7))
    return _create_boat_cswin("boat_cswin_tiny_224", pretrained=pretrained, **dict(args, **kwargs))


@register_model
def boat_cswin_small_224(pretrained: bool = False, **kwargs) -> BoatCSWin:
    """BOAT-CSWin-S: embed 64, depths 2-4-32-2, heads 2-4-8-16, stripes 1-2-7-7 (40.11M params)."""
    args = dict(embed_dim=64, depths=(2, 4, 32, 2), num_heads=(2, 4, 8, 16), split_size=(1, 2, 7, 7))
    return _create_boat_cswin("boat_cswin_small_224", pretrained=pretrained, **dict(args, **kwargs))


@register_model
def boat_cswin_base_224(pretrained: bool = False, **kwargs) -> BoatCSWin:
    """BOAT-CSWin-B: embed 96, depths 2-4-32-2, heads 4-8-16-32, stripes 1-2-7-7 (89.63M params)."""
    args = dict(embed_dim=96, depths=(2, 4, 32, 2), num_heads=(4, 8, 16, 32), split_size=(1, 2, 7, 7))
    return _create_boat_cswin("boat_cswin_base_224", pretrained=pretrained, **dict(args, **kwargs))
