"""Safe reading of checkpoint files (boat_vit.files, boat_vit.weights): released formats, key choice, refusal of
code."""
import argparse
import logging
import os
import pickle
import random
import re
import stat
import sys
import types
from collections import OrderedDict

import pytest
import timm
import torch
import torch.nn as nn

import boat_vit.models.boat_swin  # noqa: F401  (registers the models)
from boat_vit.errors import Argument, CheckpointError, UnsafeCheckpointError, WeightsMismatchError
from boat_vit.files import NOT_A_CHECKPOINT, atomic_write, read_checkpoint, save_safetensors, save_torch, write_text
from boat_vit.weights import STATE_DICT_KEYS, fill_missing_from_model, read_state_dict, select_state_dict

MINI_SWIN = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), img_size=112, num_classes=10)


@pytest.fixture
def yacs_cfg_node(monkeypatch):
    """A class pickled as ``yacs.config.CfgNode`` (a dict subclass with internal state, like yacs's)."""

    class CfgNode(dict):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.__dict__["__immutable__"] = True
            self.__dict__["__deprecated_keys__"] = {"OLD.KEY"}

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    module = types.ModuleType("yacs.config")
    module.CfgNode = CfgNode
    package = types.ModuleType("yacs")
    package.config = module
    monkeypatch.setitem(sys.modules, "yacs", package)
    monkeypatch.setitem(sys.modules, "yacs.config", module)
    return CfgNode


def _tiny_state_dict() -> dict:
    return {"weight": torch.arange(6.0).view(2, 3), "bias": torch.ones(2)}


def test_yacs_config_loads_as_plain_data(tmp_path, yacs_cfg_node):
    path = tmp_path / "swin_style.pth"
    config = yacs_cfg_node(MODEL=yacs_cfg_node(TYPE="swin", DEPTHS=[2, 2, 6, 2]), DATA=yacs_cfg_node(IMG_SIZE=224))
    torch.save({"model": _tiny_state_dict(), "config": config, "epoch": 299, "max_accuracy": 81.5}, path)
    # loading must not need (or import) yacs
    del sys.modules["yacs.config"], sys.modules["yacs"]

    checkpoint = read_checkpoint(path)

    assert "yacs" not in sys.modules
    assert type(checkpoint["config"]) is OrderedDict
    assert type(checkpoint["config"]["MODEL"]) is OrderedDict
    assert checkpoint["config"] == {"MODEL": {"TYPE": "swin", "DEPTHS": [2, 2, 6, 2]}, "DATA": {"IMG_SIZE": 224}}
    assert checkpoint["epoch"] == 299
    state_dict, key = select_state_dict(checkpoint)
    assert key == "model"
    assert torch.equal(state_dict["weight"], _tiny_state_dict()["weight"])


def test_cswin_style_file_with_namespace_args(tmp_path):
    path = tmp_path / "cswin_style.pth.tar"
    raw, ema = _tiny_state_dict(), {k: v + 1 for k, v in _tiny_state_dict().items()}
    args = argparse.Namespace(model="CSWin_64_12211_tiny_224", lr=2e-3, model_ema_decay=0.99984)
    torch.save({"epoch": 309, "arch": args.model, "state_dict": raw, "state_dict_ema": ema, "args": args}, path)

    checkpoint = read_checkpoint(path)
    assert checkpoint["args"].model_ema_decay == 0.99984

    default, default_key = read_state_dict(path)
    chosen, chosen_key = read_state_dict(path, key="state_dict")
    assert (default_key, chosen_key) == ("state_dict_ema", "state_dict")
    assert torch.equal(default["bias"], ema["bias"]) and torch.equal(chosen["bias"], raw["bias"])


def test_namespace_still_loads_after_a_timm_load(tmp_path):
    # timm's loader wraps torch.load in safe_globals([argparse.Namespace]), which unregisters it on exit
    path = tmp_path / "cswin_style.pth.tar"
    torch.save({"state_dict": _tiny_state_dict(), "args": argparse.Namespace(lr=1e-3)}, path)
    timm.models.load_state_dict(str(path))
    assert read_checkpoint(path)["args"].lr == 1e-3


def test_key_preference_matches_timm_and_reports_the_choice(tmp_path, caplog):
    assert STATE_DICT_KEYS[0] == "state_dict_ema"  # timm's loader prefers EMA weights too
    path = tmp_path / "both.pth"
    torch.save({"state_dict": _tiny_state_dict(), "state_dict_ema": None}, path)  # timm saver without EMA
    with caplog.at_level(logging.INFO, logger="boat_vit.weights"):
        _, key = read_state_dict(path)
    assert key == "state_dict"
    assert f"under 'state_dict' of {path}" in caplog.text


def test_plain_state_dict_and_wrapper_prefixes():
    state_dict, key = select_state_dict({f"module.{k}": v for k, v in _tiny_state_dict().items()})
    assert key == ""
    assert sorted(state_dict) == ["bias", "weight"]


def test_missing_key_and_non_state_dict_errors():
    with pytest.raises(CheckpointError, match=r"no state dict under 'model'; state dicts found under: \['state_dict'\]"):
        select_state_dict({"state_dict": _tiny_state_dict(), "epoch": 3}, key="model")
    with pytest.raises(CheckpointError, match=r"is not a state dict: \['epoch', 'net'\] hold no tensors"):
        select_state_dict({"net": _tiny_state_dict(), "epoch": 3})
    with pytest.raises(CheckpointError, match="expected a checkpoint dict, got list"):
        select_state_dict([1, 2])


class _Payload:
    """Pickles as a call of ``os.system``: loading it must fail before the call."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_not_run(tmp_path):
    path, marker = tmp_path / "evil.pth", tmp_path / "pwned"
    torch.save({"model": _tiny_state_dict(), "config": _Payload(marker)}, path)

    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load .*evil\.pth: its pickle needs posix\.system"):
        read_checkpoint(path)
    with pytest.raises(RuntimeError, match="blocked loading this checkpoint"):  # timm's own loader, same rules
        timm.create_model(
            "boat_swin_tiny_patch4_window7_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **MINI_SWIN
        )
    assert not marker.exists()


class _UnknownConfig:
    pass


def test_unknown_class_is_refused(tmp_path):
    path = tmp_path / "custom.pth"
    torch.save({"model": _tiny_state_dict(), "config": _UnknownConfig()}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"needs test_files\._UnknownConfig"):
        read_checkpoint(path)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint file not found: .*nothing.pth"):
        read_checkpoint(tmp_path / "nothing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read .*garbage.pth as a checkpoint"):
        read_checkpoint(garbage)


def test_fill_missing_from_model_only_for_an_absent_branch(caplog):
    model = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    belongs = lambda key: key.startswith("1.")  # noqa: E731
    partial = {"0.weight": torch.zeros(2, 2), "0.bias": torch.zeros(2)}
    with caplog.at_level(logging.WARNING):
        added = fill_missing_from_model(partial, model, belongs, "norm")
    assert added == ["1.weight", "1.bias"]
    assert "no norm weights; these 2 keys keep their fresh initialisation: 1.weight, 1.bias" in caplog.text
    model.load_state_dict(partial)  # strict

    some = {"0.weight": torch.zeros(2, 2), "0.bias": torch.zeros(2), "1.weight": torch.ones(2)}
    assert fill_missing_from_model(some, model, belongs, "norm") == []
    assert "1.bias" not in some


NOISE = random.Random(0).randbytes(4095)


@pytest.mark.parametrize("content", [bytes([first]) + NOISE for first in range(256)]
                         + [b"\x80\x02" + bytes(range(256)) * 4],
                         ids=[f"byte {first:#04x}, then noise" for first in range(256)]
                         + ["pickle protocol mark, then garbage"])
def test_random_bytes_are_an_unreadable_file_not_an_unsafe_pickle(tmp_path, content):
    """Every first byte: the unpickler meets another opcode, and may stop with any error; the message is the same."""
    path = tmp_path / "noise.pth"
    path.write_bytes(content)
    expected = rf"cannot read .*noise\.pth as a checkpoint: {re.escape(NOT_A_CHECKPOINT)} \("
    with pytest.raises(CheckpointError, match=expected) as caught:
        read_checkpoint(path)
    assert not isinstance(caught.value, UnsafeCheckpointError)


def test_legacy_format_pickle_naming_code_is_unsafe(tmp_path):
    path, marker = tmp_path / "evil_legacy.pth", tmp_path / "pwned"
    torch.save({"config": _Payload(marker)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError, match=r"its pickle needs posix\.system"):
        read_checkpoint(path)
    assert not marker.exists()


# ---- writing ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_gives_new_files_the_umask_permissions(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        written = [atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x")), write_text(tmp_path / "b.txt", "x"),
                   save_torch({"x": torch.ones(1)}, tmp_path / "c.pth")]
    finally:
        os.umask(previous)
    assert [stat.S_IMODE(path.stat().st_mode) for path in written] == [mode] * 3


def test_atomic_write_errors_name_the_file_not_the_temporary_one(tmp_path):
    target = tmp_path / "out.safetensors"
    target.mkdir()
    (target / "keep").write_text("a folder in the way")  # the rename over it fails
    with pytest.raises(OSError) as caught:
        save_safetensors({"x": torch.ones(2)}, target)
    assert str(target) in str(caught.value) and ".tmp" not in str(caught.value)
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]  # no temporary file left

    with pytest.raises(OSError) as caught:
        write_text(tmp_path / "missing" / "out.json", "{}")
    assert str(tmp_path / "missing" / "out.json") in str(caught.value) and ".tmp" not in str(caught.value)


def test_errors_name_python_arguments_and_survive_pickling():
    error = WeightsMismatchError("x.pth has a 10-class head; pass ", Argument("reset_head", True), " or change ",
                                 Argument("num_classes"))
    assert str(error) == "x.pth has a 10-class head; pass reset_head=True or change num_classes"
    assert error.message(lambda a: "--" + a.name.replace("_", "-")) == \
        "x.pth has a 10-class head; pass --reset-head or change --num-classes"
    copy = pickle.loads(pickle.dumps(error))  # as a data worker or another process sends it
    assert type(copy) is WeightsMismatchError and str(copy) == str(error) and copy.parts == error.parts
    assert isinstance(copy, ValueError) and not copy.parts[3].has_value
