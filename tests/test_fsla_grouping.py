"""The ablation groupings of FSLA: random balanced groups, one global group and groups ranked by query norm, in
the layer and the models."""
import pytest
import timm
import torch
import torch.nn.functional as F

import boat_vit  # noqa: F401  (registers the models)
from boat_vit import FeatureSpaceLocalAttention
from boat_vit.clustering import (
    norm_balanced_clustering,
    plan_groups,
    random_balanced_clustering,
    single_group_clustering,
)
from boat_vit.layers import GROUPINGS

TINY_SWIN = dict(img_size=32, patch_size=2, window_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4),
                 num_classes=3)
TINY_CSWIN = dict(embed_dim=16, depths=(2, 2), num_heads=(2, 4), split_size=(1, 2), num_classes=3)


def _layer(grouping: str, dim: int = 16, heads: int = 2, **kwargs) -> FeatureSpaceLocalAttention:
    torch.manual_seed(0)
    layer = FeatureSpaceLocalAttention(dim, heads, grouping=grouping, **kwargs).eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.3)
    return layer


@pytest.mark.parametrize("num_tokens, group_size", [(196, 49), (221, 49), (99, 49), (30, 49), (1000, 16)])
def test_random_groups_are_a_balanced_permutation(num_tokens, group_size):
    clustering = random_balanced_clustering(5, num_tokens, group_size, torch.Generator().manual_seed(1))
    plan = plan_groups(num_tokens, group_size)
    assert (clustering.plan.num_tokens, clustering.plan.num_levels, clustering.plan.group_size) == (
        plan.num_tokens, plan.num_levels, plan.group_size)
    slots = torch.arange(plan.num_slots)
    assert torch.equal(clustering.order.sort(dim=1).values, slots.expand(5, -1))  # a permutation of the slots
    assert torch.equal(clustering.order.gather(1, clustering.inverse), torch.arange(num_tokens).expand(5, -1))
    real = (clustering.groups < num_tokens).sum(dim=-1)
    assert torch.equal(real, plan.real_counts(plan.num_levels).expand(5, -1))  # the content clustering's sizes
    member = torch.arange(plan.group_size)
    assert ((clustering.groups < num_tokens) == (member < real[..., None])).all()  # padding last in a group
    assert len({tuple(row.tolist()) for row in clustering.order}) == 5  # independent draws per sequence


def test_random_groups_follow_the_generator():
    draw = lambda seed: random_balanced_clustering(3, 300, 49, torch.Generator().manual_seed(seed)).order
    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))


def test_single_group_is_the_token_order():
    clustering = single_group_clustering(4, 10)
    assert clustering.plan.num_groups == 1 and clustering.plan.group_size == 10
    assert torch.equal(clustering.groups, torch.arange(10).expand(4, 1, 10))


def test_unknown_grouping_is_refused():
    with pytest.raises(ValueError, match="grouping must be one of"):
        FeatureSpaceLocalAttention(16, 2, grouping="nearest")


def _plain_attention(layer: FeatureSpaceLocalAttention, x: torch.Tensor) -> torch.Tensor:
    """Global multi-head attention with the layer's projections and value convolution, written out."""
    batch, height, width, channels = x.shape
    q, k, v = layer.qkv(x.reshape(batch, -1, channels)).view(batch, -1, 3, layer.num_heads, layer.head_dim).unbind(2)
    attn = torch.softmax(q.transpose(1, 2) @ k.permute(0, 2, 3, 1) * layer.scale, dim=-1) @ v.transpose(1, 2)
    out = attn.transpose(1, 2).reshape(batch, -1, channels)
    lepe = layer.get_v(v.reshape(batch, height, width, channels).permute(0, 3, 1, 2))
    return layer.proj(out + lepe.permute(0, 2, 3, 1).reshape(out.shape)).view(x.shape)


@pytest.mark.parametrize("height, width", [(14, 14), (9, 11), (3, 5)])
def test_global_grouping_is_plain_attention(height, width):
    layer = _layer("global").double()
    x = torch.randn(2, height, width, 16, dtype=torch.float64)
    with torch.no_grad():
        out, clustering = layer.forward_with_clusters(x)
        assert (out - _plain_attention(layer, x)).abs().max().item() < 1e-12
    assert clustering.plan.num_groups == 1


def test_content_grouping_with_one_group_equals_global():
    """With at most ``group_size`` tokens the BOAT rule forms one group: the same as the global stand-in."""
    x = torch.randn(2, 6, 7, 16)
    with torch.no_grad():
        assert torch.equal(_layer("content")(x), _layer("global")(x))


def test_random_grouping_eval_is_fixed_and_batch_independent():
    layer = _layer("random")
    x = torch.randn(3, 16, 16, 16)
    with torch.no_grad():
        out, clustering = layer.forward_with_clusters(x)
        assert torch.equal(out, layer(x))  # the same groups on every eval call
        assert torch.allclose(layer(x[1:2]), out[1:2], atol=1e-6)  # an image's output ignores its batch
        assert torch.equal(clustering.order[:2], clustering.order[2:4])  # one draw per head, shared by images
        assert torch.equal(out, layer(x, clustering))  # what the layer used, as an explicit clustering
        content = _layer("content").forward_with_clusters(x)[1]
    assert not torch.equal(clustering.order, content.order)


def test_random_grouping_training_draws_afresh_from_the_global_generator():
    layer = _layer("random").train()
    x = torch.randn(2, 16, 16, 16)
    torch.manual_seed(3)
    first = layer.forward_with_clusters(x)[1].order
    second = layer.forward_with_clusters(x)[1].order
    torch.manual_seed(3)
    again = layer.forward_with_clusters(x)[1].order
    assert not torch.equal(first, second)
    assert torch.equal(first, again)
    assert len({tuple(row.tolist()) for row in first}) == 4  # per image and head


@pytest.mark.parametrize("num_tokens, group_size", [(196, 49), (221, 49), (30, 49), (256, 16)])
def test_norm_groups_are_bands_of_the_norm_in_the_balanced_layout(num_tokens, group_size):
    x = torch.randn(2, 3, num_tokens, 8)
    clustering = norm_balanced_clustering(x, group_size)
    plan = plan_groups(num_tokens, group_size)
    assert (clustering.plan.num_levels, clustering.plan.group_size) == (plan.num_levels, plan.group_size)
    assert torch.equal(clustering.order.gather(1, clustering.inverse), torch.arange(num_tokens).expand(6, -1))
    real = (clustering.groups < num_tokens).sum(dim=-1)
    assert torch.equal(real, plan.real_counts(plan.num_levels).expand(6, -1))
    norms = x.reshape(6, num_tokens, 8).norm(dim=-1)
    for sequence in range(6):
        bands = [norms[sequence, g[g < num_tokens]] for g in clustering.groups[sequence]]
        assert all(low.max() <= high.min() for low, high in zip(bands, bands[1:]))  # group g: the g-th band


def test_norm_groups_keep_ties_in_token_order():
    x = torch.ones(1, 40, 4)  # all norms equal: the raster order
    assert torch.equal(norm_balanced_clustering(x, 10).order[0], torch.arange(40))


def test_norm_grouping_clusters_the_queries_by_norm():
    layer = _layer("norm")
    x = torch.randn(3, 16, 16, 16)
    with torch.no_grad():
        out, clustering = layer.forward_with_clusters(x)
        queries = layer.qkv(x.reshape(3, -1, 16)).view(3, 256, 3, 2, 8)[:, :, 0].transpose(1, 2)
        assert torch.equal(clustering.order, norm_balanced_clustering(queries, layer.group_size).order)
        assert torch.equal(out, layer(x, clustering))
        assert torch.allclose(layer(x[1:2]), out[1:2], atol=1e-6)  # an image's output ignores its batch
    assert "grouping=norm" in repr(layer)


def test_random_and_global_groupings_train():
    for grouping in ("random", "global", "norm"):
        layer = _layer(grouping).train()
        x = torch.randn(2, 12, 12, 16, requires_grad=True)
        layer(x).square().mean().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        assert all(p.grad is not None for p in layer.parameters())


@pytest.mark.parametrize("name, kwargs, size", [("boat_swin_tiny_patch4_window7_224", TINY_SWIN, 32),
                                                ("boat_cswin_tiny_224", TINY_CSWIN, 64)])
def test_models_pass_the_grouping_to_every_fsla_layer(name, kwargs, size):
    x = torch.randn(2, 3, size, size)  # stage 1: 16x16 tokens, more than one FSLA group
    outputs = {}
    for grouping in GROUPINGS:
        torch.manual_seed(0)
        model = timm.create_model(name, fsla_grouping=grouping, **kwargs).eval()
        layers = [m for m in model.modules() if isinstance(m, FeatureSpaceLocalAttention)]
        assert layers and all(layer.grouping == grouping for layer in layers)
        with torch.no_grad():
            outputs[grouping] = model(x)
    torch.manual_seed(0)
    default = timm.create_model(name, **kwargs).eval()
    with torch.no_grad():
        assert torch.equal(default(x), outputs["content"])  # the default is BOAT, bit for bit
    # same weights (the grouping draws no random numbers at construction), different attention
    assert not torch.equal(outputs["content"], outputs["random"])
    assert not torch.equal(outputs["content"], outputs["global"])
    assert not torch.equal(outputs["content"], outputs["norm"])
