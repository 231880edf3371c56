"""A sweep of bad input through every command: each probe must end with status 2 and one line on stderr that
names the problem (the file, option or value at fault), never a traceback, never advice to load a file unsafely.

Bad files go to every path that loads weights; run checkpoints with each entry lost or edited to every
command that reads one; bad arguments to every command; planted links, missing folders and existing files to
every file a command writes (checked before the work, the link's target untouched); Ctrl-C to the command
while it starts.
"""
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch

from boat_vit.cli import main as cli_main
from boat_vit.files import read_checkpoint
from tiny_data import SEG_TRAIN_ARGS, TINY_MODEL, train_args

MODEL = TINY_MODEL[1]
TINY_KWARGS = json.loads(TINY_MODEL[3])
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
        "convert --hub-dir --model": ["convert", "{F}", "--hub-dir", f"{out}/k", "--model", MODEL,
                                      "--model-kwargs", json.dumps(json.loads(TINY_MODEL[3]))],
        "convert --hub-dir": ["convert", "{F}", "--hub-dir", f"{out}/l"],
        "show-clusters --checkpoint": ["show-clusters", "--checkpoint", "{F}", "--output", f"{out}/g.png"],
        "show-clusters --pretrained-file": ["show-clusters", "--model", MODEL, *SHOW, "--pretrained-file", "{F}",
                                            "--output", f"{out}/h.png"],
        "export --checkpoint": ["export", MODEL, "--format", "torchscript", "--checkpoint", "{F}",
                                "--output", f"{out}/i.pt"],
        "export --pretrained-file": ["export", MODEL, "--format", "torchscript", "--pretrained-file", "{F}",
                                     "--output", f"{out}/j.pt"],
    }


def _run(argv: list[str], capsys) -> tuple[int, str]:
    """Exit status and stderr of the command ``argv``."""
    status, _, err = _run_capturing(argv, capsys)
    return status, err


def _run_capturing(argv: list[str], capsys) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of the command ``argv``."""
    try:
        status = cli_main(argv)
    except SystemExit as exit_:  # argparse
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


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
        (train("--reset-head"), "--reset-head applies to --pretrained-file and --pretrained, which are not given"),
        (train("--partial-weights"), "--partial-weights applies to --pretrained-file and --pretrained, which are not given"),
        (seg("--partial-weights"), "--partial-weights applies to --backbone-weights and --pretrained, which are not given"),
        (train("--workers", "-1"), "argument --workers: must be at least 0"),
        (train("--threads", "0"), "argument --threads: must be at least 1"),
        (train("--preset", "bogus"), "argument --preset: invalid choice"),
        (train("--amp-dtype", "float8"), "argument --amp-dtype: invalid choice"),
        (train("--no-such-option"), "unrecognized arguments: --no-such-option"),
        (["train", "--model", "boat_swin_nano", "--output", f"{out}/m"], "unknown model 'boat_swin_nano'"),
        (train("--data", f"{out}/no-such-data"), "data folder not found"),
        (["train", *train()[1:-6], "--data", cls_data, "--output", a_file, "--epochs", "1"], "is a file, not a folder"),
        (train("--resume", cls_run, "--overwrite"), "drop --pretrained-file, --pretrained and --overwrite"),
        (train("--batch-size", "24", "--resume", cls_run), "--batch-size 24 (the run has 8)"),
        (["eval", "--data", cls_data], "give a training checkpoint, or a model name"),
        (["eval", "--checkpoint", cls_run, "--data", f"{out}/nothing"], "evaluation folder not found"),
        (["eval", "--checkpoint", cls_run, "--batch-size", "0"], "argument --batch-size: must be at least 1"),
        (["eval", "--checkpoint", cls_run, "--device", "cuda:x"], "--device must be cpu, cuda or cuda:N"),
        (["eval", "--checkpoint", cls_run, "--model", MODEL], "--checkpoint brings its own model"),
        (["predict", image, "--checkpoint", cls_run, "--top-k", "-1"], "argument --top-k: must be at least 1"),
        (["predict", f"{out}/missing.png", "--checkpoint", cls_run], "missing.png"),
        (["predict", cls_run, "--checkpoint", cls_run], "cannot read image"),
        (["predict", image, "--model", MODEL], "needs its weights (--pretrained-file or --pretrained)"),
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
        (["convert", cls_run], "give OUT (a safetensors file) or --hub-dir FOLDER"),
        (["convert", cls_run, "--hub-dir", f"{out}/h", "--ema"], "has no EMA weights"),
        (train("--pretrained", "--pretrained-file", a_file), "--pretrained and --pretrained-file both give"),
        (seg("--pretrained", "--backbone-weights", a_file), "--pretrained and --backbone-weights both give"),
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
        (["show-clusters", "--output", f"{out}/c7.png"], "give --model (and optionally --pretrained-file or --pretrained), or --checkpoint"),
        (["export", MODEL, "--format", "bogus", "--output", f"{out}/e1.onnx"], "argument --format: invalid choice"),
        (["export", MODEL, "--format", "onnx", "--output", f"{out}/e2.onnx", "--img-size", "0"],
         "argument --img-size: must be at least 1"),
        (["export", MODEL, "--format", "onnx", "--output", f"{out}/e3.onnx", "--tolerance", "-1"],
         "argument --tolerance: must be above 0"),
        (["export", MODEL, "--format", "onnx", "--output", f"{out}/e4.onnx"],
         "needs its weights (--pretrained-file or --pretrained)"),
        (["export", "boat_nano", "--format", "onnx", "--output", f"{out}/e5.onnx"], "unknown model 'boat_nano'"),
        (["export", MODEL, "--format", "onnx", "--checkpoint", cls_run, "--output", f"{out}/none/e6.onnx"],
         f"--output {out}/none/e6.onnx: the folder {out}/none does not exist"),
        (["export", MODEL, "--format", "onnx", "--checkpoint", cls_run, "--output", a_file], "exists; pass --overwrite"),
        (["export", MODEL, "--format", "onnx", "--checkpoint", cls_run, "--opset", "12", "--output", f"{out}/e7.onnx"],
         "argument --opset: ONNX opset must be between 18 and 22, got 12"),
        (["export", MODEL, "--format", "onnx", "--checkpoint", cls_run, "--opset", "999", "--output", f"{out}/e8.onnx"],
         "argument --opset: ONNX opset must be between 18 and 22, got 999"),
        (["export", MODEL, "--format", "onnx", "--checkpoint", cls_run, "--img-size", "1", "2", "3", "--output",
          f"{out}/e9.onnx"], "argument --img-size: expected one or two integers (S, or H W), got 3"),
        (["export", MODEL, "--format", "onnx", "--checkpoint", cls_run, "--img-size", "1", "--output",
          f"{out}/e10.onnx"], "argument --img-size: boat_swin_tiny_patch4_window7_224 does not run at 1x1"),
        (["ablate", "--seeds", "0"], "argument --seeds: must be at least 1"),
        (["ablate", "--epochs", "0"], "argument --epochs: must be at least 1"),
        (["ablate", "--tasks", "bogus", "--output", f"{out}/a1"], "unknown tasks ['bogus']"),
        (["ablate", "--contenders", "bogus", "--output", f"{out}/a2"], "unknown contenders ['bogus']"),
        (["ablate", "--output", a_file], "is a file, not a folder"),
        (["ablate", "--report-only", "--output", f"{out}/a3"],
         f"no ablation in {out}/a3 to report; run it first (without --report-only)"),
        # a model built for one input size, given another
        (train("--img-size", "33"), "--img-size 33 differs from the img_size 16 of --model-kwargs"),
        (["bench", MODEL, *SHOW, "--img-size", "33"], "--img-size 33 differs from the img_size 64 of --model-kwargs"),
        # models that cannot be built, from every command that builds one from arguments
        (train("--model-kwargs", json.dumps(dict(TINY_KWARGS, embed_dim=0))), "embed_dim=0"),
        (["bench", MODEL, "--model-kwargs", json.dumps(dict(TINY_KWARGS, embed_dim=0))], "embed_dim=0"),
        (["show-clusters", "--model", MODEL, "--model-kwargs", json.dumps(dict(TINY_KWARGS, embed_dim=0)),
          "--output", f"{out}/c8.png"], "embed_dim=0"),
        (seg("--backbone-kwargs", json.dumps(dict(embed_dim=0, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8]))),
         "embed_dim=0"),
        (train("--model-kwargs", json.dumps(dict(TINY_KWARGS, depths=[2, 2, 2]))), "cannot build"),
        # model names with a pretrained tag the architecture does not have
        (["train", "--model", f"{MODEL}.bogus", "--data", cls_data, "--output", f"{out}/v"],
         "unknown pretrained tag 'bogus'"),
        (["bench", f"{MODEL}.bogus"], "unknown pretrained tag 'bogus'"),
        (seg("--backbone", f"{MODEL}.bogus"), "unknown pretrained tag 'bogus'"),
        (["show-clusters", "--model", f"{MODEL}.bogus", "--output", f"{out}/c9.png"], "unknown pretrained tag 'bogus'"),
        (["predict", image, "--model", f"{MODEL}.bogus", "--pretrained-file", cls_run], "unknown pretrained tag"),
        (["convert", cls_run, f"{out}/y.safetensors", "--model", f"{MODEL}.bogus"], "unknown pretrained tag 'bogus'"),
        # outputs that cannot be told apart
        (["seg-predict", image, image, "--checkpoint", seg_run, "--output", f"{out}/p2"],
         "the same image is given twice"),
        (["seg-predict", image, "--checkpoint", seg_run, "--output", a_file], "is a file, not a folder"),
        (["bench", MODEL, "--csv", f"{out}/r", "--json", f"{out}/r"], f"--csv {out}/r and --json {out}/r are the same"),
    ]


ARGUMENT_PROBES = 116


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


# ---- run checkpoints with an entry lost or edited, to every command that reads one --------------------------

RUN_ENTRIES = ("format", "task", "config", "model_args", "model", "ema", "optimizer", "scheduler", "scaler", "rng",
               "step", "metrics", "best", "running")
TASK_ENTRIES = dict(cls=("class_names", "data_config"), seg=("spec", "data", "backbone_part"))


def _other_kind(value):
    """A value of another kind than ``value`` (what an edit might leave)."""
    return 7 if isinstance(value, str) else "edited"


def _edit(entry: str, change):
    """A damage: ``change(value)`` replaces ``entry`` (a dotted path into dicts)."""
    def damage(state: dict) -> dict:
        state = dict(state)
        *parents, key = entry.split(".")
        holder = state
        for parent in parents:
            holder[parent] = dict(holder[parent])
            holder = holder[parent]
        holder[key] = change(holder[key])
        return state
    return damage


def _damages(kind: str) -> dict[str, tuple]:
    """name -> (damage of the run checkpoint, what the error line must name)."""
    damages = {}
    for entry in (*RUN_ENTRIES, *TASK_ENTRIES[kind]):
        damages[f"{entry} lost"] = (lambda s, e=entry: {k: v for k, v in s.items() if k != e}, f"'{entry}'")
        damages[f"{entry} of another kind"] = (_edit(entry, _other_kind), f"'{entry}'")
    half = lambda weights: dict(list(weights.items())[: len(weights) // 2])  # noqa: E731
    damages.update({
        "model a list": (_edit("model", lambda weights: list(weights.values())), "'model'"),
        "half the weights": (_edit("model", half), "'model' entry lacks"),
        "a weight of another shape": (_edit("model", lambda w: {**w, next(iter(w)): torch.zeros(3)}), "does not fit"),
        "optimizer without param_groups": (_edit("optimizer", lambda o: {"state": o["state"]}), "'optimizer'"),
        "rng without torch": (_edit("rng", lambda r: {k: v for k, v in r.items() if k != "torch"}), "'rng'"),
        "running without loss": (_edit("running", lambda r: {k: v for k, v in r.items() if k != "loss"}),
                                 "'running'"),
        "step negative": (_edit("step", lambda step: -1), "'step'"),
        "best without score": (_edit("best", lambda best: {"step": 0}), "'best'"),
        "format of a newer release": (_edit("format", lambda _: 2), "format 2"),
        "task of another kind of run": (_edit("task", lambda _: "detection"), "detection"),
    })
    if kind == "cls":
        name, size = "model_args.name", "model_args.kwargs.embed_dim"
        damages.update({
            "class_names empty": (_edit("class_names", lambda _: []), "'class_names'"),
            "class_names not strings": (_edit("class_names", lambda names: list(range(len(names)))),
                                        "'class_names'"),
            "data_config without interpolation": (_edit("data_config", lambda c: {k: v for k, v in c.items()
                                                                                 if k != "interpolation"}),
                                                  "'data_config' entry lacks interpolation"),
            "data_config with an unknown interpolation": (_edit("data_config.interpolation", lambda _: "bogus"),
                                                          "'data_config'"),
            "data_config input size of two numbers": (_edit("data_config.input_size", lambda _: (16, 16)),
                                                      "'data_config'"),
            "model_args for another class count": (_edit("model_args.num_classes", lambda _: 5), "'model_args'"),
        })
    else:
        name, size = "model_args.backbone", "model_args.backbone_kwargs.embed_dim"
        damages.update({
            "spec without num_classes": (_edit("spec", lambda spec: {k: v for k, v in spec.items()
                                                                     if k != "num_classes"}), "'spec'"),
            "spec with another class count": (_edit("spec.num_classes", lambda _: 7), "'spec'"),
            "data without std": (_edit("data", lambda d: {k: v for k, v in d.items() if k != "std"}), "'data'"),
            "backbone_part without prefix": (_edit("backbone_part", lambda part: {"renames": part["renames"]}),
                                             "'backbone_part'"),
        })
    damages.update({
        "model name not a string": (_edit(name, lambda _: 3), "'model_args'"),
        "model name with an unknown pretrained tag": (_edit(name, lambda n: f"{n}.bogus"), ".bogus'"),
        "embed_dim 0": (_edit(size, lambda _: 0), "'model_args'"),
    })
    return damages


def _earlier_release_damages() -> dict[str, tuple]:
    """Classification checkpoints in the layout of an earlier release, damaged."""
    def earlier(state: dict) -> dict:
        return dict(model_name=state["model_args"]["name"], model_kwargs=state["model_args"]["kwargs"],
                    class_names=state["class_names"], data_config=state["data_config"], model=state["model"],
                    ema=None, config=state["config"], metrics=state["metrics"], epoch=1)

    return {
        "earlier release, model_name not a string": (lambda s: {**earlier(s), "model_name": 3}, "'model_name'"),
        "earlier release, model_name with an unknown pretrained tag": (
            lambda s: {**earlier(s), "model_name": f"{s['model_args']['name']}.bogus"}, "unknown pretrained tag"),
        "earlier release, half the weights": (lambda s: {**earlier(s), "model": dict(list(s["model"].items())[:9])},
                                              "'model' entry lacks"),
    }


DAMAGES = dict(cls={**_damages("cls"), **_earlier_release_damages()}, seg=_damages("seg"))
RUN_READERS = dict(
    cls={
        "eval": ["eval", "--checkpoint", "{F}", "--data", "{cls_data}", "--workers", "0"],
        "predict": ["predict", "{image}", "--checkpoint", "{F}"],
        "show-clusters": ["show-clusters", "{image}", "--checkpoint", "{F}", "--output", "{out}/damaged.png",
                          "--overwrite"],
        "export": ["export", MODEL, "--format", "torchscript", "--checkpoint", "{F}", "--output", "{out}/damaged.pt",
                   "--overwrite"],
        "train --resume": ["train", "--resume", "{F}", "--output", "{out}/damaged-run"],
    },
    seg={
        "seg-eval": ["seg-eval", "--checkpoint", "{F}", "--data", "{seg_data}", "--workers", "0"],
        "seg-predict": ["seg-predict", "{image}", "--checkpoint", "{F}", "--output", "{out}/damaged-predictions",
                        "--overwrite"],
        "seg-train --resume": ["seg-train", "--resume", "{F}", "--output", "{out}/damaged-seg-run"],
    },
)
DAMAGE_PROBES = [(kind, reader, damage) for kind in ("cls", "seg") for reader in RUN_READERS[kind]
                 for damage in DAMAGES[kind]
                 if not (damage.startswith("earlier release") and reader.endswith("--resume"))]  # never continued


@pytest.fixture(scope="module")
def damaged_files(runs, tmp_path_factory) -> dict[tuple[str, str], Path]:
    folder = tmp_path_factory.mktemp("damaged")
    files = {}
    for kind in ("cls", "seg"):
        state = read_checkpoint(runs[kind])
        for number, (damage, (change, _)) in enumerate(DAMAGES[kind].items()):
            files[kind, damage] = folder / f"{kind}-{number}.pth"
            torch.save(change(state), files[kind, damage])
    return files


@pytest.mark.parametrize("kind, reader, damage", DAMAGE_PROBES)
def test_damaged_run_checkpoints(kind, reader, damage, damaged_files, probe_data, capsys):
    file = damaged_files[kind, damage]
    values = dict(F=str(file), **{k: str(v) for k, v in probe_data.items()})
    status, err = _run([arg.format(**values) for arg in RUN_READERS[kind][reader]], capsys)
    _assert_one_line(status, err, file.name)
    assert DAMAGES[kind][damage][1] in err, err


def test_the_damage_sweep_covers_every_entry_and_every_reader():
    for kind, entries in TASK_ENTRIES.items():
        damaged = {name.split(" ")[0] for name in DAMAGES[kind]}
        assert set(RUN_ENTRIES) | set(entries) <= damaged
    assert {argv[0] for readers in RUN_READERS.values() for argv in readers.values()} == {
        "eval", "predict", "show-clusters", "export", "train", "seg-eval", "seg-predict", "seg-train"}
    assert len(DAMAGE_PROBES) == 5 * len(DAMAGES["cls"]) - len(_earlier_release_damages()) + 3 * len(DAMAGES["seg"])
    assert len(DAMAGE_PROBES) == 420


# ---- every file a command writes: planted links, missing folders, existing files ------------------------------


def _writers(data: dict[str, Path], runs: dict[str, Path]) -> dict[str, tuple[list[str], str]]:
    """Every file a command writes: (command line with ``{DIR}`` for an output folder, the file in it)."""
    image, seg_data = str(data["image"]), str(data["seg_data"])
    bench = ["bench", MODEL, *SHOW, "--no-memory", "--warmup", "0", "--repeats", "1", "--batch-size", "1"]
    return {
        "seg-predict labels": (["seg-predict", image, "--checkpoint", str(runs["seg"]), "--output", "{DIR}"],
                               "0_labels.png"),
        "seg-predict overlay": (["seg-predict", image, "--checkpoint", str(runs["seg"]), "--output", "{DIR}"],
                                "0_overlay.png"),
        "seg-eval --json": (["seg-eval", "--checkpoint", str(runs["seg"]), "--data", seg_data, "--workers", "0",
                             "--json", "{DIR}/scores.json"], "scores.json"),
        "bench --csv": ([*bench, "--csv", "{DIR}/rows.csv"], "rows.csv"),
        "bench --json": ([*bench, "--json", "{DIR}/rows.json"], "rows.json"),
        "show-clusters --output": (["show-clusters", "--model", MODEL, *SHOW, "--output", "{DIR}/groups.png"],
                                   "groups.png"),
        "convert": (["convert", str(runs["cls"]), "{DIR}/weights.safetensors", "--model", MODEL, "--model-kwargs",
                     json.dumps(dict(TINY_KWARGS, num_classes=2))], "weights.safetensors"),
        "export --output": (["export", MODEL, "--format", "torchscript", "--checkpoint", str(runs["cls"]), "--output",
                             "{DIR}/model.pt", "--check-images", "2"], "model.pt"),
    }


WRITERS = list(_writers(dict.fromkeys(("image", "seg_data"), "x"), dict.fromkeys(("cls", "seg"), "x")))
PRECIOUS = b"the user's own file"


def _plant_link(folder: Path, name: str) -> Path:
    """A symbolic link ``folder/name`` to a file of the user's elsewhere; returns the file."""
    folder.mkdir(parents=True)
    target = folder.parent / f"{folder.name}-precious"
    target.write_bytes(PRECIOUS)
    (folder / name).symlink_to(target)
    return target


@pytest.mark.parametrize("writer", WRITERS)
def test_a_planted_link_is_replaced_never_followed(writer, probe_data, runs, tmp_path, capsys):
    argv, name = _writers(probe_data, runs)[writer]
    folder = tmp_path / "out"
    target = _plant_link(folder, name)
    status, err = _run([arg.replace("{DIR}", str(folder)) for arg in argv] + ["--overwrite"], capsys)
    assert status == 0, err
    assert target.read_bytes() == PRECIOUS
    assert not (folder / name).is_symlink() and (folder / name).stat().st_size > 0


@pytest.mark.parametrize("writer", WRITERS)
def test_an_existing_output_is_kept_and_checked_before_the_work(writer, probe_data, runs, tmp_path, capsys):
    argv, name = _writers(probe_data, runs)[writer]
    folder = tmp_path / "out"
    target = _plant_link(folder, name)
    status, out, err = _run_capturing([arg.replace("{DIR}", str(folder)) for arg in argv], capsys)
    _assert_one_line(status, err, f"{folder / name} exists; pass --overwrite to replace it")
    assert out == ""  # refused before the work
    assert target.read_bytes() == PRECIOUS and (folder / name).is_symlink()
    assert sorted(p.name for p in folder.iterdir()) == [name]  # nothing else written, nothing half-written


@pytest.mark.parametrize("writer", [w for w in WRITERS if not w.startswith("seg-predict")])  # it makes its folder
def test_a_missing_output_folder_fails_before_the_work(writer, probe_data, runs, tmp_path, capsys):
    argv, name = _writers(probe_data, runs)[writer]
    folder = tmp_path / "missing"
    status, out, err = _run_capturing([arg.replace("{DIR}", str(folder)) for arg in argv], capsys)
    _assert_one_line(status, err, f"the folder {folder} does not exist")
    assert out == "" and not folder.exists()  # refused before the work


# ---- Ctrl-C while the command starts -----------------------------------------------------------------------

TORCH_LIBRARY = "libtorch_cpu"  # mapped early in ``import torch``: the command is then importing


def _loaded(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="watches the process through /proc")
@pytest.mark.parametrize("entry", ["python -m boat_vit", "boat-vit"])
def test_ctrl_c_while_the_command_starts_is_one_line(entry, probe_data):
    script = Path(sys.executable).with_name("boat-vit")
    command = [sys.executable, "-m", "boat_vit"] if entry != "boat-vit" else [str(script)]
    if entry == "boat-vit" and not script.exists():
        pytest.skip(reason="the boat-vit script is not installed next to the interpreter")
    process = subprocess.Popen([*command, "predict", str(probe_data["image"]), "--checkpoint", "none.pth"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not _loaded(process.pid, TORCH_LIBRARY) and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err.splitlines() == ["boat-vit: interrupted"], err  # the command's name alone: it was still starting
