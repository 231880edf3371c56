"""``boat-vit convert``: released files -> safetensors in our layout, loadable with ``checkpoint_path=``."""
import json

import pytest
import safetensors
import timm
import torch

import boat_vit.models.boat_swin  # noqa: F401  (registers the models)
from boat_vit.models import weights_filter
from boat_vit.weights import convert_checkpoint
from boat_vit.cli import USAGE_ERROR, main

TINY = "boat_swin_tiny_patch4_window7_224"
REFERENCE_MINI = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), num_classes=10)
SMALL = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), num_classes=10, img_size=112)
EXACT_64 = 1e-9


@pytest.fixture
def released_mini(reference, tmp_path):
    """The reference BOAT-Swin weights as a CSWin-style training file (raw and EMA weights)."""
    ref = reference("boat_swin_mini")
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in ref["state_dict"].items()}
    path = tmp_path / "mini.pth.tar"
    torch.save({"state_dict": ref["state_dict"], "state_dict_ema": ema, "epoch": 1}, path)
    return ref, path


def test_cli_convert_then_checkpoint_path_reproduces_reference(released_mini, tmp_path, capsys):
    ref, src = released_mini
    out = tmp_path / "mini.safetensors"
    args = ["convert", str(src), str(out), "--model", TINY, "--key", "state_dict", "--model-kwargs",
            json.dumps(REFERENCE_MINI)]
    assert main(args) == 0
    assert f"wrote {out} ({TINY}, weights from entry 'state_dict' of {src})" in capsys.readouterr().out
    # the older spelling of the option still works and says so
    older = ["convert", str(src), str(tmp_path / "older.safetensors"), "--model", TINY, "--model-args",
             json.dumps(REFERENCE_MINI)]
    assert main(older) == 0
    assert "warning: --model-args is deprecated; use --model-kwargs" in capsys.readouterr().err

    with safetensors.safe_open(out, "pt") as handle:
        metadata, keys = handle.metadata(), set(handle.keys())
    assert metadata["model"] == TINY and metadata["source_key"] == "state_dict"
    assert json.loads(metadata["model_kwargs"]) == json.loads(json.dumps(REFERENCE_MINI))
    assert not any(k.endswith(("relative_position_index", "attn_mask")) or ".attnC." in k for k in keys)
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary files were renamed into place

    model = timm.create_model(TINY, checkpoint_path=str(out), **REFERENCE_MINI).double().eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ref["input"].double()), ref["output"], rtol=0, atol=EXACT_64)


def test_default_key_is_ema_like_timm(released_mini, tmp_path):
    ref, src = released_mini
    model = timm.create_model(TINY, **REFERENCE_MINI)
    metadata = convert_checkpoint(src, tmp_path / "ema.safetensors", model, weights_filter(model))
    assert metadata["source_key"] == "state_dict_ema"
    with safetensors.safe_open(tmp_path / "ema.safetensors", "pt") as handle:
        head = handle.get_tensor("head.fc.bias")
    torch.testing.assert_close(head, ref["state_dict"]["head.bias"] + 1)


def _run_error(args, capsys) -> str:
    assert main(["convert", *args]) == USAGE_ERROR
    return capsys.readouterr().err


def test_errors(released_mini, tmp_path, capsys):
    _, src = released_mini
    out = str(tmp_path / "out.safetensors")
    mini_args = ["--model-kwargs", json.dumps(REFERENCE_MINI)]

    err = _run_error([str(tmp_path / "missing.pth"), out, "--model", TINY], capsys)
    assert "error: checkpoint file not found:" in err and "missing.pth" in err

    err = _run_error([str(src), out, "--model", "boat_swin_huge"], capsys)
    assert "error: unknown model 'boat_swin_huge'; did you mean " in err

    err = _run_error([str(src), out, "--model", TINY], capsys)  # mini weights, default tiny config
    assert f"does not fit {TINY} (another size or family? check the model and its arguments): " in err
    assert "68 missing keys" in err and "0 unexpected keys" in err  # stage 3: 6 blocks, not 2
    assert "shape mismatches ['patch_embed.proj.weight: (32, 3, 4, 4) in the file" in err

    err = _run_error([str(src), out, "--model", TINY, "--key", "model", *mini_args], capsys)
    assert "no state dict under 'model'" in err

    err = _run_error([str(src), str(tmp_path / "out.pth"), "--model", TINY], capsys)
    assert "output must end in .safetensors" in err

    assert main(["convert", str(src), out, "--model", TINY, *mini_args]) == 0
    err = _run_error([str(src), out, "--model", TINY, *mini_args], capsys)
    assert "output exists (pass --overwrite to replace it)" in err
    assert main(["convert", str(src), out, "--model", TINY, "--overwrite", *mini_args]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mini.pth.tar", "out.safetensors"]


def test_plain_state_dict_in_our_layout_round_trips(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model(TINY, **SMALL)
    src = tmp_path / "ours.pth"
    torch.save(model.state_dict(), src)
    target = timm.create_model(TINY, **SMALL)
    convert_checkpoint(src, tmp_path / "ours.safetensors", target, weights_filter(target), key="")
    loaded = timm.create_model(TINY, checkpoint_path=str(tmp_path / "ours.safetensors"), **SMALL)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
