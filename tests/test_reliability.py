"""Nothing lost, nothing silent: run directories, exact resume, weights that do not fit, metadata from files,
options that cannot run, images that cannot be read, threads for the cores a process may use."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import boat_vit.classification.train as classification_train
import boat_vit.seg.train as seg_train
from boat_vit.files import read_checkpoint
from boat_vit.classification import resolve_config
from boat_vit.classification.data import TolerantImageFolder
from boat_vit.cli import main as cli_main
from boat_vit.engine import default_threads, set_threads, usable_cores
from boat_vit.engine import threads as threads_module
from boat_vit.images import load_image
from boat_vit.images import distinct_stems as output_stems
from tiny_data import SEG_TRAIN_ARGS, TINY_MODEL, make_ade20k, train_args

MIDDLE_GREY_16 = 32768  # of 65535
SEG_RUN = ["--iterations", "2", "--eval-interval", "2", "--checkpoint-interval", "2"]
UNSHARE = shutil.which("unshare")


def _error(capsys) -> str:
    """The one line a failed command wrote to stderr (asserts it is one line without a traceback)."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _weights(run: Path) -> dict:
    return read_checkpoint(run / "last.pth")["model"]


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def one_epoch_run(shapes_folder, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run") / "run"
    assert cli_main(train_args(shapes_folder, run, 1)) == 0
    return run


@pytest.fixture(scope="module")
def segmentation_run(ade_shapes, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("seg") / "run"
    assert cli_main(["seg-train", *SEG_TRAIN_ARGS, "--data", str(ade_shapes), "--output", str(run), *SEG_RUN]) == 0
    return run


# ---- the run directory -----------------------------------------------------------------------------------


def test_a_finished_run_is_not_replaced_without_asking(one_epoch_run, shapes_folder, capsys):
    best = (one_epoch_run / "best.pth").read_bytes()
    assert cli_main(train_args(shapes_folder, one_epoch_run, 1)) == 2
    assert "already holds a run (last.pth, best.pth, metrics.csv, summary.json); pass --resume" in _error(capsys)
    assert (one_epoch_run / "best.pth").read_bytes() == best


def test_a_segmentation_run_is_not_replaced_without_asking(ade_shapes, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("iteration,miou\n")
    assert cli_main(["seg-train", *SEG_TRAIN_ARGS, "--data", str(ade_shapes), "--output", str(run), *SEG_RUN]) == 2
    assert "already holds a run (metrics.csv)" in _error(capsys)
    assert (run / "metrics.csv").read_text() == "iteration,miou\n"


def test_temporary_files_are_exclusive_and_orphans_are_removed(shapes_folder, tmp_path):
    run, outside = tmp_path / "run", tmp_path / "outside"
    run.mkdir()
    outside.mkdir()
    for name in ("metrics.csv", "summary.json"):
        (outside / name).write_text("precious")
        (run / f".{name}.tmp").symlink_to(outside / name)  # planted links with the old fixed temporary names
    (run / ".last.pth.k3j9x2.tmp").write_bytes(b"half a checkpoint")  # left behind by a killed save
    (run / ".notes.tmp").write_text("the user's")
    assert cli_main(train_args(shapes_folder, run, 1)) == 0
    assert all((outside / name).read_text() == "precious" for name in ("metrics.csv", "summary.json"))
    assert not (run / ".last.pth.k3j9x2.tmp").exists() and (run / ".notes.tmp").read_text() == "the user's"
    planted = [".metrics.csv.tmp", ".notes.tmp", ".summary.json.tmp"]
    assert sorted(p.name for p in run.glob(".*")) == planted  # every save renamed its temporary file into place


def test_a_non_finite_evaluation_never_becomes_best(shapes_folder, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    evaluate = classification_train.evaluate_classifier

    def diverging_after_first_epoch(model, loader, *args, **kwargs):
        metrics = evaluate(model, loader, *args, **kwargs)
        return metrics if not (run / "last.pth").exists() else dict(metrics, loss=float("nan"))

    monkeypatch.setattr(classification_train, "evaluate_classifier", diverging_after_first_epoch)
    assert cli_main(train_args(shapes_folder, run, 2)) == 2
    assert "non-finite validation loss at epoch 2; the run stopped before saving it" in _error(capsys)
    assert read_checkpoint(run / "best.pth")["step"] == read_checkpoint(run / "last.pth")["step"] == 1  # epochs done


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_a_run_diverging_before_its_first_checkpoint_says_none_was_saved(task, shapes_folder, ade_shapes, tmp_path,
                                                                         capsys):
    run = tmp_path / "run"
    diverging = ["--lr", "1e30"]  # the second step's loss is no longer finite
    if task == "classification":
        argv = train_args(shapes_folder, run, 1, *diverging, "--warmup-epochs", "0")
    else:
        argv = ["seg-train", *SEG_TRAIN_ARGS, "--data", str(ade_shapes), "--output", str(run), *SEG_RUN, *diverging,
                "--warmup-iters", "0"]
    assert cli_main(argv) == 2
    error = _error(capsys)
    assert "non-finite loss at " in error and "step 2" in error or "iteration 2" in error
    assert f"no checkpoint had been saved in {run} yet" in error and "intact" not in error
    assert not (run / "last.pth").exists()


def test_an_evaluation_of_non_finite_outputs_warns(one_epoch_run, segmentation_run, shapes_folder, ade_shapes,
                                                   tmp_path, capsys):
    for run, name, bias in ((one_epoch_run, "cls.pth", "head.fc.bias"),
                            (segmentation_run, "seg.pth", "upernet.segmentation_head.0.bias")):
        state = read_checkpoint(run / "last.pth")  # the classifier's bias becomes NaN
        state["model"] = {**state["model"], bias: torch.full_like(state["model"][bias], float("nan"))}
        torch.save(state, tmp_path / name)
    image = str(shapes_folder / "val" / "circle" / "0.png")
    commands = {
        "eval": (["eval", "--checkpoint", str(tmp_path / "cls.pth"), "--data", str(shapes_folder), "--workers", "0"],
                 "boat-vit eval: warning: the loss is nan: the model gives non-finite outputs"),
        "predict": (["predict", image, "--checkpoint", str(tmp_path / "cls.pth")],
                    f"boat-vit predict: warning: non-finite probabilities for {image}"),
        "seg-eval": (["seg-eval", "--checkpoint", str(tmp_path / "seg.pth"), "--data", str(ade_shapes), "--workers",
                      "0"], "pixels got non-finite class scores from"),
    }
    for argv, warning in commands.values():
        assert cli_main(argv) == 0
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("boat-vit")]  # no bars
        assert len(lines) == 1 and warning in lines[0] and str(tmp_path) in lines[0], lines


def test_a_model_built_for_a_size_trains_at_that_size(shapes_folder, tmp_path):
    args = train_args(shapes_folder, tmp_path / "run", 1)
    del args[args.index("--img-size"):args.index("--img-size") + 2]  # the size comes from --model-kwargs alone
    assert cli_main(args) == 0
    assert read_checkpoint(tmp_path / "run" / "last.pth")["data_config"]["input_size"] == (3, 16, 16)
    digits = resolve_config(dict(preset="digits", img_size=64))  # the preset's model takes the size asked for
    assert digits.img_size == digits.model_kwargs["img_size"] == 64


def test_a_non_finite_segmentation_output_stops_the_run(ade_shapes, tmp_path, monkeypatch, capsys):
    evaluate = seg_train.evaluate_segmentation
    monkeypatch.setattr(seg_train, "evaluate_segmentation",
                        lambda *a, **k: evaluate(*a, **k).__class__(**{**vars(evaluate(*a, **k)),
                                                                       "non_finite_pixels": 1}))
    run = tmp_path / "run"
    assert cli_main(["seg-train", *SEG_TRAIN_ARGS, "--data", str(ade_shapes), "--output", str(run), *SEG_RUN]) == 2
    assert "non-finite segmentation output at iteration 2" in _error(capsys)
    assert not (run / "best.pth").exists()


def test_segmentation_checks_both_splits_before_training(tmp_path, capsys):
    data = make_ade20k(tmp_path / "data", train=8, val=2)
    bad = data / "ADEChallengeData2016/annotations/validation/validation_001.png"
    Image.fromarray(np.full((56, 80), 200, np.uint8)).save(bad)
    run = tmp_path / "run"
    started = time.perf_counter()
    status = cli_main(["seg-train", *SEG_TRAIN_ARGS, "--data", str(data), "--output", str(run), "--iterations", "1000",
                       "--eval-interval", "1000", "--batch-size", "8"])
    assert status == 2 and time.perf_counter() - started < 60
    assert "validation_001.png has values outside the 4 classes: 200" in _error(capsys)
    assert not (run / "last.pth").exists() and not (run / "metrics.csv").exists()


def test_segmentation_predictions_of_images_with_the_same_name_do_not_collide(tmp_path):
    for split in ("training", "validation"):
        (tmp_path / split).mkdir()
    paths = [str(tmp_path / split / "s0.jpg") for split in ("training", "validation")]
    assert output_stems(paths) == ["training_s0", "validation_s0"]
    assert output_stems([str(tmp_path / "a.jpg"), str(tmp_path / "b.png")]) == ["a", "b"]
    with pytest.raises(ValueError, match="the same image is given twice"):
        output_stems([paths[0], paths[0]])
    # one folder, one name, two formats; then folder and file names that join to the same name
    assert output_stems([f"{tmp_path}/d/s1.jpg", f"{tmp_path}/d/s1.png", f"{tmp_path}/d/x.png"]) == [
        "s1_jpg", "s1_png", "x"]
    assert output_stems([f"{tmp_path}/a_b/c.jpg", f"{tmp_path}/a/b/c.jpg"]) == ["a_b_c_jpg", "a_b_c_jpg-2"]
    assert output_stems([f"{tmp_path}/a_b/c.jpg", f"{tmp_path}/a/b/c.jpg", f"{tmp_path}/a_b_c_jpg-2.jpg"]) == [
        "a_b_c_jpg", "a_b_c_jpg-3", "a_b_c_jpg-2"]


def test_seg_predict_never_gives_two_inputs_one_output(segmentation_run, ade_shapes, tmp_path, capsys):
    source = ade_shapes / "ADEChallengeData2016" / "images" / "validation"
    images = tmp_path / "d"
    images.mkdir()
    Image.open(source / "validation_000.jpg").save(images / "s1.jpg")
    Image.open(source / "validation_001.jpg").save(images / "s1.png")  # another image of the same name
    argv = ["seg-predict", str(images / "s1.jpg"), str(images / "s1.png"), "--checkpoint",
            str(segmentation_run / "last.pth"), "--output", str(tmp_path / "out")]
    assert cli_main(argv) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["s1_jpg_labels.png", "s1_jpg_overlay.png", "s1_png_labels.png", "s1_png_overlay.png"]
    sizes = [Image.open(tmp_path / "out" / name).size for name in written]
    assert sizes == [Image.open(images / "s1.jpg").size] * 2 + [Image.open(images / "s1.png").size] * 2
    assert capsys.readouterr().out.split() == [str(tmp_path / "out" / name) for name in written]


def _in_a_mount_namespace(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Runs ``script`` (sh) as root of a new user and mount namespace (tmpfs and bind mounts are allowed there)."""
    if UNSHARE is None or subprocess.run([UNSHARE, "-rm", "true"], capture_output=True).returncode:
        pytest.skip(reason="needs unshare with user and mount namespaces (a full or read-only disk is simulated)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([UNSHARE, "-rm", "sh", "-ec", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)


def test_a_full_disk_is_one_line_and_keeps_nothing_half_written(shapes_folder, tmp_path):
    command = " ".join(f"'{a}'" for a in [sys.executable, "-m", "boat_vit", *train_args(shapes_folder, "full/run", 1)])
    result = _in_a_mount_namespace(f"mkdir full && mount -t tmpfs -o size=96k tmpfs full && {command}", tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == ["boat-vit train: error: no space left on full/run"]


def test_a_read_only_output_fails_before_the_first_step(one_epoch_run, shapes_folder, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(one_epoch_run, run)
    command = " ".join(f"'{a}'" for a in [sys.executable, "-m", "boat_vit", *train_args(shapes_folder, run, 1),
                                           "--resume", str(run)])
    result = _in_a_mount_namespace(f"mount --bind run run && mount -o remount,bind,ro run && {command}", tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [f"boat-vit train: error: cannot write to {run}: Read-only file system"]


# ---- results that must be right ----------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_after_sigkill_is_exact_with_workers_and_drop_path(shapes_folder, tmp_path, workers):
    recipe = ("--workers", str(workers), "--drop-path", "0.2")
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert cli_main(train_args(shapes_folder, reference, 3, *recipe)) == 0
    process = subprocess.Popen([sys.executable, "-m", "boat_vit", *train_args(shapes_folder, killed, 3, *recipe)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "last.pth").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert cli_main(["train", "--resume", str(killed), "--workers", str(workers), "--no-progress"]) == 0
    assert _same_weights(_weights(reference), _weights(killed))


def test_the_number_of_workers_does_not_change_the_result(shapes_folder, tmp_path):
    # at a given thread count: the default number of threads follows the workers, and a matrix product may
    # round differently with another number of threads
    runs = [tmp_path / f"workers{workers}" for workers in (0, 2)]
    for run, workers in zip(runs, (0, 2)):
        assert cli_main(train_args(shapes_folder, run, 1, "--workers", str(workers), "--threads", "1")) == 0
    assert _same_weights(*map(_weights, runs))


def test_weights_of_another_model_are_refused(shapes_folder, tmp_path, capsys):
    other = tmp_path / "resnet.pth"
    torch.save(timm.create_model("resnet10t", num_classes=2).state_dict(), other)
    assert cli_main(train_args(shapes_folder, tmp_path / "a", 1, "--pretrained-file", str(other))) == 2
    assert f"{other} does not fit boat_swin_tiny_patch4_window7_224" in _error(capsys)

    torch.manual_seed(0)
    kwargs = json.loads(TINY_MODEL[3])
    few = {k: v for k, v in timm.create_model(TINY_MODEL[1], num_classes=2, **kwargs).state_dict().items()
           if k.startswith("patch_embed.")}  # a few tensors of the right model
    torch.save(few, tmp_path / "few.pth")
    assert cli_main(train_args(shapes_folder, tmp_path / "b", 1, "--pretrained-file", str(tmp_path / "few.pth"))) == 2
    assert re.search(r"few.pth gives only \d% of the weights of boat_swin_tiny_patch4_window7_224 \(another "
                     r"model\?\); a partial load needs --partial-weights", _error(capsys))
    assert cli_main(train_args(shapes_folder, tmp_path / "c", 1, "--pretrained-file", str(tmp_path / "few.pth"),
                               "--partial-weights")) == 0


def test_backbone_weights_of_another_model_are_refused(ade_shapes, tmp_path, capsys):
    other = tmp_path / "resnet.pth"
    torch.save(timm.create_model("resnet10t").state_dict(), other)
    assert cli_main(["seg-train", *SEG_TRAIN_ARGS, "--data", str(ade_shapes), "--output", str(tmp_path / "run"),
                     "--backbone-weights", str(other), *SEG_RUN]) == 2
    assert "gives only 0% of the weights of boat_swin_tiny_patch4_window7_224" in _error(capsys)


def test_model_arguments_from_a_file_are_an_allowlist(one_epoch_run, shapes_folder, tmp_path, capsys):
    state = read_checkpoint(one_epoch_run / "last.pth")
    state["model_args"]["kwargs"] = dict(state["model_args"]["kwargs"], pretrained=True,
                                         pretrained_cfg_overlay=dict(file=str(tmp_path / "elsewhere.pth")))
    torch.save(state, tmp_path / "crafted.pth")
    image = shapes_folder / "val" / "circle" / "0.png"
    assert cli_main(["predict", str(image), "--checkpoint", str(tmp_path / "crafted.pth")]) == 2
    assert "sets model arguments ['pretrained', 'pretrained_cfg_overlay'], which a file may not set" in _error(capsys)


def test_resume_takes_the_runs_options_and_refuses_changes(one_epoch_run, shapes_folder, capsys):
    config = resolve_config(dict(resume=str(one_epoch_run), workers=1))
    assert (config.lr, config.batch_size, config.img_size, config.workers) == (1e-3, 8, 16, 1)
    assert cli_main(train_args(shapes_folder, one_epoch_run, 1, "--resume", str(one_epoch_run), "--lr", "0.1",
                               "--batch-size", "16")) == 2
    error = _error(capsys)
    assert "continues a run with its own options; these differ: --batch-size 16 (the run has 8); --lr 0.1" in error


def test_img_size_sets_the_models_size(shapes_folder, tmp_path):
    kwargs = {k: v for k, v in json.loads(TINY_MODEL[3]).items() if k != "img_size"}
    args = train_args(shapes_folder, tmp_path / "run", 1)
    args[args.index(TINY_MODEL[3])] = json.dumps(kwargs)
    args[args.index("--img-size") + 1] = "32"
    assert cli_main(args) == 0
    assert read_checkpoint(tmp_path / "run" / "last.pth")["data_config"]["input_size"] == (3, 32, 32)


def test_sixteen_bit_images_keep_their_contrast(tmp_path):
    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((8, 8), MIDDLE_GREY_16, np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I;16")
    assert np.asarray(load_image(path)).mean() == MIDDLE_GREY_16 >> 8
    (tmp_path / "data" / "grey").mkdir(parents=True)
    shutil.copy(path, tmp_path / "data" / "grey" / "a.png")
    image, _ = TolerantImageFolder(tmp_path / "data")[0]
    assert np.asarray(image).mean() == MIDDLE_GREY_16 >> 8


def test_a_link_loop_in_a_class_folder_adds_no_samples(shapes_folder, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes_folder / "train", data)
    (data / "circle" / "self").symlink_to(".", target_is_directory=True)
    assert len(TolerantImageFolder(data)) == 48


def test_options_that_cannot_run_are_refused(one_epoch_run, ade_shapes, shapes_folder, tmp_path, capsys):
    image = str(shapes_folder / "val" / "circle" / "0.png")
    assert cli_main(train_args(shapes_folder, tmp_path / "a", 1, "--ema-decay", "2")) == 2
    assert "--ema-decay must be > 0 and < 1, got 2.0" in _error(capsys)
    assert cli_main(["predict", image, "--model", TINY_MODEL[1]]) == 2
    assert ("needs its weights (--pretrained-file or --pretrained): a model with random weights predicts nothing"
            in _error(capsys))
    assert cli_main(["eval", "--checkpoint", str(one_epoch_run / "last.pth"), "--model", TINY_MODEL[1]]) == 2
    assert "--checkpoint brings its own model and weights; drop --model" in _error(capsys)
    assert cli_main(train_args(shapes_folder, one_epoch_run, 1, "--resume", str(one_epoch_run),
                               "--pretrained-file", str(one_epoch_run / "best.pth"))) == 2
    assert ("--resume continues a run with its own weights; drop --pretrained-file, --pretrained and --overwrite"
            in _error(capsys))
    for scale in ("0", "-1"):
        with pytest.raises(SystemExit) as exit_:
            cli_main(["seg-eval", "--checkpoint", "x.pth", "--data", str(ade_shapes), "--scales", "1", scale])
        assert exit_.value.code == 2
        assert f"argument --scales: must be above 0, got {scale}" in _error(capsys)


def test_too_large_images_are_skipped_in_training_and_reported_by_predict(one_epoch_run, shapes_folder, tmp_path,
                                                                          monkeypatch, capsys):
    data = tmp_path / "data"
    shutil.copytree(shapes_folder, data)
    Image.new("RGB", (64, 64)).save(data / "train" / "circle" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x64 is then a decompression bomb (> 2x the limit)
    assert cli_main(train_args(data, tmp_path / "run", 1, "--batch-size", "10")) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["skipped_images"] == 1
    capsys.readouterr()
    good = str(data / "val" / "circle" / "0.png")
    assert cli_main(["predict", str(data / "train" / "circle" / "huge.png"), good, "--checkpoint",
                     str(one_epoch_run / "last.pth")]) == 2
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == good
    assert "huge.png is too large to decode safely" in captured.err and len(captured.err.splitlines()) == 1


# ---- threads --------------------------------------------------------------------------------------------


def test_default_threads_follow_the_usable_cores_and_workers(monkeypatch):
    monkeypatch.setattr(threads_module.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(threads_module, "_cgroup_cores", lambda: None)
    assert usable_cores() == 8 and default_threads(workers=2) == 6 and default_threads(2, processes=2) == 2
    monkeypatch.setattr(threads_module, "_cgroup_cores", lambda: 1.5)  # a container's quota of 1.5 cores
    assert usable_cores() == 2 and default_threads(workers=2) == 1


def test_threads_option_and_environment(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        torch.set_num_threads(3)
        assert set_threads(None, workers=2) == 3  # the environment chose
        with pytest.raises(ValueError, match="threads must be at least 1, got 0"):
            set_threads(0)
    finally:
        torch.set_num_threads(before)
