"""Every supported weights file layout through every way of loading one: the same weights arrive each time.

The layouts are the containers weights come in (a released Swin-style ``{"model": ...}``, a CSWin-style
training file with ``state_dict`` and ``state_dict_ema``, a bare state dict, a DDP-wrapped one, safetensors,
a boat-vit training checkpoint); the loaders are the library functions and commands that take a weights file.
"""
import ast
import json
from pathlib import Path

import pytest
import timm
import torch

from boat_vit.files import save_safetensors
from boat_vit.models import weights_filter
from boat_vit.weights import convert_checkpoint, load_weights
from boat_vit.classification import create_classifier
from boat_vit.cli import main as cli_main
from boat_vit.seg import BoatUPerNet, load_backbone_weights
from tiny_data import CSWIN, SEG_TRAIN_ARGS, SWIN, TINY_CSWIN, TINY_MODEL, TINY_SWIN, train_args

MODEL = TINY_MODEL[1]
MODEL_KWARGS = json.loads(TINY_MODEL[3])
NUM_CLASSES = 2  # the shapes data
SOURCE = Path(__file__).parents[1] / "src" / "boat_vit"
LAYOUTS = ("released_swin.pth", "released_cswin.pth", "bare.pth", "ddp.pth", "weights.safetensors", "run.pth")


def _write_layouts(state_dict: dict[str, torch.Tensor], folder: Path) -> dict[str, Path]:
    """``state_dict`` in every layout (a file name of :data:`LAYOUTS` each)."""
    folder.mkdir()
    contents = {
        "released_swin.pth": {"model": state_dict},
        "released_cswin.pth": {"state_dict": state_dict, "state_dict_ema": state_dict, "epoch": 300},
        "bare.pth": state_dict,
        "ddp.pth": {"state_dict": {f"module.{k}": v for k, v in state_dict.items()}},
        "run.pth": {"model": state_dict, "epoch": 0, "config": {}, "class_names": ["a", "b"]},
    }
    for name, content in contents.items():
        torch.save(content, folder / name)
    save_safetensors(state_dict, folder / "weights.safetensors")
    return {name: folder / name for name in LAYOUTS}


def _seeded(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Fills ``module``'s floating tensors with seeded values; returns its state dict."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.02)
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def classifier_files(tmp_path_factory) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    model = timm.create_model(MODEL, num_classes=NUM_CLASSES, **MODEL_KWARGS)
    weights = _seeded(model, 0)
    return weights, _write_layouts(weights, tmp_path_factory.mktemp("classifier") / "files")


def _assert_equal(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert set(actual) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(actual[key], tensor), key


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_library_loaders_take_every_layout(layout, classifier_files, tmp_path):
    weights, files = classifier_files
    model, report = create_classifier(MODEL, NUM_CLASSES, weights=str(files[layout]), **MODEL_KWARGS)
    _assert_equal(weights, model.state_dict())
    assert not report.initial and not report.unused

    model = timm.create_model(MODEL, num_classes=NUM_CLASSES, **MODEL_KWARGS)
    load_weights(model, files[layout], weights_filter(model))
    _assert_equal(weights, model.state_dict())

    target = timm.create_model(MODEL, num_classes=NUM_CLASSES, **MODEL_KWARGS)
    convert_checkpoint(files[layout], tmp_path / "converted.safetensors", target, weights_filter(target))
    model = timm.create_model(MODEL, num_classes=NUM_CLASSES, checkpoint_path=str(tmp_path / "converted.safetensors"),
                              **MODEL_KWARGS)
    _assert_equal(weights, model.state_dict())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_train_takes_every_layout(layout, classifier_files, shapes_folder, tmp_path, capsys):
    weights, files = classifier_files
    assert cli_main(train_args(shapes_folder, tmp_path / "run", 1, "--pretrained-file", str(files[layout]))) == 0
    assert f"{len(weights)} tensors loaded, 0 left initial, 0 unused" in capsys.readouterr().out


def test_the_deprecated_initial_checkpoint_takes_a_cswin_style_file(classifier_files, shapes_folder, tmp_path,
                                                                     capsys):
    weights, files = classifier_files
    args = train_args(shapes_folder, tmp_path / "run", 1, "--initial-checkpoint", str(files["released_cswin.pth"]))
    assert cli_main(args) == 0
    captured = capsys.readouterr()
    assert "--initial-checkpoint is deprecated; use --pretrained-file" in captured.err
    assert f"{len(weights)} tensors loaded, 0 left initial, 0 unused" in captured.out


@pytest.mark.parametrize("backbone, kwargs", [(SWIN, TINY_SWIN), (CSWIN, TINY_CSWIN)])
def test_the_segmentation_backbone_takes_every_layout(backbone, kwargs, tmp_path):
    weights = _seeded(timm.create_model(backbone, **kwargs), 1)
    files = _write_layouts(weights, tmp_path / "files")
    loaded = []
    for layout in LAYOUTS:
        segmenter = BoatUPerNet(backbone, num_classes=3, backbone_kwargs=kwargs, decoder_channels=16, aux_channels=0)
        report = load_backbone_weights(segmenter, files[layout])
        assert not report.initial, layout
        own = segmenter.backbone.state_dict()
        for key, tensor in own.items():
            assert torch.equal(tensor, weights[segmenter.backbone_names.classifier_key(key)]), (layout, key)
        loaded.append(sorted(report.loaded))
    assert all(names == loaded[0] for names in loaded)


@pytest.mark.parametrize("layout", ["released_cswin.pth", "weights.safetensors"])
def test_seg_train_takes_the_backbone_in_any_layout(layout, ade_shapes, tmp_path, capsys):
    weights = _seeded(timm.create_model(SWIN, **TINY_SWIN), 2)
    files = _write_layouts(weights, tmp_path / "files")
    args = ["seg-train", *SEG_TRAIN_ARGS, "--data", str(ade_shapes), "--output", str(tmp_path / "run"),
            "--backbone-weights", str(files[layout]), "--iterations", "1", "--eval-interval", "1",
            "--checkpoint-interval", "1"]
    assert cli_main(args) == 0
    assert " 0 left initial" in capsys.readouterr().out


def test_checkpoint_files_are_read_in_one_place():
    """Only ``files.py`` unpickles or opens weights files (``torch.load``, pickle, safetensors)."""
    readers = ("pickle", "safetensors")
    offenders = []
    for path in SOURCE.rglob("*.py"):
        if path.name == "files.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            imported = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                        else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            torch_load = (isinstance(node, ast.Attribute) and node.attr == "load" and isinstance(node.value, ast.Name)
                          and node.value.id == "torch")
            if torch_load or any(name.split(".")[0] in readers for name in imported):
                offenders.append(f"{path.relative_to(SOURCE)}:{node.lineno}")
    assert not offenders
