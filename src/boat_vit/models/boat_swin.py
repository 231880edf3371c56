"""BOAT-Swin: Swin Transformers with feature-space local attention, as timm models.

Swin (Liu et al., arXiv 2103.14030) attends inside 7x7 windows that shift by half a window every other
block. BOAT (Yu et al., arXiv 2201.13027) adds feature-space local attention
(:class:`~boat_vit.layers.FeatureSpaceLocalAttention`, FSLA) to the shifted-window blocks:
``x = x + drop_path(W-MSA(norm1(x)))``, then ``x = x + FSLA(norm_fsla(x))`` (no drop path, as released),
then the MLP. A block shifts only where its stage's map is larger than a window at the constructed
``img_size``, so at 224x224 FSLA sits in the odd blocks of stages 1-3 and not in stage 4 (7x7).

Everything except the FSLA branch is timm's Swin (:mod:`timm.models.swin_transformer`): the blocks and
stages subclass timm's and the model inherits timm's methods (``forward_features``, ``forward_head``,
``forward_intermediates``, ``set_input_size``, ``set_grad_checkpointing``, ``group_matcher``,
``no_weight_decay``, ``reset_classifier``, ...). With ``fsla_stages=False`` it computes exactly timm's Swin.

timm version: timm's ``SwinTransformer.__init__`` has no hook for another stage or block class, and building
timm's stages only to replace them would draw other random numbers (every initial weight would change).
So :class:`BoatSwinTransformer` sets up the attributes of timm 1.0.31's ``SwinTransformer.__init__`` itself,
with the same construction order (the same initial weights for a seed). ``pyproject.toml`` bounds timm to
``<1.1``, and ``tests/test_boat_swin.py::test_fsla_off_builds_exactly_timm_swin`` fails when timm's Swin
changes under it (attributes, modules, parameters, initial values, outputs).

Any input size: with ``strict_img_size=False`` (or ``dynamic_img_size=True``) the image is padded to a
multiple of the patch size, windows are padded as in timm's Swin and FSLA takes any token count; or use
``set_input_size`` as for timm's Swin.

Deployment: ``torch.fx`` traces the model with timm's leaf registry (FSLA is a leaf module: its group layout is
Python control flow on the token count); ``torch.jit.script`` compiles it (results identical to eager
PyTorch, any batch, and any size with ``dynamic_img_size=True``); ``torch.export`` and ONNX
(:mod:`boat_vit.export`) trace it with a dynamic batch for one image size.

Weights: ``timm.create_model("boat_swin_tiny_patch4_window7_224", pretrained=True)`` downloads the released
checkpoint (github.com/mahaoyuHKU/pytorch-boat) into timm's cache and loads it (:mod:`._pretrained`); a local copy
loads with ``pretrained_cfg_overlay=dict(file=PATH)`` or :func:`boat_vit.weights.load_weights`.
:func:`checkpoint_filter_fn`, the one conversion of this family, maps the released (Microsoft Swin) layout to
this one. Plain Microsoft/timm Swin checkpoints load too, with the FSLA branches freshly initialised and listed in
a warning. A file must give at least half of the model's weights (the classifier aside);
``pretrained_strict=False`` accepts less. ``checkpoint_path=`` takes files in this model's own layout
(``boat-vit convert`` writes them).
"""
from typing import Any, Dict, Sequence, Tuple, Type, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, PatchEmbed, calculate_drop_path_rates, to_2tuple, to_ntuple
from timm.models import generate_default_cfgs, register_model
from timm.models import swin_transformer as timm_swin
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock, SwinTransformerStage

from ..clustering import DEFAULT_GROUP_SIZE
from ..layers import DEFAULT_OVERLAP, FeatureSpaceLocalAttention
from ..weights import fill_missing_from_model
from ._metadata import BOAT_PAPER_CFG, released_weights
from ._pretrained import build_boat_model, load_pretrained_file
from ._stages import per_stage

__all__ = [
    "BoatSwinTransformer",
    "BoatSwinTransformerBlock",
    "BoatSwinTransformerStage",
    "checkpoint_filter_fn",
]

_int_or_tuple_2_t = Union[int, Tuple[int, int]]

# released module names -> ours (the FSLA branch of a block and its pre-norm)
_RELEASED_MODULE_NAMES: Dict[str, str] = {"attnC": "fsla", "norm4": "norm_fsla"}


class BoatSwinTransformerBlock(SwinTransformerBlock):
    """timm's Swin block with BOAT's FSLA branch between the window attention and the MLP.

    Args:
        dim: Channels.
        input_resolution: Token map size the block is built for (decides the window shift).
        fsla: Add the FSLA branch if the block shifts its windows (the released placement).
        fsla_group_size: Target tokens per FSLA cluster.
        fsla_overlap: Sibling tokens each FSLA cluster borrows as extra keys/values.
        fsla_grouping: How FSLA groups tokens: ``'content'`` (BOAT), or the ablation controls ``'random'``,
            ``'global'`` and ``'norm'`` (:class:`~boat_vit.layers.FeatureSpaceLocalAttention`).
        **kwargs: :class:`timm.models.swin_transformer.SwinTransformerBlock` arguments.
    """

    def __init__(
        self,
        dim: int,
        input_resolution: _int_or_tuple_2_t,
        num_heads: int = 4,
        window_size: _int_or_tuple_2_t = 7,
        shift_size: int = 0,
        always_partition: bool = False,
        dynamic_mask: bool = False,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: Type[nn.Module] = nn.LayerNorm,
        fsla: bool = True,
        fsla_group_size: int = DEFAULT_GROUP_SIZE,
        fsla_overlap: int = DEFAULT_OVERLAP,
        fsla_grouping: str = "content",
        device=None,
        dtype=None,
    ):
        dd = dict(device=device, dtype=dtype)
        super().__init__(
            dim=dim,
            input_resolution=input_resolution,
            num_heads=num_heads,
            window_size=window_size,
            shift_size=shift_size,
            always_partition=always_partition,
            dynamic_mask=dynamic_mask,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            proj_drop=proj_drop,
            attn_drop=attn_drop,
            drop_path=drop_path,
            norm_layer=norm_layer,
            **dd,
        )
        has_fsla = fsla and any(self.shift_size)
        self.norm_fsla = norm_layer(dim, **dd) if has_fsla else None
        self.fsla = (
            FeatureSpaceLocalAttention(
                dim,
                num_heads,
                group_size=fsla_group_size,
                overlap=fsla_overlap,
                qkv_bias=qkv_bias,
                attn_drop=attn_drop,
                proj_drop=proj_drop,
                grouping=fsla_grouping,
                **dd,
            )
            if has_fsla
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps ``(B, H, W, C)`` tokens to ``(B, H, W, C)``."""
        B, H, W, C = x.shape
        x = x + self.drop_path1(self._attn(self.norm1(x)))
        if self.fsla is not None:
            x = x + self.fsla(self.norm_fsla(x))
        x = x.reshape(B, -1, C)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x.reshape(B, H, W, C)


class BoatSwinTransformerStage(SwinTransformerStage):
    """timm's Swin stage (optional patch merging, then blocks) built from :class:`BoatSwinTransformerBlock`.

    Args:
        fsla: Give the stage's shifted-window blocks an FSLA branch.
        fsla_group_size: Target tokens per FSLA cluster.
        fsla_overlap: Sibling tokens each FSLA cluster borrows as extra keys/values.
        fsla_grouping: How FSLA groups tokens (:class:`BoatSwinTransformerBlock`).
        Others: as :class:`timm.models.swin_transformer.SwinTransformerStage`.
    """

    def __init__(
        self,
        dim: int,
        out_dim: int,
        input_resolution: Tuple[int, int],
        depth: int,
        downsample: bool = True,
        num_heads: int = 4,
        window_size: _int_or_tuple_2_t = 7,
        always_partition: bool = False,
        dynamic_mask: bool = False,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: Union[Sequence[float], float] = 0.0,
        norm_layer: Type[nn.Module] = nn.LayerNorm,
        fsla: bool = True,
        fsla_group_size: int = DEFAULT_GROUP_SIZE,
        fsla_overlap: int = DEFAULT_OVERLAP,
        fsla_grouping: str = "content",
        device=None,
        dtype=None,
    ):
        dd = dict(device=device, dtype=dtype)
        # timm's stage without blocks gives the patch merging and the bookkeeping; the blocks are BOAT's
        super().__init__(dim, out_dim, input_resolution, depth=0, downsample=downsample, norm_layer=norm_layer, **dd)
        self.depth = depth
        window_size = to_2tuple(window_size)
        shift_size = tuple(w // 2 for w in window_size)
        drop_path = list(drop_path) if isinstance(drop_path, Sequence) else [drop_path] * depth
        self.blocks = nn.Sequential(
            *[
                BoatSwinTransformerBlock(
                    dim=out_dim,
                    input_resolution=self.output_resolution,
                    num_heads=num_heads,
                    window_size=window_size,
                    shift_size=shift_size if i % 2 else 0,
                    always_partition=always_partition,
                    dynamic_mask=dynamic_mask,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_drop=proj_drop,
                    attn_drop=attn_drop,
                    drop_path=drop_path[i],
                    norm_layer=norm_layer,
                    fsla=fsla,
                    fsla_group_size=fsla_group_size,
                    fsla_overlap=fsla_overlap,
                    fsla_grouping=fsla_grouping,
                    **dd,
                )
                for i in range(depth)
            ]
        )


class BoatSwinTransformer(SwinTransformer):
    """BOAT-Swin: timm's Swin Transformer with feature-space local attention in the shifted-window blocks.

    Builds the same modules and attributes as :class:`timm.models.swin_transformer.SwinTransformer` (so
    all of its methods apply) from BOAT stages.

    Args:
        img_size: Input size the model is built for (decides window shifts, hence FSLA placement).
        patch_size: Patch size.
        in_chans: Input channels.
        num_classes: Classes of the head (0: no head).
        global_pool: Head pooling (``'avg'``, ``''``, ...).
        embed_dim: Channels of stage 1 (doubling every stage).
        depths: Blocks per stage.
        num_heads: Attention heads per stage (window attention and FSLA).
        window_size: Window size, for all stages or one per stage.
        always_partition: Always partition into windows and shift, even in maps smaller than a window.
        strict_img_size: Require inputs of ``img_size``.
        dynamic_img_size: Accept any input size (same as ``strict_img_size=False``): the image is padded to
            a multiple of the patch size and attention masks are built per input.
        mlp_ratio: MLP hidden channels over channels.
        qkv_bias: Bias of the q, k, v projections.
        drop_rate: Head dropout.
        proj_drop_rate: Dropout after attention / FSLA / MLP projections.
        attn_drop_rate: Dropout on attention weights.
        drop_path_rate: Stochastic depth of the last block (linear from 0); the FSLA branch has none.
        norm_layer: Normalisation layer.
        weight_init: timm ViT init mode (``''``, ``'jax'``, ``'moco'``, ``'reset'``; ``'skip'``: none).
        fsla_stages: Which stages get FSLA in their shifted-window blocks: one flag for all, or one per
            stage. ``False`` gives timm's Swin.
        fsla_group_size: Target tokens per FSLA cluster (released: 49).
        fsla_overlap: Sibling tokens each FSLA cluster borrows as extra keys/values (released: 20).
        fsla_grouping: How FSLA groups tokens: ``'content'`` (BOAT, the default), or the ablation controls
            ``'random'`` (same group layout, tokens assigned at random) and ``'global'`` (one group of all
            tokens: global attention in place of each FSLA layer), ``'norm'`` (same layout, tokens ranked by
            query norm); see
            :class:`~boat_vit.layers.FeatureSpaceLocalAttention`.
        device: Parameter device (``'meta'`` builds without memory).
        dtype: Parameter dtype.
    """

    def __init__(
        self,
        img_size: _int_or_tuple_2_t = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: int = 96,
        depths: Tuple[int, ...] = (2, 2, 6, 2),
        num_heads: Tuple[int, ...] = (3, 6, 12, 24),
        window_size: Union[_int_or_tuple_2_t, Sequence[_int_or_tuple_2_t]] = 7,
        always_partition: bool = False,
        strict_img_size: bool = True,
        dynamic_img_size: bool = False,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        norm_layer: Type[nn.Module] = nn.LayerNorm,
        weight_init: str = "",
        fsla_stages: Union[bool, Sequence[bool]] = True,
        fsla_group_size: int = DEFAULT_GROUP_SIZE,
        fsla_overlap: int = DEFAULT_OVERLAP,
        fsla_grouping: str = "content",
        device=None,
        dtype=None,
    ):
        # SwinTransformer.__init__ would build timm stages: set up its attributes here with BOAT stages (see above)
        nn.Module.__init__(self)
        dd = dict(device=device, dtype=dtype)
        num_stages = len(depths)
        num_heads = per_stage(num_heads, num_stages, "num_heads")
        fsla_stages = per_stage(fsla_stages, num_stages, "fsla_stages")
        strict_img_size = strict_img_size and not dynamic_img_size
        self.dynamic_img_size = not strict_img_size
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.output_fmt = "NHWC"
        self.num_layers = num_stages
        self.embed_dim = embed_dim
        self.num_features = int(embed_dim * 2 ** (num_stages - 1))
        self.fsla_stages = tuple(bool(f) for f in fsla_stages)
        stage_dims = [int(embed_dim * 2**i) for i in range(num_stages)]

        self.patch_embed = PatchEmbed(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=stage_dims[0],
            norm_layer=norm_layer,
            strict_img_size=strict_img_size,
            dynamic_img_pad=self.dynamic_img_size,
            output_fmt="NHWC",
            **dd,
        )
        patch_grid = self.patch_embed.grid_size
        window_sizes = timm_swin.resolve_stage_window_sizes(window_size, num_stages)
        # set_input_size() scales these with the patch grid
        self._ref_window_sizes = window_sizes
        self._ref_grid_size = tuple(patch_grid)
        mlp_ratios = to_ntuple(num_stages)(mlp_ratio)
        drop_path_rates = calculate_drop_path_rates(drop_path_rate, depths, stagewise=True)

        stages = []
        self.feature_info = []
        for i in range(num_stages):
            scale = 2 ** max(i - 1, 0)  # stage i's input is the patch grid merged i - 1 times
            stages.append(
                BoatSwinTransformerStage(
                    dim=stage_dims[max(i - 1, 0)],
                    out_dim=stage_dims[i],
                    input_resolution=tuple((g + scale - 1) // scale for g in patch_grid),
                    depth=depths[i],
                    downsample=i > 0,
                    num_heads=num_heads[i],
                    window_size=window_sizes[i],
                    always_partition=always_partition,
                    dynamic_mask=self.dynamic_img_size,
                    mlp_ratio=mlp_ratios[i],
                    qkv_bias=qkv_bias,
                    proj_drop=proj_drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=drop_path_rates[i],
                    norm_layer=norm_layer,
                    fsla=self.fsla_stages[i],
                    fsla_group_size=fsla_group_size,
                    fsla_overlap=fsla_overlap,
                    fsla_grouping=fsla_grouping,
                    **dd,
                )
            )
            self.feature_info.append(
                dict(num_chs=stage_dims[i], reduction=max(to_2tuple(patch_size)) * 2**i, module=f"layers.{i}")
            )
        self.layers = nn.Sequential(*stages)

        self.norm = norm_layer(self.num_features, **dd)
        self.head = ClassifierHead(
            self.num_features,
            num_classes,
            pool_type=global_pool,
            drop_rate=drop_rate,
            input_fmt=self.output_fmt,
            **dd,
        )
        self.head_hidden_size = self.head.num_features
        self.weight_init_mode = "reset" if weight_init == "skip" else weight_init
        if weight_init != "skip":
            self.init_weights(needs_reset=False)

    def load_pretrained(self, checkpoint_path: str) -> None:
        """timm's custom-load hook (``pretrained=True``): loads a downloaded weights file, read safely, the way
        timm loads pretrained weights (:func:`~boat_vit.models._pretrained.load_pretrained_file`)."""
        load_pretrained_file(self, checkpoint_path, checkpoint_filter_fn)


def _is_fsla_key(key: str) -> bool:
    return ".fsla." in key or ".norm_fsla." in key


def _rename_released(key: str) -> str:
    for released, ours in _RELEASED_MODULE_NAMES.items():
        key = key.replace(f".{released}.", f".{ours}.")
    return key


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: BoatSwinTransformer) -> Dict[str, torch.Tensor]:
    """Converts a BOAT-Swin or Swin checkpoint to this model's layout.

    Takes the released layout (Microsoft Swin keys plus ``attnC.*`` / ``norm4.*``), plain Microsoft Swin
    state dicts and timm Swin ones (keys already in this layout pass through). timm's Swin filter does the
    Microsoft -> timm part (downsample moved to the next stage, ``head.`` ->
    ``head.fc.``, derived buffers dropped, relative position tables and patch embedding resized to the
    model). FSLA weights missing altogether (a plain Swin checkpoint) keep the model's fresh initialisation,
    listed in a warning.
    """
    out = timm_swin.checkpoint_filter_fn({_rename_released(k): v for k, v in state_dict.items()}, model)
    fill_missing_from_model(out, model, _is_fsla_key, "FSLA")
    return out


def _create_boat_swin(variant: str, pretrained: bool = False, **kwargs: Any) -> BoatSwinTransformer:
    out_indices = kwargs.pop("out_indices", tuple(range(len(kwargs.get("depths", (2, 2, 6, 2))))))
    return build_boat_model(BoatSwinTransformer, variant, pretrained, checkpoint_filter_fn,
                            feature_cfg=dict(flatten_sequential=True, out_indices=out_indices), **kwargs)


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,  # released evaluation: resize to 256, centre crop 224
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head.fc",
        **BOAT_PAPER_CFG,
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "boat_swin_tiny_patch4_window7_224.in1k": _cfg(**released_weights("boat_swin_tiny_patch4_window7_224")),
        "boat_swin_small_patch4_window7_224.in1k": _cfg(**released_weights("boat_swin_small_patch4_window7_224")),
        "boat_swin_base_patch4_window7_224.in1k": _cfg(**released_weights("boat_swin_base_patch4_window7_224")),
    }
)


@register_model
def boat_swin_tiny_patch4_window7_224(pretrained: bool = False, **kwargs: Any) -> BoatSwinTransformer:
    """BOAT-Swin-T @ 224x224, ImageNet-1k (30.27M parameters, 5.20 GMACs)."""
    model_args = dict(patch_size=4, window_size=7, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))
    return _create_boat_swin("boat_swin_tiny_patch4_window7_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def boat_swin_small_patch4_window7_224(pretrained: bool = False, **kwargs: Any) -> BoatSwinTransformer:
    """BOAT-Swin-S @ 224x224, ImageNet-1k (55.16M parameters, 10.22 GMACs)."""
    model_args = dict(patch_size=4, window_size=7, embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24))
    return _create_boat_swin("boat_swin_small_patch4_window7_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def boat_swin_base_patch4_window7_224(pretrained: bool = False, **kwargs: Any) -> BoatSwinTransformer:
    """BOAT-Swin-B @ 224x224, ImageNet-1k (97.61M parameters, 17.96 GMACs)."""
    model_args = dict(patch_size=4, window_size=7, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))
    return _create_boat_swin("boat_swin_base_patch4_window7_224", pretrained=pretrained, **dict(model_args, **kwargs))
