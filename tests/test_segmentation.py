"""Semantic segmentation: UperNet on BOAT backbones at any size, data and augmentation, metrics, inference,
training (learning, exact resume), evaluation and prediction commands, backbone initialisation, bad input."""
import json
import math
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from PIL import Image

import boat_vit.engine.trainer as trainer
from boat_vit.cli import main as cli_main
from boat_vit.files import read_checkpoint as load_checkpoint
from boat_vit.seg import BoatUPerNet, load_backbone_weights
from boat_vit.seg.data import (
    ADE20K_CLASSES, IGNORE_INDEX, EvalTransform, SegmentationFolder, TrainAugmentation, dataset_spec, rescale_size,
)
from boat_vit.seg.inference import segment, slide_logits, sliding_windows
from boat_vit.seg.metrics import ConfusionMatrix
from boat_vit.seg import resolve_seg_config
from tiny_data import CSWIN, NUM_CLASSES, SHAPE_COLOURS, SWIN, TINY_CSWIN, TINY_SWIN, make_ade20k
from tiny_data import SEG_TRAIN_ARGS as TRAIN_ARGS

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these small models run fastest so on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shapes(ade_shapes) -> Path:
    return ade_shapes


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory) -> Path:
    """A short run on the shapes: 60 iterations, evaluation at 30 and 60."""
    run = tmp_path_factory.mktemp("seg") / "run"
    assert cli_main(["seg-train", *TRAIN_ARGS, "--data", str(shapes), "--output", str(run), "--iterations", "60",
                     "--eval-interval", "30", "--checkpoint-interval", "10"]) == 0
    return run


def _validation_labels(shapes: Path) -> list[np.ndarray]:
    folder = shapes / "ADEChallengeData2016" / "annotations" / "validation"
    return [np.asarray(Image.open(path), dtype=np.int64) for path in sorted(folder.glob("*.png"))]


# ---------------------------------------------------------------------------------------------- model


@pytest.mark.parametrize("backbone, kwargs", [(SWIN, TINY_SWIN), (CSWIN, TINY_CSWIN)])
def test_upernet_runs_at_any_size(backbone, kwargs):
    model = BoatUPerNet(backbone, 5, kwargs, decoder_channels=16, aux_channels=8).eval()
    assert model.backbone.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        for height, width in ((64, 64), (70, 50), (33, 97), (683 // 8, 64)):
            x = torch.randn(2, 3, height, width)
            logits, aux = model(x, with_aux=True)
            assert logits.shape == (2, 5, height, width) and torch.isfinite(logits).all()
            assert aux.shape[:2] == (2, 5) and aux.shape[-2:] == (math.ceil(height / 32) * 2, math.ceil(width / 32) * 2)
            torch.testing.assert_close(model(x), logits)
            torch.testing.assert_close(model(x[:1]), logits[:1], atol=1e-5, rtol=1e-4)  # batch-independent


@pytest.mark.slow
@pytest.mark.parametrize("height, width", [(512, 512), (512, 683)])
def test_upernet_boat_swin_tiny_full_size(height, width):
    model = BoatUPerNet(SWIN, len(ADE20K_CLASSES)).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, height, width))
    assert logits.shape == (1, 150, height, width) and torch.isfinite(logits).all()


def test_no_weight_decay_keeps_the_backbone_exemptions():
    model = BoatUPerNet(SWIN, 3, TINY_SWIN, decoder_channels=16)
    exempt = model.no_weight_decay()
    tables = {n for n, _ in model.named_parameters() if n.endswith("relative_position_bias_table")}
    assert exempt == tables and len(tables) == 8


# ------------------------------------------------------------------------------------ backbone weights


def test_backbone_weights_from_classification_checkpoints(tmp_path, caplog):
    from safetensors.torch import save_file

    classifier = timm.create_model(SWIN, num_classes=10, **TINY_SWIN)
    weights = classifier.state_dict()
    torch.save(dict(model=weights, epoch=3), tmp_path / "best.pth")  # a boat-vit training checkpoint
    save_file({k: v.contiguous() for k, v in weights.items()}, tmp_path / "converted.safetensors")
    for name, entry in (("best.pth", "model"), ("converted.safetensors", "")):
        model = BoatUPerNet(SWIN, 3, TINY_SWIN, decoder_channels=16)
        report = load_backbone_weights(model, tmp_path / name)
        assert report.entry == entry and not report.initial
        assert sorted(report.unused) == ["head.fc.bias", "head.fc.weight", "norm.bias", "norm.weight"]
        assert len(report.loaded) == len(model.backbone.state_dict())
        torch.testing.assert_close(model.backbone.state_dict()["layers_2.blocks.1.fsla.qkv.weight"],
                                   weights["layers.2.blocks.1.fsla.qkv.weight"], rtol=0, atol=0)
        assert "141 tensors loaded, 0 left initial, 4 unused" in report.summary()

    plain_swin = {k: v for k, v in weights.items() if "fsla" not in k}  # no FSLA weights: those stay initial
    torch.save(plain_swin, tmp_path / "swin.pth")
    model = BoatUPerNet(SWIN, 3, TINY_SWIN, decoder_channels=16)
    fresh = model.backbone.state_dict()["layers_0.blocks.1.fsla.proj.weight"].clone()
    report = load_backbone_weights(model, tmp_path / "swin.pth")
    assert len(report.initial) == 24 and all("fsla" in key for key in report.initial)
    torch.testing.assert_close(model.backbone.state_dict()["layers_0.blocks.1.fsla.proj.weight"], fresh)

    wider = BoatUPerNet(SWIN, 3, dict(TINY_SWIN, embed_dim=32), decoder_channels=16)
    with pytest.raises(ValueError, match=rf"best.pth does not fit {SWIN} .*patch_embed.proj.weight: "
                                         r"\(16, 3, 4, 4\) in the file, \(32, 3, 4, 4\) in the model"):
        load_backbone_weights(wider, tmp_path / "best.pth")


@pytest.mark.parametrize("stem, backbone, kwargs", [
    ("boat_swin_mini", SWIN, dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))),
    ("boat_cswin_mini", CSWIN, dict(embed_dim=32, depths=(1, 2, 2, 1), num_heads=(2, 4, 8, 16))),
])
def test_released_weights_initialise_the_backbone_as_timm_loads_them(reference, tmp_path, stem, backbone, kwargs):
    path = tmp_path / "released.pth"
    torch.save(reference(stem)["state_dict"], path)  # released (Microsoft / CSWin) key layout
    model = BoatUPerNet(backbone, 3, kwargs, decoder_channels=16).eval()
    report = load_backbone_weights(model, path)
    assert not report.initial and len(report.loaded) == len(model.backbone.state_dict())
    assert sorted(report.unused) == ["head.fc.bias", "head.fc.weight", "norm.bias", "norm.weight"]
    classifier = timm.create_model(backbone, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                                   num_classes=10, strict_img_size=False, **kwargs).eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        expected = classifier.forward_intermediates(x, intermediates_only=True)
        features = model.upernet.encoder(x)[2:]  # smp adds the input and an empty stride-2 map first
    for ours, theirs in zip(features, expected, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_seg_train_reports_the_backbone_initialisation(shapes, tmp_path, capsys):
    classifier = timm.create_model(SWIN, num_classes=10, **TINY_SWIN)
    torch.save(dict(model=classifier.state_dict()), tmp_path / "best.pth")
    run = tmp_path / "run"
    assert cli_main(["seg-train", *TRAIN_ARGS, "--data", str(shapes), "--output", str(run), "--iterations", "1",
                     "--backbone-weights", str(tmp_path / "best.pth")]) == 0
    assert "(entry 'model'): 141 tensors loaded, 0 left initial, 4 unused" in capsys.readouterr().out
    report = json.loads((run / "summary.json").read_text())["backbone_weights"]
    assert len(report["loaded"]) == 141 and report["initial"] == [] and "head.fc.weight" in report["unused"]


def test_a_segmentation_run_checkpoint_as_weights(trained, shapes, tmp_path, capsys):
    """Its backbone part initialises a backbone; every command that wants a whole model refuses it in one line."""
    best = str(trained / "best.pth")
    assert cli_main(["seg-train", *TRAIN_ARGS, "--data", str(shapes), "--output", str(tmp_path / "again"),
                     "--iterations", "1", "--backbone-weights", best]) == 0
    assert "(entry 'model (backbone)'): 141 tensors loaded, 0 left initial, 0 unused" in capsys.readouterr().out
    whole_model = [
        ["train", "--model", SWIN, "--model-kwargs", json.dumps(TINY_SWIN), "--data", "digits",
         "--pretrained-file", best, "--reset-head", "--output", str(tmp_path / "cls")],
        ["eval", "--model", SWIN, "--pretrained-file", best],
        ["predict", best, "--model", SWIN, "--pretrained-file", best],
        ["export", SWIN, "--format", "torchscript", "--output", str(tmp_path / "m.pt"), "--pretrained-file", best],
        ["show-clusters", "--model", SWIN, "--pretrained-file", best, "--output", str(tmp_path / "c.png")],
        ["convert", best, str(tmp_path / "c.safetensors"), "--model", SWIN],
    ]
    for args in whole_model:
        assert cli_main(args) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "best.pth is a segmentation training checkpoint: only its backbone" in err, args
    assert not any((tmp_path / name).exists() for name in ("m.pt", "c.png", "c.safetensors", "cls/last.pth"))


# --------------------------------------------------------------------------------------------- metrics


def test_confusion_matrix_scores_by_hand():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 0]])
    prediction = torch.tensor([[0, 1, 1, 1], [2, 0, 3, 0]])
    confusion = ConfusionMatrix(num_classes=5, ignore_index=255)
    confusion.update(prediction[:1], target[:1])  # accumulated over two updates
    confusion.update(prediction[1:], target[1:])
    scores = confusion.scores()
    # class 0: 2 hits, 3 truth, 3 predicted -> IoU 2/4; class 1: 2 hits, 2 truth, 3 predicted -> 2/3;
    # class 2: 1 hit, 2 truth, 1 predicted -> 1/2; class 3: never true nor predicted (the 3 is ignored) -> NaN;
    # class 4: absent -> NaN. Pixel accuracy: 5 of 7 labelled pixels.
    expected = [50.0, 200 / 3, 50.0]
    assert scores.iou[:3] == pytest.approx(expected) and math.isnan(scores.iou[3]) and math.isnan(scores.iou[4])
    assert scores.miou == pytest.approx(sum(expected) / 3)
    assert scores.acc[:3] == pytest.approx([200 / 3, 100.0, 50.0]) and scores.macc == pytest.approx(650 / 9)
    assert scores.aacc == pytest.approx(500 / 7) and scores.pixels == 7

    confusion.update(torch.tensor([3]), torch.tensor([1]))  # a class predicted but absent counts with IoU 0
    assert confusion.scores().iou[3] == 0.0


# ------------------------------------------------------------------------------------------- inference


def test_sliding_windows_cover_every_pixel_inside_the_image():
    for height, width in ((512, 512), (512, 683), (1024, 512), (300, 700), (511, 1025), (100, 90)):
        crop = (min(512, height), min(512, width))
        cover = torch.zeros(height, width, dtype=torch.int64)
        for top, left in sliding_windows(height, width, (512, 512), (341, 341)):
            assert 0 <= top <= height - crop[0] and 0 <= left <= width - crop[1]
            cover[top:top + crop[0], left:left + crop[1]] += 1
        assert cover.min() >= 1
    assert sliding_windows(512, 683, (512, 512), (341, 341)) == [(0, 0), (0, 171)]
    with pytest.raises(ValueError, match="stride"):
        sliding_windows(512, 512, (512, 512), (600, 341))


def test_slide_equals_whole_for_a_pointwise_model():
    torch.manual_seed(0)
    model = nn.Conv2d(3, 6, 1)  # every output pixel depends on its input pixel only
    images = torch.randn(2, 3, 90, 131)
    with torch.no_grad():
        whole = model(images)
        torch.testing.assert_close(slide_logits(model, images, 6, (32, 48), (20, 30)), whole)
        probabilities = segment(model, images, 6, (90, 131), mode="slide", crop=(32, 48), stride=(20, 30))
        torch.testing.assert_close(probabilities, whole.softmax(1))
        flipped = segment(model, images, 6, (90, 131), flip=True)  # a pointwise model is flip-equivariant
        torch.testing.assert_close(flipped, whole.softmax(1))
        multi = segment(model, images, 6, (45, 70), scales=(0.5, 1.0, 1.5), flip=True)
    assert multi.shape == (2, 6, 45, 70)
    torch.testing.assert_close(multi.sum(1), torch.ones(2, 45, 70))
    with pytest.raises(ValueError, match="'whole' or 'slide'"):
        segment(model, images, 6, (90, 131), mode="tiles")


# ------------------------------------------------------------------------------------------------ data


def test_ade20k_convention_and_folder_spec():
    spec = dataset_spec("ade20k")
    assert spec.num_classes == 150 and spec.reduce_zero_label and spec.class_names[0] == "wall"
    assert dataset_spec("ade20k", num_classes=4).class_names == ("0", "1", "2", "3")
    folder = dataset_spec("folder", num_classes=3, ignore_index=7)
    assert folder.ignore_index == 7 and not folder.reduce_zero_label
    with pytest.raises(ValueError, match="needs its number of classes"):
        dataset_spec("folder")
    with pytest.raises(ValueError, match="ignore index 2 is a class index"):
        dataset_spec("folder", num_classes=3, ignore_index=2)


def test_labels_shift_and_ignore(tmp_path):
    root = tmp_path / "d"
    for folder in ("images/training", "annotations/training"):
        (root / folder).mkdir(parents=True)
    Image.new("RGB", (4, 1)).save(root / "images/training/a.png")
    Image.fromarray(np.array([[0, 1, 150, 255]], dtype=np.uint8)).save(root / "annotations/training/a.png")
    ade = SegmentationFolder(root, "training", dataset_spec("ade20k"), EvalTransform((0, 0, 0), (1, 1, 1)))
    assert ade.load(0)[1].tolist() == [[IGNORE_INDEX, 0, 149, IGNORE_INDEX]]
    plain = SegmentationFolder(root, "training", dataset_spec("folder", num_classes=151),
                               EvalTransform((0,) * 3, (1,) * 3))
    assert plain.load(0)[1].tolist() == [[0, 1, 150, IGNORE_INDEX]]


def test_train_augmentation_is_label_aware(shapes):
    folder = SegmentationFolder(shapes, "training", dataset_spec("ade20k", num_classes=NUM_CLASSES),
                                EvalTransform((0,) * 3, (1,) * 3))
    image, label = folder.load(1)  # 80x56: smaller than the crop after a small rescale, so padded
    plain = TrainAugmentation((72, 72), (0,) * 3, (1,) * 3, scale=(80, 56), ratio_range=(0.8, 1.2),
                              photometric=False)
    distorted = TrainAugmentation((72, 72), (0,) * 3, (1,) * 3, scale=(80, 56), ratio_range=(0.8, 1.2))
    colours = {value - 1: torch.tensor(c) / 255 for value, c in SHAPE_COLOURS.items()}  # class -> colour
    for seed in range(6):
        random.seed(seed)
        pixels, target = plain(image, label)
        random.seed(seed)
        distorted_pixels, distorted_target = distorted(image, label)
        assert pixels.shape == (3, 72, 72) and target.shape == (72, 72) and target.dtype == torch.int64
        assert torch.equal(distorted_target, target)  # photometric distortion leaves geometry and labels alone
        padded = (pixels == 0).all(0)
        assert padded.any() and (target[padded] == IGNORE_INDEX).all()
        for cls, colour in colours.items():
            inside = target == cls
            if inside.sum() > 20:  # shape pixels carry the shape's colour (edges may blend)
                close = ((pixels.permute(1, 2, 0)[inside] - colour).abs().max(1).values < 0.2).float().mean()
                assert close > 0.5  # a label map out of register with the image scores 0
    assert rescale_size(683, 512, (2048, 512)) == (683, 512) and rescale_size(100, 50, (2048, 512)) == (1024, 512)


LABEL_2 = "annotations/training/training_002.png"  # of a 64x64 image


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda base: (base / "annotations/training/training_003.png").unlink(),
         r"1 images in .*images/training have no label map .png in .*: training_003"),
        (lambda base: (base / "images/training/training_005.jpg").unlink(),
         r"1 label maps in .*annotations/training have no image in .*: training_005"),
        (lambda base: Image.fromarray(np.full((64, 64), 200, np.uint8)).save(base / LABEL_2),
         r"label map .*training_002.png has values outside the 4 classes: 200 \(allowed: 1..4 and the ignore"),
        (lambda base: Image.new("L", (32, 64)).save(base / LABEL_2),
         r"image .*training_002.jpg is 64x64 but its label map .*training_002.png is 32x64"),
    ],
)
def test_bad_training_data_is_named(tmp_path, capsys, breakage, message):
    data = make_ade20k(tmp_path / "data", train=8, val=2)
    breakage(data / "ADEChallengeData2016")
    status = cli_main(["seg-train", *TRAIN_ARGS, "--data", str(data), "--output", str(tmp_path / "run"),
                       "--iterations", "2", "--batch-size", "8", "--workers", "1"])
    assert status == 2
    error = capsys.readouterr().err.strip()
    assert re.search(message, error) and len(error.splitlines()) == 1


def test_missing_split_and_options(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli_main(["seg-train", *TRAIN_ARGS, "--data", str(tmp_path / "empty"), "--output", str(tmp_path / "r")]) == 2
    assert "no training split under" in capsys.readouterr().err
    assert cli_main(["seg-train", *TRAIN_ARGS, "--data", str(tmp_path), "--batch-size", "1"]) == 2
    assert "at least 2 images each (batch norm in UperNet)" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------- training


def test_presets_and_overrides():
    recipe = resolve_seg_config(dict(preset="ade20k_upernet"))
    assert (recipe.crop_size, recipe.lr, recipe.weight_decay, recipe.poly_power) == ((512, 512), 6e-5, 0.01, 1.0)
    assert (recipe.warmup_iters, recipe.iterations, recipe.batch_size, recipe.dataset) == (1500, 160_000, 16, "ade20k")
    assert (recipe.scale, recipe.ratio_range, recipe.eval_stride) == ((2048, 512), (0.5, 2.0), (341, 341))
    changed = resolve_seg_config(dict(preset="ade20k_upernet", lr=1e-4, crop_size=[640], eval_stride=[400, 300]))
    assert (changed.lr, changed.crop_size, changed.eval_stride) == (1e-4, (640, 640), (400, 300))
    with pytest.raises(ValueError, match="unknown preset"):
        resolve_seg_config(dict(preset="cityscapes"))


def test_training_learns_and_writes_the_run_directory(trained, shapes):
    summary = json.loads((trained / "summary.json").read_text())
    rows = (trained / "metrics.csv").read_text().strip().splitlines()
    assert rows[0] == "iteration,train_loss,lr,miou,macc,aacc,images_per_s" and len(rows) == 3
    first, last = (dict(zip(rows[0].split(","), map(float, row.split(",")))) for row in rows[1:])
    assert last["train_loss"] < first["train_loss"] and last["lr"] == 0.0
    # the best constant prediction (every pixel one class) scores freq(c) / K; learning beats it clearly
    labels = np.concatenate([label.ravel() for label in _validation_labels(shapes)])
    labels = labels[labels > 0] - 1
    chance = 100 * np.bincount(labels, minlength=NUM_CLASSES).max() / labels.size / NUM_CLASSES
    assert summary["best_miou"] > 1.5 * chance
    assert summary["best_miou"] == pytest.approx(max(first["miou"], last["miou"]))
    assert set(summary["best_class_iou"]) == {"0", "1", "2", "3"} and summary["iterations"] == 60
    assert Image.open(trained / "curves.png").size[0] > 0
    state = load_checkpoint(trained / "best.pth")
    assert state["model_args"]["num_classes"] == NUM_CLASSES and state["spec"]["reduce_zero_label"]
    assert {"optimizer", "scheduler", "scaler", "step", "metrics"} <= set(state)


class _Crash(Exception):
    pass


def test_resume_continues_exactly(shapes, tmp_path, monkeypatch):
    args = [*TRAIN_ARGS, "--data", str(shapes), "--iterations", "8", "--eval-interval", "8",
            "--checkpoint-interval", "3", "--warmup-iters", "2"]
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    assert cli_main(["seg-train", *args, "--output", str(straight)]) == 0

    steps = []
    real_step = trainer.optimizer_step

    def crash_at_seven(*step_args, **step_kwargs):
        if len(steps) == 7:
            raise _Crash
        steps.append(1)
        real_step(*step_args, **step_kwargs)

    monkeypatch.setattr(trainer, "optimizer_step", crash_at_seven)
    with pytest.raises(_Crash):
        cli_main(["seg-train", *args, "--output", str(crashed)])
    monkeypatch.undo()
    assert load_checkpoint(crashed / "last.pth")["step"] == 6
    assert cli_main(["seg-train", *args, "--output", str(crashed), "--resume", str(crashed)]) == 0
    expected, resumed = load_checkpoint(straight / "last.pth"), load_checkpoint(crashed / "last.pth")
    assert expected["model"].keys() == resumed["model"].keys()
    for key, value in expected["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    timed = "images_per_s"
    assert [{k: v for k, v in row.items() if k != timed} for row in resumed["metrics"]] == \
        [{k: v for k, v in row.items() if k != timed} for row in expected["metrics"]]


# ------------------------------------------------------------------------------- evaluation, prediction


def test_eval_command_whole_slide_and_augmented(trained, shapes, tmp_path, capsys):
    checkpoint = str(trained / "best.pth")
    base = ["seg-eval", "--checkpoint", checkpoint, "--data", str(shapes), "--workers", "0"]
    assert cli_main([*base, "--json", str(tmp_path / "scores.json")]) == 0
    out = capsys.readouterr().out
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert f"mIoU {scores['miou']:.2f}" in out and len(scores["iou"]) == NUM_CLASSES
    assert scores["miou"] == pytest.approx(json.loads((trained / "summary.json").read_text())["best_miou"])
    assert scores["pixels"] == sum(int((label > 0).sum()) for label in _validation_labels(shapes))
    for extra in (["--mode", "slide", "--crop-size", "48", "--stride", "32"], ["--scales", "0.75", "1.25", "--flip"]):
        assert cli_main([*base, *extra]) == 0
        assert re.search(r"mIoU \d+\.\d+  mAcc", capsys.readouterr().out)


def test_predict_writes_label_maps_and_overlays(trained, shapes, tmp_path, capsys):
    images = sorted((shapes / "ADEChallengeData2016" / "images" / "validation").glob("*.jpg"))[:2]
    assert cli_main(["seg-predict", *map(str, images), "--checkpoint", str(trained / "best.pth"),
                     "--output", str(tmp_path / "out")]) == 0
    for image in images:
        labels = Image.open(tmp_path / "out" / f"{image.stem}_labels.png")
        overlay = Image.open(tmp_path / "out" / f"{image.stem}_overlay.png")
        size = Image.open(image).size
        assert labels.mode == "P" and labels.size == size and overlay.size == size and overlay.mode == "RGB"
        values = set(np.unique(np.asarray(labels)).tolist())
        assert values <= {1, 2, 3, 4}  # written in the data set's convention (ADE20K: class + 1)
        colours = np.asarray(labels.convert("RGB")).reshape(-1, 3)
        assert len({tuple(c) for c in colours}) == len(values)
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    assert cli_main(["seg-predict", str(tmp_path / "nope.jpg"), "--checkpoint", str(trained / "best.pth")]) == 2
    assert "image not found" in capsys.readouterr().err


def test_classification_checkpoint_is_not_a_segmenter(tmp_path, capsys, shapes):
    torch.save(dict(model={}), tmp_path / "cls.pth")
    assert cli_main(["seg-eval", "--checkpoint", str(tmp_path / "cls.pth"), "--data", str(shapes)]) == 2
    assert "is not a segmentation checkpoint" in capsys.readouterr().err


def test_help_lists_the_recipe_options(capsys):
    with pytest.raises(SystemExit):
        cli_main(["seg-train", "--help"])
    out = capsys.readouterr().out
    for option in ("--backbone", "--backbone-weights", "--preset", "--crop-size", "--iterations", "--eval-mode",
                   "--resume", "--num-classes", "--ignore-index", "--amp"):
        assert option in out


@pytest.mark.slow
def test_two_process_evaluation_equals_one(trained, shapes, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29583",
               "-m", "boat_vit", "seg-eval", "--checkpoint", str(trained / "best.pth"), "--data", str(shapes),
               "--workers", "0", "--device", "cpu", "--json", str(tmp_path / "two.json")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["miou"] == pytest.approx(json.loads((trained / "summary.json").read_text())["best_miou"])
