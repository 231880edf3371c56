"""Weights into models (boat_vit.weights): one loader, one filter per family, the same rules on every path."""
import pytest
import timm
import torch
import torch.nn as nn

from boat_vit.errors import CheckpointError, WeightsMismatchError
from boat_vit.models import boat_cswin, boat_swin, weights_filter
from boat_vit.seg import BoatUPerNet, load_backbone_weights
from boat_vit.weights import BACKBONE_PART, load_weights, select_state_dict
from tiny_data import SWIN, TINY_SWIN

FAMILIES = [
    ("boat_swin_tiny_patch4_window7_224", dict(embed_dim=16, depths=(1, 1), num_heads=(1, 2), img_size=32,
                                               window_size=4, patch_size=2), boat_swin.checkpoint_filter_fn),
    ("boat_cswin_tiny_224", dict(embed_dim=16, depths=(1, 1), num_heads=(2, 2), split_size=(1, 2), img_size=32),
     boat_cswin.checkpoint_filter_fn),
]


@pytest.fixture
def foreign_file(tmp_path):
    """The weights of another model (a small convolutional network)."""
    path = tmp_path / "resnet_like.pth"
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 1000))
    torch.save(net.state_dict(), path)
    return path


@pytest.mark.parametrize("name, kwargs, family_filter", FAMILIES, ids=["swin", "cswin"])
def test_each_family_has_one_filter(name, kwargs, family_filter):
    model = timm.create_model(name, **kwargs)
    assert weights_filter(model) is family_filter
    assert not model._load_state_dict_pre_hooks  # no second conversion route inside load_state_dict
    assert weights_filter(nn.Linear(2, 2)) is None


@pytest.mark.parametrize("name, kwargs, _", FAMILIES, ids=["swin", "cswin"])
def test_timm_pretrained_loading_refuses_another_models_file(name, kwargs, _, foreign_file):
    # another class count makes timm load non-strictly: without the rule this returned a random model
    with pytest.raises(WeightsMismatchError, match=r"the pretrained checkpoint gives only 0% of the weights of "
                                                   rf"{name} \(another model\?\); a partial load needs pretrained_strict=False"):
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(foreign_file)), num_classes=2,
                          **kwargs)
    with pytest.raises(WeightsMismatchError, match="gives only 0%"):  # the same class count: refused as well
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(foreign_file)), **kwargs)
    # the explicit opt-out: timm's own switch for a partial pretrained load
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(foreign_file)),
                              num_classes=2, pretrained_strict=False, **kwargs)
    assert model.num_classes == 2


@pytest.mark.parametrize("name, kwargs, _", FAMILIES, ids=["swin", "cswin"])
def test_every_other_loading_path_refuses_another_models_file(name, kwargs, _, foreign_file):
    model = timm.create_model(name, num_classes=2, **kwargs)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsMismatchError, match="with no place in the model"):
        load_weights(model, foreign_file, weights_filter(model))
    with pytest.raises(RuntimeError, match="Missing key"):  # checkpoint_path=: timm loads strictly
        timm.create_model(name, num_classes=2, checkpoint_path=str(foreign_file), **kwargs)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing loaded


@pytest.mark.parametrize("name, kwargs, _", FAMILIES, ids=["swin", "cswin"])
def test_partial_files_need_allow_partial(name, kwargs, _, tmp_path):
    source = timm.create_model(name, **kwargs)
    first_stage = {k: v for k, v in source.state_dict().items() if k.startswith(("patch_embed.", "layers.0.",
                                                                                  "stages.0."))}
    path = tmp_path / "first_stage.pth"
    torch.save(first_stage, path)
    model = timm.create_model(name, **kwargs)
    with pytest.raises(WeightsMismatchError, match=r"gives only \d+% of the weights .*allow_partial=True"):
        load_weights(model, path, weights_filter(model))
    report = load_weights(model, path, weights_filter(model), allow_partial=True)
    assert sorted(report.loaded) == sorted(first_stage) and report.initial


def _segmentation_run_checkpoint(path, seed: int = 0) -> BoatUPerNet:
    """A checkpoint as ``seg-train`` writes it: the segmenter's weights and how they hold the backbone."""
    torch.manual_seed(seed)
    segmenter = BoatUPerNet(SWIN, 3, TINY_SWIN, decoder_channels=16, aux_channels=8)
    torch.save({"model": segmenter.state_dict(), "config": {}, "metrics": [],
                BACKBONE_PART: segmenter.backbone_part()}, path)
    return segmenter


def test_a_segmentation_checkpoint_gives_its_backbone_where_a_backbone_is_loaded(tmp_path):
    path = tmp_path / "best.pth"
    trained = _segmentation_run_checkpoint(path, seed=1)
    fresh = BoatUPerNet(SWIN, 5, TINY_SWIN, decoder_channels=16, aux_channels=0)
    report = load_backbone_weights(fresh, path)
    assert report.entry == "model (backbone)" and not report.initial and not report.unused
    assert len(report.loaded) == len(fresh.backbone.state_dict())
    for key, tensor in fresh.backbone.state_dict().items():
        assert torch.equal(tensor, trained.backbone.state_dict()[key]), key
    # the backbone part is in the backbone architecture's own names: a classifier could take it as a backbone
    part, _ = select_state_dict(torch.load(path, weights_only=True), source=path, backbone=True)
    assert set(part) == set(timm.create_model(SWIN, num_classes=0, **TINY_SWIN).state_dict()) - {"norm.weight",
                                                                                                  "norm.bias"}


def test_a_segmentation_checkpoint_is_refused_where_a_whole_model_is_loaded(tmp_path):
    path = tmp_path / "best.pth"
    _segmentation_run_checkpoint(path)
    classifier = timm.create_model(SWIN, num_classes=2, **TINY_SWIN)
    with pytest.raises(CheckpointError, match=r"best\.pth is a segmentation training checkpoint: only its backbone"):
        load_weights(classifier, path, weights_filter(classifier), reset_head=True, allow_partial=True)
