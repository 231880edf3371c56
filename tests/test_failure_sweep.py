"""A sweep of bad input through every command: each probe must end with status 2 and one line on stderr that
names the problem (the file, option or value at fault), never a traceback, never advice to load a file unsafely.

Bad files go to every path that loads weights; bad arguments to every command.
"""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from boat_vit.cli import main as cli_main
from tiny_data import SEG_TRAIN_ARGS, TINY_MODEL, train_args

MODEL = TINY_MODEL[1]
SEG_RUN = ["--iterations", "2", "--eval-interval", "2", "--checkpoint-interval", "2"]
SHOW = ["--model-kwargs", json.dumps(dict(embed_dim=16, depths=[2, 2], num_heads=[1, 2], img_size=64))]
PWNED = "pwned"  # the file a malicious pickle would create


class _Payload:
    """Pickles as a call of ``os.system``: loading it must never run it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def runs(shapes_folder, ade_shapes, tmp_path_factory) -> dict[str, Path]:
    """A classification and a segmentation checkpoint of the tiny models."""
    root = tmp_path_factory.mktemp("runs")
    assert cli_main(train_args(shapes_folder, root / "cls", 1)) == 0
    assert cli_main(["seg-train", *SEG_TRAIN_ARGS, "--data", str(ade_shapes), "--output", str(root / "seg"),
                     *SEG_RUN]) == 0
    return dict(cls=root / "cls" / "last.pth", seg=root / "seg" / "last.pth")


BAD_FILES = ("malicious.pth", "legacy_malicious.pth", "truncated.pth", "empty.pth", "random.pth", "wrong_model.pth",
             "bare_tensor.pth", "pickle.safetensors", "folder.pth", "missing.pth")


@pytest.fixture(scope="module")
def bad_files(runs, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad")
    good = runs["cls"].read_bytes()
    torch.save({"model": _Payload(folder / PWNED)}, folder / "malicious.pth")
    with open(folder / "legacy_malicious.pth", "wb") as f:
        pickle.dump({"model": _Payload(folder / PWNED)}, f)
    (folder / "truncated.pth").write_bytes(good[: len(good) // 2])
    (folder / "empty.pth").write_bytes(b"")
    (folder / "random.pth").write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8,
                                                      generator=torch.Generator().manual_seed(0)).numpy().tobytes())
    torch.save(timm.create_model("resnet10t", num_classes=2).state_dict(), folder / "wrong_model.pth")
    torch.save(torch.zeros(3), folder / "bare_tensor.pth")
    (folder / "pickle.safetensors").write_bytes(good)
    (folder / "folder.pth").mkdir()
    return folder


def _loading_paths(data: dict[str, Path]) -> dict[str, list[str]]:
    """Every command line that loads a weights file, with ``{F}`` for the file."""
    image, cls_data, seg_data, out = (str(data[k]) for k in ("image", "cls_data", "seg_data", "out"))
    return {
        "train --pretrained-file": train_args(Path(cls_data), Path(out) / "a", 1, "--pretrained-file", "{F}"),
        "train --resume": ["train", "--resume", "{F}", "--output", f"{out}/b"],
        "eval --checkpoint": ["eval", "--checkpoint", "{F}", "--data", cls_data, "--workers", "0"],
        "eval --model --pretrained-file": ["eval", "--model", MODEL, "--pretrained-file", "{F}", "--data", cls_data],
        "predict --checkpoint": ["predict", image, "--checkpoint", "{F}"],
        "predict --model --pretrained-file": ["predict", image, "--model", MODEL, "--pretrained-file", "{F}"],
        "seg-train --backbone-weights": ["seg-train", *SEG_TRAIN_ARGS, "--data", seg_data, "--output", f"{out}/c",
                                         "--backbone-weights", "{F}", *SEG_RUN],
        "seg-train --resume": ["seg-train", "--resume", "{F}", "--output", f"{out}/d"],
        "seg-eval --checkpoint": ["seg-eval", "--checkpoint", "{F}", "--data", seg_data, "--workers", "0"],
        "seg-predict --checkpoint": ["seg-predict", image, "--checkpoint", "{F}", "--output", f"{out}/e"],
        "convert": ["convert", "{F}", f"{out}/f.safetensors", "--model", MODEL,
                    "--model-kwargs", json.dumps(json.loads(TINY_MODEL[3]))],
        "show-clusters --checkpoint": ["show-clusters", "--checkpoint", "{F}", "--output", f"{out}/g.png"],
        "show-clusters --pretrained-file": ["show-clusters", "--model", MODEL, *SHOW, "--pretrained-file", "{F}",
                                            "--output", f"{out}/h.png"],
        "export --checkpoint": ["export", MODEL, "--format", "torchscript", "--checkpoint", "{F}",
                                "--output", f"{out}/i.pt"],
        "export --pretrained-file": ["export", MODEL, "--format", "torchscript", "--pretrained-file", "{F}",
                                     "--output", f"{out}/j.pt"],
    }


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        status = cli_main(argv)
    except SystemExit as exit_:  # argparse
        status = exit_.code
    return status, capsys.readouterr().err


def _assert_one_line(status: int, err: str, names: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, f"exit status {status}: {err}"
    assert len(lines) == 1, err
    assert "error:" in lines[0] and names in lines[0], lines[0]
    assert "Traceback" not in err and "weights_only" not in err, err


@pytest.fixture(scope="module")
def probe_data(runs, shapes_folder, ade_shapes, tmp_path_factory) -> dict[str, Path]:
    return dict(image=shapes_folder / "val" / "circle" / "0.png", cls_data=shapes_folder, seg_data=ade_shapes,
                out=tmp_path_factory.mktemp("out"))


@pytest.mark.parametrize("path", list(_loading_paths(dict.fromkeys(("image", "cls_data", "seg_data", "out"), "x"))))
@pytest.mark.parametrize("bad", BAD_FILES)
def test_bad_weights_files(path, bad, bad_files, probe_data, capsys):
    argv = [str(bad_files / bad) if arg == "{F}" else arg for arg in _loading_paths(probe_data)[path]]
    status, err = _run(argv, capsys)
    _assert_one_line(status, err, bad)
    assert not (bad_files / PWNED).exists(), "a pickle ran code"


def _argument_probes(data: dict[str, Path], runs: dict[str, Path]) -> list[tuple[list[str], str]]:
    """(command line, what its error line must name) for bad options of every command."""
    cls_data, seg_data, out, image = (str(data[k]) for k in ("cls_data", "seg_data", "out", "image"))
    a_file = str(data["image"])
    train = lambda *extra: train_args(Path(cls_data), Path(out) / "t", 1, *extra)  # noqa: E731
    seg = lambda *extra: ["seg-train", *SEG_TRAIN_ARGS, "--data", seg_data, "--output", f"{out}/s", *SEG_RUN, *extra]  # noqa: E731
    cls_run, seg_run = str(runs["cls"]), str(runs["seg"])
    return [
        (train("--batch-size", "0"), "--batch-size must be >= 1"),
        (train("--accum-steps", "0"), "--accum-steps must be >= 1"),
        (train("--epochs", "0"), "--epochs must be >= 1"),
        (train("--epochs", "-1"), "--epochs must be >= 1"),
        (train("--label-smoothing", "1.5"), "--label-smoothing must be >= 0 and < 1"),
        (train("--auto-augment", "bogus"), "--auto-augment 'bogus' is not a timm augmentation policy"),
        (train("--model-kwargs", "[1, 2]"), "argument --model-kwargs: expected a JSON object"),
        (train("--model-kwargs", "{nope"), "argument --model-kwargs: not valid JSON"),
        (["train", "--model", MODEL, "--model-kwargs", '{"bogus_key": 1}', "--data", cls_data, "--output", f"{out}/u"],
         "bogus_key"),
        (train("--device", "bogus"), "--device must be cpu, cuda or cuda:N, got 'bogus'"),
        (train("--lr", "0"), "--lr must be > 0"),
        (train("--ema-decay", "2"), "--ema-decay must be > 0 and < 1"),
        (train("--hflip", "2"), "--hflip must be >= 0 and <= 1"),
        (train("--drop-path", "1"), "--drop-path must be >= 0 and < 1"),
        (train("--reprob", "1.5"), "--reprob must be >= 0 and <= 1"),
        (train("--warmup-epochs", "-1"), "--warmup-epochs must be >= 0"),
        (train("--mixup", "-1"), "--mixup must be >= 0"),
        (train("--clip-grad", "0"), "--clip-grad must be > 0"),
        (train("--img-size", "0"), "--img-size must be >= 1"),
        (train("--reset-head"), "--reset-head applies to --pretrained-file, which is not given"),
        (train("--partial-weights"), "--partial-weights applies to --pretrained-file, which is not given"),
        (seg("--partial-weights"), "--partial-weights applies to --backbone-weights, which is not given"),
        (train("--workers", "-1"), "argument --workers: must be at least 0"),
        (train("--threads", "0"), "argument --threads: must be at least 1"),
        (train("--preset", "bogus"), "argument --preset: invalid choice"),
        (train("--amp-dtype", "float8"), "argument --amp-dtype: invalid choice"),
        (train("--no-such-option"), "unrecognized arguments: --no-such-option"),
        (["train", "--model", "boat_swin_nano", "--output", f"{out}/m"], "unknown model 'boat_swin_nano'"),
        (train("--data", f"{out}/no-such-data"), "data folder not found"),
        (["train", *train()[1:-6], "--data", cls_data, "--output", a_file, "--epochs", "1"], "is a file, not a folder"),
        (train("--resume", cls_run, "--overwrite"), "drop --pretrained-file and --overwrite"),
        (train("--batch-size", "24", "--resume", cls_run), "--batch-size 24 (the run has 8)"),
        (["eval", "--data", cls_data], "give a training checkpoint, or a model name"),
        (["eval", "--checkpoint", cls_run, "--data", f"{out}/nothing"], "evaluation folder not found"),
        (["eval", "--checkpoint", cls_run, "--batch-size", "0"], "argument --batch-size: must be at least 1"),
        (["eval", "--checkpoint", cls_run, "--device", "cuda:x"], "--device must be cpu, cuda or cuda:N"),
        (["eval", "--checkpoint", cls_run, "--model", MODEL], "--checkpoint brings its own model"),
        (["predict", image, "--checkpoint", cls_run, "--top-k", "-1"], "argument --top-k: must be at least 1"),
        (["predict", f"{out}/missing.png", "--checkpoint", cls_run], "missing.png"),
        (["predict", cls_run, "--checkpoint", cls_run], "cannot read image"),
        (["predict", image, "--model", MODEL], "needs its weights (--pretrained-file)"),
        (seg("--crop-size", "0"), "--crop-size must be >= 1"),
        (seg("--iterations", "0"), "--iterations must be >= 1"),
        (seg("--batch-size", "1"), "at least 2 images each"),
        (seg("--backbone", "resnet18"), "resnet18"),
        (seg("--backbone", "boat_nano"), "unknown model 'boat_nano'"),
        (seg("--num-classes", "0"), "--num-classes must be >= 1"),
        (["seg-train", "--dataset", "folder", "--data", seg_data, "--output", f"{out}/f2"], "--num-classes"),
        (seg("--lr", "0"), "--lr must be > 0"),
        (seg("--eval-interval", "0"), "--eval-interval must be >= 1"),
        (seg("--ratio-range", "2", "1"), "--ratio-range must be low <= high"),
        (seg("--cat-max-ratio", "0"), "--cat-max-ratio must be > 0 and <= 1"),
        (seg("--aux-weight", "-1"), "--aux-weight must be >= 0"),
        (seg("--backbone-kwargs", "[1]"), "argument --backbone-kwargs: expected a JSON object"),
        (seg("--decoder-channels", "0"), "--decoder-channels must be >= 1"),
        (seg("--ignore-index", "2"), "ignore index 2 is a class index"),
        (seg("--resume", seg_run, "--lr", "1"), "--lr 1.0 (the run has"),
        (["seg-eval", "--checkpoint", seg_run, "--data", seg_data, "--scales", "0"], "argument --scales: must be above 0"),
        (["seg-eval", "--checkpoint", seg_run, "--data", seg_data, "--scales", "-1"], "argument --scales"),
        (["seg-eval", "--checkpoint", seg_run, "--data", seg_data, "--crop-size", "0"], "argument --crop-size"),
        (["seg-eval", "--checkpoint", seg_run, "--data", seg_data, "--mode", "slide", "--crop-size", "32",
          "--stride", "64"], "--stride [64, 64] must be between 1 and --crop-size [32, 32]"),
        (["seg-eval", "--checkpoint", seg_run, "--data", seg_data, "--mode", "bogus"], "argument --mode: invalid choice"),
        (["seg-eval", "--checkpoint", cls_run, "--data", seg_data], "is not a segmentation checkpoint"),
        (["seg-predict", f"{out}/missing.jpg", "--checkpoint", seg_run, "--output", f"{out}/p"], "missing.jpg"),
        (["convert", cls_run, f"{out}/x.safetensors", "--model", MODEL, "--model-kwargs", "[1]"],
         "argument --model-kwargs: expected a JSON object"),
        (["convert", cls_run, f"{out}/x.pth", "--model", MODEL], "output must end in .safetensors"),
        (["bench", MODEL, "--batch-size", "0"], "argument --batch-size: must be at least 1"),
        (["bench", MODEL, "--repeats", "0"], "argument --repeats: must be at least 1"),
        (["bench", MODEL, "--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
        (["bench", MODEL, "--dtype", "float8"], "argument --dtype: invalid choice"),
        (["bench", "boat_swin_nano"], "unknown model 'boat_swin_nano'"),
        (["bench", MODEL, "--model-kwargs", '{"bogus_key": 1}', "--no-memory"], "bogus_key"),
        (["show-clusters", "--model", MODEL, *SHOW, "--stage", "9", "--output", f"{out}/c1.png"],
         "no FSLA layer at stage 9"),
        (["show-clusters", "--model", MODEL, *SHOW, "--head", "9", "--output", f"{out}/c2.png"],
         "head must be in [0, 1), got 9"),
        (["show-clusters", "--model", MODEL, *SHOW, "--patch", "99", "99", "--output", f"{out}/c3.png"],
         "patch (99, 99) is outside"),
        (["show-clusters", "--model", MODEL, *SHOW, "--panel-width", "10", "--output", f"{out}/c4.png"],
         "panel width must be at least"),
        (["show-clusters", f"{out}/none.png", "--model", MODEL, *SHOW, "--output", f"{out}/c5.png"], "none.png"),
        (["show-clusters", "--model", MODEL, "--head", "a,b", "--output", f"{out}/c6.png"], "argument --head"),
        (["show-clusters", "--output", f"{out}/c7.png"], "give --model (and optionally --pretrained-file), or --checkpoint"),
        (["export", MODEL, "--format", "bogus", "--output", f"{out}/e1.onnx"], "argument --format: invalid choice"),
        (["export", MODEL, "--format", "onnx", "--output", f"{out}/e2.onnx", "--img-size", "0"],
         "argument --img-size: must be at least 1"),
        (["export", MODEL, "--format", "onnx", "--output", f"{out}/e3.onnx", "--tolerance", "-1"],
         "argument --tolerance: must be above 0"),
        (["export", MODEL, "--format", "onnx", "--output", f"{out}/e4.onnx"], "needs its weights (--pretrained-file)"),
        (["export", "boat_nano", "--format", "onnx", "--output", f"{out}/e5.onnx"], "unknown model 'boat_nano'"),
        (["export", MODEL, "--format", "onnx", "--checkpoint", cls_run, "--output", f"{out}/none/e6.onnx"],
         "output folder"),
        (["export", MODEL, "--format", "onnx", "--checkpoint", cls_run, "--output", a_file], "exists; pass --overwrite"),
        (["export", MODEL, "--format", "onnx", "--checkpoint", cls_run, "--opset", "12", "--output", f"{out}/e7.onnx"],
         "opset >= 17, got 12"),
        (["ablate", "--seeds", "0"], "argument --seeds: must be at least 1"),
        (["ablate", "--epochs", "0"], "argument --epochs: must be at least 1"),
        (["ablate", "--tasks", "bogus", "--output", f"{out}/a1"], "unknown tasks ['bogus']"),
        (["ablate", "--contenders", "bogus", "--output", f"{out}/a2"], "unknown contenders ['bogus']"),
        (["ablate", "--output", a_file], "is a file, not a folder"),
        (["ablate", "--report-only", "--output", f"{out}/a3"], "no finished runs"),
    ]


ARGUMENT_PROBES = 93


def test_the_argument_sweep_covers_every_command(probe_data, runs):
    probes = _argument_probes(probe_data, runs)
    assert len(probes) == ARGUMENT_PROBES
    commands = {argv[0] for argv, _ in probes}
    assert commands == {"train", "eval", "predict", "seg-train", "seg-eval", "seg-predict", "convert", "export",
                        "bench", "show-clusters", "ablate"}


@pytest.mark.parametrize("index", range(ARGUMENT_PROBES))
def test_bad_arguments(index, probe_data, runs, capsys):
    argv, names = _argument_probes(probe_data, runs)[index]
    status, err = _run(argv, capsys)
    _assert_one_line(status, err, names)


@pytest.mark.parametrize("bad", ["malicious.pth", "empty.pth"])
def test_the_installed_command_exits_with_one_line(bad, bad_files, probe_data):
    argv = [str(bad_files / bad) if arg == "{F}" else arg
            for arg in _loading_paths(probe_data)["predict --checkpoint"]]
    result = subprocess.run([sys.executable, "-m", "boat_vit", *argv], capture_output=True, text=True, timeout=300)
    _assert_one_line(result.returncode, result.stderr, bad)
    assert not (bad_files / PWNED).exists()
