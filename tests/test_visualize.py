"""``boat-vit show-clusters``: the recorded groups are the layer's own, and the PNG has the promised size."""
import json
import math

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from boat_vit.cli import main
from boat_vit.clustering import DEFAULT_GROUP_SIZE, sibling_overlap_slots
from boat_vit.classification import PRESETS
from boat_vit.layers import find_fsla_layers, record_clusters, recording_clusters, select_fsla_layer
from boat_vit.visualize import HEADER_HEIGHT, LABEL_HEIGHT, MIN_FIGURE_WIDTH, sample_image

MODEL = "boat_swin_tiny_patch4_window7_224"
TINY_KWARGS = dict(embed_dim=16, depths=(2, 2), num_heads=(1, 2), img_size=64)
IMAGE_SIZE = (80, 120)  # (height, width): shorter side 64 gives a 64x96 input, 16x24 tokens at stage 0
PANEL_WIDTH = 400  # two heads are wider than MIN_FIGURE_WIDTH, one is not


INPUT_SIZE = (64, 96)


@pytest.fixture(scope="module")
def model():
    """The tiny model, set to run 64x96 inputs (16x24 tokens at stage 0)."""
    torch.manual_seed(0)
    model = timm.create_model(MODEL, **TINY_KWARGS).eval()
    model.set_input_size(img_size=INPUT_SIZE)
    return model


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    """A small synthetic picture with regions of different colour and texture."""
    rows, cols = np.mgrid[: IMAGE_SIZE[0], : IMAGE_SIZE[1]]
    pixels = np.stack([rows * 3 % 256, (cols * 2) % 256, ((rows // 10 + cols // 10) % 2) * 255], axis=-1)
    path = tmp_path_factory.mktemp("images") / "pattern.png"
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def _input() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(1, 3, *INPUT_SIZE)


def test_fsla_layers_by_stage_and_block(model):
    assert find_fsla_layers(model) == {(0, 1): "layers.0.blocks.1.fsla", (1, 1): "layers.1.blocks.1.fsla"}
    assert select_fsla_layer(model) == "layers.0.blocks.1.fsla"
    assert select_fsla_layer(model, stage=1) == "layers.1.blocks.1.fsla"
    with pytest.raises(ValueError, match="--stage 0 --block 1"):
        select_fsla_layer(model, stage=0, block=0)


@pytest.mark.parametrize("layer", ["layers.0.blocks.1.fsla", "layers.1.blocks.1.fsla"])
def test_recorded_groups_are_those_the_layer_used(model, layer):
    module = dict(model.named_modules())[layer]
    captured = []
    handle = module.register_forward_pre_hook(lambda _, args: captured.append(args[0].clone()))
    try:
        record, logits = record_clusters(model, _input(), layer)
    finally:
        handle.remove()
    (x,) = captured
    with torch.inference_mode():
        _, expected = module.forward_with_clusters(x)
        plain_logits = model(_input())
    assert torch.equal(record.clustering.order, expected.order)
    assert torch.equal(record.clustering.inverse, expected.inverse)
    assert torch.equal(logits, plain_logits)  # recording does not change the model's output
    assert "forward" not in vars(module)  # the layer's own forward is back

    height, width = x.shape[1:3]
    assert record.token_map == (height, width) and record.num_heads == module.num_heads
    num_tokens = height * width
    levels = math.floor(math.log2(num_tokens / DEFAULT_GROUP_SIZE))
    assert record.clustering.plan.num_groups == 2**levels
    for head in range(record.num_heads):
        groups = record.clustering.groups[head]
        real = groups[groups < num_tokens]
        assert torch.equal(real.sort().values, torch.arange(num_tokens))  # every patch in exactly one group
        group_map = record.group_map(head)
        assert group_map.unique().tolist() == list(range(2**levels))
        for group in range(2**levels):
            members = groups[group][groups[group] < num_tokens]
            assert set(members.tolist()) == set(torch.nonzero(group_map.flatten() == group).flatten().tolist())


def test_attended_patches_are_group_and_sibling_overlap(model):
    record, _ = record_clusters(model, _input(), "layers.0.blocks.1.fsla")
    row, col = 5, 7
    members, overlap = record.attended(0, row, col)
    group = int(record.group_map(0)[row, col])
    assert members[row, col] and not (members & overlap).any()
    assert int(members.sum()) == int((record.group_map(0) == group).sum())
    slots = sibling_overlap_slots(record.clustering.plan, record.overlap)[group]
    assert set(torch.nonzero(overlap.flatten()).flatten().tolist()) == set(record.clustering.order[0, slots].tolist())
    assert int(overlap.sum()) == record.overlap
    with pytest.raises(ValueError, match="outside the 16x24 token map"):
        record.attended(0, 16, 0)


def test_recording_refuses_other_modules(model):
    with pytest.raises(ValueError, match="not a FeatureSpaceLocalAttention"):
        with recording_clusters(model.head):
            pass


@pytest.mark.parametrize("stage, heads", [(0, 1), (1, 2)])
def test_show_clusters_writes_png_of_expected_size(image_file, tmp_path, capsys, stage, heads):
    output = tmp_path / "clusters.png"
    status = main(["show-clusters", str(image_file), "--model", MODEL, "--model-kwargs", json.dumps(TINY_KWARGS),
                   "--output", str(output), "--stage", str(stage), "--panel-width", str(PANEL_WIDTH),
                   "--patch", "2", "3"])
    assert status == 0
    panel_height = round(PANEL_WIDTH * INPUT_SIZE[0] / INPUT_SIZE[1])  # 80x120 is shown to the model as 64x96
    with Image.open(output) as png:
        assert png.format == "PNG"
        expected_width = max(heads * PANEL_WIDTH, MIN_FIGURE_WIDTH)
        assert png.size == (expected_width, HEADER_HEIGHT + 2 * (LABEL_HEIGHT + panel_height))
    printed = capsys.readouterr().out
    assert f"layers.{stage}.blocks.1.fsla" in printed and "selected patch (2, 3)" in printed


def test_show_clusters_from_a_digits_checkpoint(tmp_path, capsys):
    """The digits demo's checkpoint layout (here with untrained weights) on the built-in digit."""
    preset = PRESETS["digits"]
    torch.manual_seed(0)
    model = timm.create_model(preset["model"], num_classes=10, **preset["model_kwargs"])
    checkpoint = tmp_path / "best.pth"
    data_config = dict(input_size=(3, 32, 32), interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3,
                       crop_pct=1.0, crop_mode="center")
    torch.save(dict(model_name=preset["model"], model_kwargs=preset["model_kwargs"], data_config=data_config,
                    class_names=[str(i) for i in range(10)], model=model.state_dict()), checkpoint)
    output = tmp_path / "digit.png"
    assert main(["show-clusters", "--sample", "digit", "--checkpoint", str(checkpoint), "--output", str(output),
                 "--head", "0", "--panel-width", "360"]) == 0
    printed = capsys.readouterr().out
    assert "16x16 tokens (input 32x32), 4 groups of 64" in printed and "predicted" in printed
    with Image.open(output) as png:
        assert png.size == (MIN_FIGURE_WIDTH, HEADER_HEIGHT + 2 * (LABEL_HEIGHT + 360))


def test_sample_photograph_ships_with_scikit_learn():
    assert sample_image("china").size == (640, 427)


def test_bad_input_is_a_usage_error(tmp_path, capsys):
    args = ["show-clusters", "--model", MODEL, "--model-kwargs", json.dumps(TINY_KWARGS), "--output",
            str(tmp_path / "x.png")]
    assert main(["show-clusters", str(tmp_path / "no.png"), *args[1:]]) == 2
    assert "image not found" in capsys.readouterr().err
    assert main([*args, "--patch", "99", "0", "--sample", "flower"]) == 2
    assert "outside the" in capsys.readouterr().err
    assert main([*args, "--stage", "5"]) == 2
    assert "no FSLA layer at stage 5" in capsys.readouterr().err
    assert main([*args, "--panel-width", "50"]) == 2
    assert "panel width must be at least" in capsys.readouterr().err
