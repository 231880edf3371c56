"""Training, evaluation and prediction: recipes, data, exact resume, distributed equality, bad input."""
import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from boat_vit.cli import main as cli_main
from boat_vit.files import read_checkpoint as load_checkpoint
from boat_vit.classification import resolve_config
from boat_vit.classification.data import DigitsDataset, build_datasets
from boat_vit.engine import GlobalBatchSampler, SeededSamples, ShardSampler, seed_everything
from boat_vit.errors import ConfigError, WeightsMismatchError
from tiny_data import SHAPES, TINY_MODEL, TINY_RECIPE, train_args as _train_args


def _final_weights(run: Path) -> dict:
    return load_checkpoint(run / "last.pth")["model"]


def _assert_same_weights(a: dict, b: dict, atol: float = 0.0):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=atol, rtol=0), key


def test_presets_and_overrides():
    swin = resolve_config(dict(preset="boat_swin", model="boat_swin_small_patch4_window7_224"))
    assert swin.lr == pytest.approx(5e-4 * 1024 / 512) and swin.drop_path == 0.3 and swin.clip_grad == 5.0
    assert (swin.epochs, swin.warmup_epochs, swin.mixup, swin.cutmix, swin.ema_decay) == (300, 20, 0.8, 1.0, None)
    cswin = resolve_config(dict(preset="boat_cswin", model="boat_cswin_base_224", batch_size=512))
    assert cswin.lr == pytest.approx(1e-3 * 512 / 1024) and cswin.weight_decay == 0.1
    assert cswin.ema_decay == 0.99992 and cswin.drop_path == 0.5 and cswin.cooldown_epochs == 10
    assert resolve_config(dict(preset="boat_swin", lr=0.1, drop_path=0.0)).lr == 0.1
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        resolve_config(dict(preset="nope"))


def test_weights_options_need_a_weights_file():
    not_given = "applies to pretrained_file and pretrained=True, which are not given"
    with pytest.raises(ConfigError, match=f"reset_head {not_given}"):
        resolve_config(dict(reset_head=True))
    with pytest.raises(ConfigError, match=f"partial_weights {not_given}"):
        resolve_config(dict(partial_weights=True))
    assert resolve_config(dict(reset_head=True, pretrained_file="weights.pth")).reset_head


def test_digits_split_is_real_reproducible_and_held_out():
    train_set, val_set = DigitsDataset("train"), DigitsDataset("val")
    assert len(train_set) + len(val_set) == 1797
    assert len(val_set) / 1797 >= 0.2
    assert torch.bincount(torch.tensor(val_set.targets)).min() >= 34  # stratified: every digit held out
    assert DigitsDataset("val").targets == val_set.targets
    image, label = val_set[0]
    assert image.size == (8, 8) and image.mode == "RGB" and label == val_set.targets[0]


def test_global_batches_are_the_same_for_any_process_count():
    single = list(GlobalBatchSampler(40, 8, seed=5))
    assert sorted(i for batch in single for i, _ in batch) == list(range(40))
    ranks = [list(GlobalBatchSampler(40, 8, rank=r, world_size=2, seed=5)) for r in range(2)]
    assert [a + b for a, b in zip(*ranks)] == single
    sampler = GlobalBatchSampler(40, 8, seed=5)
    sampler.set_epoch(1)
    assert list(sampler) != single
    with pytest.raises(ValueError, match="divisible"):
        GlobalBatchSampler(40, 9, world_size=2)


class _Draws(torch.utils.data.Dataset):
    """Item ``i``: what Python's, NumPy's and torch's generators give next (what an augmentation draws)."""

    def __getitem__(self, index):
        return random.random(), np.random.rand(), torch.rand(()).item()


def test_a_sample_is_drawn_from_its_own_seed_and_leaves_the_callers_generators_alone():
    samples = SeededSamples(_Draws())
    seed_everything(7)
    expected = _Draws()[0]  # the streams a run seeded with 7 starts with
    seed_everything(11)
    caller_next = _Draws()[0]
    seed_everything(11)
    assert samples[(3, 7)] == samples[(4, 7)] == expected
    assert samples[(3, 8)] != expected
    assert _Draws()[0] == caller_next


def test_evaluation_shards_cover_every_sample_once():
    shards = [list(ShardSampler(11, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))


def test_train_writes_run_directory_and_learns(shapes_folder, tmp_path):
    run = tmp_path / "run"
    assert cli_main(_train_args(shapes_folder, run, 4, "--lr", "3e-3")) == 0
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch,train_loss,lr,val_loss,top1,top5") and len(rows) == 5
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 4 and summary["model"] == "boat_swin_tiny_patch4_window7_224"
    assert summary["best_top1"] >= summary["final_top1"] and summary["best_top1"] > 50.0  # above chance
    assert summary["args"]["batch_size"] == 8
    assert Image.open(run / "curves.png").size[0] > 0
    state = load_checkpoint(run / "best.pth")
    assert state["class_names"] == list(SHAPES) and set(state) >= {"optimizer", "scheduler", "scaler", "rng"}


def test_eval_and_predict_commands(shapes_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli_main(_train_args(shapes_folder, run, 1)) == 0
    capsys.readouterr()
    assert cli_main(["eval", "--checkpoint", str(run / "last.pth"), "--data", str(shapes_folder),
                     "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "(16 images, 0 unreadable skipped)" in out
    image = shapes_folder / "val" / "circle" / "0.png"
    assert cli_main(["predict", str(image), "--checkpoint", str(run / "last.pth")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == str(image) and len(lines) == 3  # two classes
    probabilities = [float(line.split("%")[0]) for line in lines[1:]]
    assert sum(probabilities) == pytest.approx(100, abs=0.02)


NON_DEFAULT_SIZES = {  # model arguments without the input size; the run gives --img-size 32
    "swin, windows for 224": ("boat_swin_tiny_patch4_window7_224",
                              dict(patch_size=2, window_size=4, embed_dim=16, depths=[2, 2], num_heads=[1, 2])),
    "swin, windows clamped at 32": ("boat_swin_tiny_patch4_window7_224",
                                    dict(embed_dim=16, depths=[2, 2], num_heads=[1, 2])),
    "cswin": ("boat_cswin_tiny_224", dict(embed_dim=16, depths=[1, 1], num_heads=[2, 2], split_size=[1, 2])),
}


@pytest.mark.parametrize("model, kwargs", NON_DEFAULT_SIZES.values(), ids=NON_DEFAULT_SIZES.keys())
def test_a_checkpoint_rebuilds_the_model_as_trained(model, kwargs, shapes_folder, tmp_path, capsys):
    """Every command that takes --checkpoint rebuilds the model with every argument of the run, its size too."""
    run = tmp_path / "run"
    args = ["train", "--model", model, "--model-kwargs", json.dumps(kwargs), *TINY_RECIPE, "--img-size", "32",
            "--data", str(shapes_folder), "--output", str(run), "--epochs", "1"]
    assert cli_main(args) == 0
    assert load_checkpoint(run / "best.pth")["model_args"] == dict(name=model, num_classes=2,
                                                                   kwargs=dict(img_size=32, **kwargs))
    capsys.readouterr()
    checkpoint = str(run / "best.pth")
    assert cli_main(["eval", "--checkpoint", checkpoint, "--data", str(shapes_folder), "--workers", "0"]) == 0
    top1 = float(capsys.readouterr().out.split("top-1 ")[1].split("%")[0])
    trained = [row for row in csv.DictReader(open(run / "metrics.csv"))][-1]
    assert top1 == pytest.approx(float(trained["top1"]), abs=0.005)  # the run's own validation, reproduced
    image = str(shapes_folder / "val" / "circle" / "0.png")
    assert cli_main(["predict", image, "--checkpoint", checkpoint]) == 0
    assert cli_main(["export", model, "--checkpoint", checkpoint, "--format", "torchscript",
                     "--output", str(tmp_path / "model.pt")]) == 0
    assert cli_main(["show-clusters", image, "--checkpoint", checkpoint, "--output", str(tmp_path / "c.png")]) == 0
    assert "error" not in capsys.readouterr().err


def test_two_processes_equal_one(shapes_folder, tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    recipe = ("--drop-path", "0", "--label-smoothing", "0", "--color-jitter", "0", "--device", "cpu")
    assert cli_main(_train_args(shapes_folder, single, 1, *recipe)) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29581",
               "-m", "boat_vit", *_train_args(shapes_folder, double, 1, *recipe)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    _assert_same_weights(_final_weights(single), _final_weights(double), atol=1e-5)
    summary = json.loads((double / "summary.json").read_text())
    assert summary["world_size"] == 2


def test_unreadable_images_are_skipped_and_counted(shapes_folder, tmp_path):
    data = tmp_path / "data"
    subprocess.run(["cp", "-r", str(shapes_folder), str(data)], check=True)
    (data / "train" / "circle" / "broken.png").write_bytes(b"not an image at all")
    whole = (data / "train" / "square" / "0.png").read_bytes()
    (data / "train" / "square" / "truncated.png").write_bytes(whole[: len(whole) // 2])
    run = tmp_path / "run"
    assert cli_main(_train_args(data, run, 1, "--batch-size", "10")) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped_images"] == 2


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(shapes_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli_main(_train_args(shapes_folder, run, 1)) == 0
    good = (run / "last.pth").read_bytes()
    capsys.readouterr()
    # a diverging run in the same directory: the first update with this learning rate blows the weights up
    status = cli_main(_train_args(shapes_folder, run, 2, "--lr", "1e30", "--warmup-epochs", "0", "--overwrite"))
    assert status == 2
    err = capsys.readouterr().err
    assert "non-finite loss at epoch 1, step 2" in err and f"the last good checkpoint in {run} is intact" in err
    assert (run / "last.pth").read_bytes() == good
    # a run that diverges before its first checkpoint does not claim one
    fresh = tmp_path / "fresh"
    assert cli_main(_train_args(shapes_folder, fresh, 2, "--lr", "1e30", "--warmup-epochs", "0")) == 2
    err = capsys.readouterr().err
    assert f"no checkpoint had been saved in {fresh} yet" in err and "intact" not in err
    assert not (fresh / "last.pth").exists()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: root / "missing", "data folder not found"),
        (lambda root: (root / "train").mkdir(parents=True) or root, "train folder .* has no class sub-folders"),
    ],
)
def test_bad_data_folders(tmp_path, capsys, make, message):
    data = make(tmp_path / "d")
    assert cli_main(_train_args(data, tmp_path / "run", 1)) == 2
    assert __import__("re").search(message, capsys.readouterr().err)


def test_class_sets_must_match(shapes_folder, tmp_path):
    data = tmp_path / "data"
    subprocess.run(["cp", "-r", str(shapes_folder), str(data)], check=True)
    (data / "val" / "square").rename(data / "val" / "triangle")
    with pytest.raises(ValueError, match=r"class sets differ .* only in train \['square'\], only in val \['triangle'\]"):
        build_datasets(str(data), None, None)


def test_unknown_model_suggests_names(tmp_path, capsys):
    assert cli_main(["train", "--model", "boat_swin_tiny_patch4_window7", "--output", str(tmp_path)]) == 2
    assert "did you mean boat_swin_tiny_patch4_window7_224" in capsys.readouterr().err


def test_initial_checkpoint_with_other_classes(shapes_folder, tmp_path, capsys):
    from boat_vit.classification import create_classifier
    from boat_vit.models import weights_filter
    from boat_vit.weights import load_weights

    run = tmp_path / "run"
    assert cli_main(_train_args(shapes_folder, run, 1)) == 0
    kwargs = json.loads(TINY_MODEL[3])
    model, _ = create_classifier(TINY_MODEL[1], 5, **kwargs)
    with pytest.raises(WeightsMismatchError, match="2-class head but the model has 5 classes; pass reset_head=True"):
        load_weights(model, str(run / "last.pth"), weights_filter(model))
    report = load_weights(model, str(run / "last.pth"), weights_filter(model), reset_head=True)
    assert sorted(report.initial) == ["head.fc.bias", "head.fc.weight"] and report.head_reset


def test_help_explains_options(capsys):
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    text = capsys.readouterr().out
    for option in ("--model", "--data", "--epochs", "--batch-size", "--output", "--resume", "--preset",
                   "--pretrained-file", "--reset-head", "--seed", "--amp", "--device", "--ema-decay"):
        assert option in text


def test_accumulation_equals_one_big_batch(shapes_folder, tmp_path):
    recipe = ("--drop-path", "0", "--label-smoothing", "0")
    plain, accumulated = tmp_path / "plain", tmp_path / "accumulated"
    assert cli_main(_train_args(shapes_folder, plain, 1, *recipe)) == 0
    assert cli_main(_train_args(shapes_folder, accumulated, 1, *recipe, "--accum-steps", "2")) == 0
    _assert_same_weights(_final_weights(plain), _final_weights(accumulated), atol=1e-5)


def test_ema_and_bfloat16_autocast(shapes_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli_main(_train_args(shapes_folder, run, 2, "--ema-decay", "0.9", "--amp")) == 0
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    header, last = rows[0].split(","), rows[-1].split(",")
    assert last[header.index("ema_top1")] != "" and json.loads((run / "summary.json").read_text())["args"]["amp"]
    state = load_checkpoint(run / "last.pth")
    assert state["ema"] is not None and any(k.startswith("module.") for k in state["ema"])
    capsys.readouterr()
    assert cli_main(["eval", "--checkpoint", str(run / "last.pth"), "--ema", "--data", str(shapes_folder),
                     "--workers", "0"]) == 0
    assert "top-1" in capsys.readouterr().out
