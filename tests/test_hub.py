"""Hugging Face Hub folders: ``boat-vit convert IN --hub-dir OUT`` writes what ``timm.create_model("local-dir:OUT",
pretrained=True)`` loads, for released files of both families and for a training run at its own input size."""
import json
import os
from pathlib import Path

import pytest
import timm
import torch

from boat_vit.classification import load_classifier
from boat_vit.cli import main as cli_main
from boat_vit.files import atomic_folder, read_checkpoint
from boat_vit.models import weights_filter
from boat_vit.weights import load_weights
from test_boat_cswin import released_layout
from tiny_data import CSWIN, SWIN, TINY_MODEL, train_args

HUB_FILES = ["README.md", "config.json", "model.safetensors"]
ARGS = {
    SWIN: dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), num_classes=10),  # the reference mini
    CSWIN: dict(embed_dim=16, depths=(1, 2, 1, 1), num_heads=(2, 2, 4, 4), num_classes=7),
}


@pytest.fixture(scope="module")
def released_files(reference, tmp_path_factory) -> dict[str, Path]:
    """Released-layout files: the released code's reference BOAT-Swin weights ``{'model': ...}`` and a CSWin-style
    ``{'state_dict', 'state_dict_ema'}`` file."""
    folder = tmp_path_factory.mktemp("released")
    torch.save({"model": reference("boat_swin_mini")["state_dict"], "epoch": 299}, folder / "tiny.pth")
    torch.manual_seed(0)
    model = timm.create_model(CSWIN, **ARGS[CSWIN])
    layout = {k: v.clone() for k, v in released_layout(model).items()}
    torch.save({"state_dict": layout, "state_dict_ema": layout, "epoch": 309}, folder / "cswin_tiny.pth.tar")
    return {SWIN: folder / "tiny.pth", CSWIN: folder / "cswin_tiny.pth.tar"}


def _logits(model: torch.nn.Module, size: int = 224) -> torch.Tensor:
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.eval()(images)


def _card(folder: Path) -> str:
    return (folder / "README.md").read_text()


@pytest.mark.parametrize("name", [SWIN, CSWIN])
def test_a_released_file_becomes_a_folder_timm_loads(name, released_files, tmp_path, capsys):
    out = tmp_path / "hub"
    args = ["convert", str(released_files[name]), "--hub-dir", str(out), "--model", name,
            "--model-kwargs", json.dumps(ARGS[name])]
    assert cli_main(args) == 0
    assert f'timm.create_model("local-dir:{out}", pretrained=True) loads it' in capsys.readouterr().out
    assert sorted(os.listdir(out)) == HUB_FILES and sorted(os.listdir(tmp_path)) == ["hub"]

    hand = timm.create_model(name, **ARGS[name])
    load_weights(hand, released_files[name], weights_filter(hand))
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert torch.equal(_logits(loaded), _logits(hand))

    card = _card(out)
    params = sum(p.numel() for p in hand.parameters()) / 1e6
    for line in ("license: mit", f"- **Architecture:** {name}", f"  - Params (M): {params:.2f}", "  - GMACs: ",
                 "  - Image size: 224 x 224", "  - mean: (0.485, 0.456, 0.406)", "  - std: (0.229, 0.224, 0.225)",
                 "https://arxiv.org/abs/2201.13027", f"- **Weights:** {released_files[name].name} (entry "):
        assert line in card, line
    assert "Accuracy" not in card  # nothing was measured
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == name and config["num_classes"] == ARGS[name]["num_classes"]
    assert config["pretrained_cfg"]["notes"] == [f"Weights: {released_files[name].name} (entry "
                                                 f"'{'model' if name == SWIN else 'state_dict_ema'}')."]


@pytest.fixture(scope="module")
def run(shapes_folder, tmp_path_factory) -> Path:
    """A one-epoch run of the tiny BOAT-Swin at 16x16 (not the architecture's 224) with an EMA."""
    folder = tmp_path_factory.mktemp("run") / "run"
    assert cli_main(train_args(shapes_folder, folder, 1, "--ema-decay", "0.5")) == 0
    return folder


@pytest.mark.parametrize("ema", [False, True])
def test_a_training_run_becomes_a_folder_at_its_own_size(ema, run, tmp_path, capsys):
    out = tmp_path / "hub"
    assert cli_main(["convert", str(run / "best.pth"), "--hub-dir", str(out), *(["--ema"] if ema else [])]) == 0
    trained, class_names, _ = load_classifier(str(run / "best.pth"), use_ema=ema)
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert torch.equal(_logits(loaded, 16), _logits(trained, 16))

    config = json.loads((out / "config.json").read_text())
    kwargs = json.loads(TINY_MODEL[3])
    assert config["model_args"]["img_size"] == [16, 16] and config["pretrained_cfg"]["input_size"] == [3, 16, 16]
    assert all(config["model_args"][key] == value for key, value in kwargs.items() if key != "img_size")
    assert config["label_names"] == class_names == ["circle", "square"]
    row = read_checkpoint(run / "best.pth")["metrics"][-1]
    prefix = "ema_" if ema else ""
    assert (f"- **Accuracy:** top-1 {row[prefix + 'top1']:.2f}%, top-5 {row[prefix + 'top5']:.2f}% on the validation "
            "split of ") in _card(out)
    assert f"- **Weights:** best.pth of the training run run{' (EMA weights)' if ema else ''}" in _card(out)
    assert "  - Image size: 16 x 16" in _card(out)


def test_an_existing_folder_is_kept_unless_overwrite(run, tmp_path, capsys):
    out = tmp_path / "hub"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert cli_main(["convert", str(run / "best.pth"), "--hub-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"boat-vit convert: error: --hub-dir {out} exists; pass --overwrite to replace it"
    assert (out / "mine.txt").read_text() == "keep me"
    assert cli_main(["convert", str(run / "best.pth"), "--hub-dir", str(out), "--overwrite"]) == 0
    assert sorted(os.listdir(out)) == HUB_FILES and sorted(os.listdir(tmp_path)) == ["hub"]


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_a_planted_link_at_the_hub_folder_is_replaced_never_followed(kind, run, tmp_path, capsys):
    """A link at ``--hub-dir`` to a folder or file elsewhere: refused in one line without --overwrite, replaced
    by the hub folder with it; what it points to is left as it was."""
    elsewhere = tmp_path / "elsewhere"
    if kind == "folder":
        elsewhere.mkdir()
        (elsewhere / "config.json").write_text("someone else's folder")
    else:
        elsewhere.write_text("someone else's file")
    out = tmp_path / "hub"
    out.symlink_to(elsewhere)
    assert cli_main(["convert", str(run / "best.pth"), "--hub-dir", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"boat-vit convert: error: --hub-dir {out} exists; pass --overwrite to " \
                                              "replace it"
    assert cli_main(["convert", str(run / "best.pth"), "--hub-dir", str(out), "--overwrite"]) == 0
    assert not out.is_symlink() and sorted(os.listdir(out)) == HUB_FILES
    assert sorted(os.listdir(tmp_path)) == ["elsewhere", "hub"]
    if kind == "folder":
        assert os.listdir(elsewhere) == ["config.json"]
        assert (elsewhere / "config.json").read_text() == "someone else's folder"
    else:
        assert elsewhere.read_text() == "someone else's file"


def test_a_hub_folder_is_checked_before_the_work(run, tmp_path, capsys):
    out = tmp_path / "missing" / "hub"
    assert cli_main(["convert", str(run / "best.pth"), "--hub-dir", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (f"boat-vit convert: error: --hub-dir {out}: the folder {out.parent} "
                                               "does not exist")
    (tmp_path / "file").write_text("a file")
    assert cli_main(["convert", str(run / "best.pth"), "--hub-dir", str(tmp_path / "file"), "--overwrite"]) == 2
    assert capsys.readouterr().err.strip().endswith("file is a file; give a folder name")
    assert (tmp_path / "file").read_text() == "a file"


@pytest.mark.parametrize("args, message", [
    ([], "give OUT (a safetensors file) or --hub-dir FOLDER, one of them"),
    (["{run}/x.safetensors", "--hub-dir", "{out}"], "give OUT (a safetensors file) or --hub-dir FOLDER, one of them"),
    (["--hub-dir", "{out}", "--key", "model"], "a training run checkpoint brings its own model and weights; drop "
                                                "--model-kwargs and --key (or name the model with --model)"),
    (["--hub-dir", "{out}", "--model", CSWIN], f"does not fit {CSWIN}"),
    (["{run}/x.safetensors", "--model", SWIN, "--ema"], "--ema picks the EMA weights of a training run checkpoint"),
    (["--hub-dir", "{out}", "--model", SWIN, "--model-kwargs", TINY_MODEL[3]], "2 shape mismatches ['head.fc.weight: "
                                                                            "(2, 32) in the file, (1000, 32)"),
])
def test_bad_conversions_are_one_line(args, message, run, tmp_path, capsys):
    args = [a.replace("{run}", str(run)).replace("{out}", str(tmp_path / "hub")) for a in args]
    assert cli_main(["convert", str(run / "best.pth"), *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "hub").exists()


def test_a_file_that_does_not_give_the_whole_model_is_refused(run, tmp_path, capsys):
    weights = {k: v for k, v in read_checkpoint(run / "best.pth")["model"].items() if not k.startswith("norm.")}
    torch.save(weights, tmp_path / "partial.pth")
    model_kwargs = json.dumps(dict(json.loads(TINY_MODEL[3]), num_classes=2))
    args = ["convert", str(tmp_path / "partial.pth"), "--hub-dir", str(tmp_path / "hub"), "--model", SWIN,
            "--model-kwargs", model_kwargs]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert f"partial.pth does not fit {SWIN} (another size or family? check the model and its arguments): 2 " \
           "missing keys ['norm.weight', 'norm.bias']" in err
    assert not (tmp_path / "hub").exists()


def test_a_failed_folder_write_leaves_the_old_folder(tmp_path):
    old = tmp_path / "hub"
    old.mkdir()
    (old / "config.json").write_text("old")

    def fill(folder: Path) -> None:
        (folder / "config.json").write_text("new")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        atomic_folder(old, fill)
    assert os.listdir(tmp_path) == ["hub"] and (old / "config.json").read_text() == "old"
    atomic_folder(old, lambda folder: (folder / "config.json").write_text("new"))
    assert os.listdir(tmp_path) == ["hub"] and (old / "config.json").read_text() == "new"
    assert oct(old.stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
