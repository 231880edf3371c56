"""Detection and instance segmentation: Mask R-CNN / Faster R-CNN on timm backbones, COCO data and its checks,
COCOeval scores against hand-computed AP, prediction pictures and results, the digit-det task."""
import json
import math
import os
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
from pycocotools import mask as mask_utils

from boat_vit.cli import main as cli_main
from boat_vit.det import CocoDetection, DetectionTask, create_detector, evaluate_detection, predict_images
from boat_vit.det.recipes import resolve_det_config
from boat_vit.engine import RunCheckpoint
from boat_vit.det.model import load_backbone_weights
from boat_vit.errors import DataError
from boat_vit.images import distinct_stems
from boat_vit.det.data import (
    AnnotationError, CategoryMap, CocoSplit, TrainTransform, check_images, decode_mask, mask_problem,
    read_coco_json, resolve_coco_split, scaled_size,
)
from boat_vit.det.evaluate import coco_scores, to_coco_results
from boat_vit.det.predict import PICTURE_SUFFIX, RESULTS_FILE, draw_detections
from boat_vit.det.tasks import DigitDetConfig, _source_pools, parse_digit_det, prepare_digit_det, write_digit_det
from tiny_data import CSWIN, SWIN, TINY_CSWIN, TINY_SWIN

TINY_HEADS = dict(fpn_channels=16, box_head_channels=32, mask_head_channels=8, roi_samples_per_image=32)
SMALL_DIGITS = DigitDetConfig(canvas=48, max_digits=3, min_size=10, max_size=20, train_size=12, val_size=6)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these small models run fastest so on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _square_target(height: int, width: int, box: tuple[int, int, int, int], label: int = 1) -> dict:
    masks = torch.zeros(1, height, width, dtype=torch.uint8)
    masks[0, box[1]:box[3], box[0]:box[2]] = 1
    return dict(boxes=torch.tensor([box], dtype=torch.float32), labels=torch.tensor([label]), masks=masks)


# ---------------------------------------------------------------------------------------------- model

BACKBONES = [
    pytest.param(SWIN, TINY_SWIN, id="boat_swin"),
    pytest.param(SWIN, dict(TINY_SWIN, fsla_stages=False), id="boat_swin_fsla_off"),
    pytest.param(CSWIN, TINY_CSWIN, id="boat_cswin"),
    pytest.param("swin_tiny_patch4_window7_224", TINY_SWIN, id="timm_swin"),
]


@pytest.mark.parametrize("backbone, kwargs", BACKBONES)
@pytest.mark.parametrize("kind", ["mask_rcnn", "faster_rcnn"])
def test_detector_losses_in_training_and_detections_at_any_size(backbone, kwargs, kind):
    torch.manual_seed(0)
    model = create_detector(backbone, 3, kind, min_size=64, max_size=96, **TINY_HEADS, **kwargs)
    sizes = [(64, 80), (50, 37)]  # (height, width): one batch, two sizes, one not a multiple of 32
    images = [torch.rand(3, *size) for size in sizes]
    targets = [_square_target(64, 80, (8, 10, 40, 50), 2), _square_target(50, 37, (3, 4, 30, 33), 3)]
    if kind == "faster_rcnn":
        targets = [{k: v for k, v in t.items() if k != "masks"} for t in targets]
    losses = model.train()(images, targets)
    expected = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert set(losses) == expected | ({"loss_mask"} if kind == "mask_rcnn" else set())
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    backbone_grads = [p.grad for p in model.backbone.body.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in backbone_grads)

    with torch.no_grad():
        outputs = model.eval()(images)
    assert len(outputs) == 2
    for output, (height, width) in zip(outputs, sizes):
        count = len(output["boxes"])
        assert output["boxes"].shape == (count, 4) and output["scores"].shape == (count,)
        assert count <= 100 and bool((output["scores"] >= 0.05).all())
        assert bool((output["labels"] >= 1).all() and (output["labels"] <= 3).all())
        assert bool((output["boxes"][:, [0, 2]] <= width).all() and (output["boxes"][:, [1, 3]] <= height).all())
        if kind == "mask_rcnn":
            assert output["masks"].shape == (count, 1, height, width)
        else:
            assert "masks" not in output


def test_one_image_alone_equals_the_same_image_in_a_batch_of_its_size():
    torch.manual_seed(0)
    model = create_detector(SWIN, 2, min_size=64, max_size=64, **TINY_HEADS, **TINY_SWIN).eval()
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    with torch.no_grad():
        alone, together = model(images[:1])[0], model(images)[0]
    for key in ("boxes", "scores", "labels", "masks"):
        torch.testing.assert_close(alone[key], together[key])


def test_the_pyramid_has_strides_4_to_64_and_the_backbones_own_normalisation():
    model = create_detector(SWIN, 1, **TINY_HEADS, **TINY_SWIN)
    features = model.backbone(torch.rand(1, 3, 96, 128))
    assert list(features) == ["0", "1", "2", "3", "pool"]
    assert [tuple(f.shape[-2:]) for f in features.values()] == [(24, 32), (12, 16), (6, 8), (3, 4), (2, 2)]
    assert all(f.shape[1] == TINY_HEADS["fpn_channels"] for f in features.values())
    assert model.transform.image_mean == list(timm.models.get_pretrained_cfg(SWIN).mean)
    inception = create_detector("inception_v3", 1, **TINY_HEADS)  # stride-2 maps too: strides 4-32 are picked
    assert inception.transform.image_mean == [0.5, 0.5, 0.5] and inception.transform.image_std == [0.5, 0.5, 0.5]
    assert inception.backbone.body.feature_info.reduction() == [4, 8, 16, 32]


@pytest.mark.parametrize("call, message", [
    (lambda: create_detector(SWIN, 2, kind="retina"), "unknown detector kind='retina'"),
    (lambda: create_detector("vit_tiny_patch16_224", 2), "backbone='vit_tiny_patch16_224' has feature maps at strides [16"),
    (lambda: create_detector("boat_swin_tiny", 2), "unknown model 'boat_swin_tiny'"),
    (lambda: create_detector(SWIN, 2, window=3), "cannot build backbone='boat_swin_tiny_patch4_window7_224'"),
    (lambda: create_detector(SWIN, 0), "num_classes must be at least 1"),
])
def test_bad_detector_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=None) as error:
        call()
    assert message in str(error.value)


def test_backbone_weights_load_through_the_one_loader(tmp_path):
    from safetensors.torch import save_file

    classifier = timm.create_model(SWIN, num_classes=10, **TINY_SWIN)
    weights = classifier.state_dict()
    torch.save(dict(model=weights, epoch=3), tmp_path / "best.pth")  # a boat-vit classification checkpoint
    save_file({k: v.contiguous() for k, v in weights.items()}, tmp_path / "converted.safetensors")
    for name, entry in (("best.pth", "model"), ("converted.safetensors", "")):
        detector = create_detector(SWIN, 3, **TINY_HEADS, **TINY_SWIN)
        report = load_backbone_weights(detector, tmp_path / name)
        assert report.entry == entry and not report.initial
        assert sorted(report.unused) == ["head.fc.bias", "head.fc.weight", "norm.bias", "norm.weight"]
        assert len(report.loaded) == len(detector.backbone.body.state_dict())
        torch.testing.assert_close(detector.backbone.body.state_dict()["layers_2.blocks.1.fsla.qkv.weight"],
                                   weights["layers.2.blocks.1.fsla.qkv.weight"], rtol=0, atol=0)

    plain_swin = {k: v for k, v in weights.items() if "fsla" not in k}  # a Swin file: FSLA stays initial
    torch.save(plain_swin, tmp_path / "swin.pth")
    detector = create_detector(SWIN, 3, **TINY_HEADS, **TINY_SWIN)
    fresh = detector.backbone.body.state_dict()["layers_0.blocks.1.fsla.proj.weight"].clone()
    report = load_backbone_weights(detector, tmp_path / "swin.pth")
    assert len(report.initial) == 24 and all("fsla" in key for key in report.initial)
    torch.testing.assert_close(detector.backbone.body.state_dict()["layers_0.blocks.1.fsla.proj.weight"], fresh)

    wider = create_detector(SWIN, 3, **TINY_HEADS, **dict(TINY_SWIN, embed_dim=32))
    with pytest.raises(ValueError, match=r"patch_embed.proj.weight: \(16, 3, 4, 4\) in the file, \(32, 3, 4, 4\)"):
        load_backbone_weights(wider, tmp_path / "best.pth")


@pytest.mark.parametrize("stem, backbone, kwargs", [
    ("boat_swin_mini", SWIN, dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))),
    ("boat_cswin_mini", CSWIN, dict(embed_dim=32, depths=(1, 2, 2, 1), num_heads=(2, 4, 8, 16))),
])
def test_released_weights_give_the_backbone_timms_features(reference, tmp_path, stem, backbone, kwargs):
    path = tmp_path / "released.pth"
    torch.save(reference(stem)["state_dict"], path)  # released (Microsoft / CSWin) key layout
    detector = create_detector(backbone, 3, **TINY_HEADS, **kwargs).eval()
    report = load_backbone_weights(detector, path)
    assert not report.initial and len(report.loaded) == len(detector.backbone.body.state_dict())
    any_size = dict(dynamic_img_size=True) if backbone == SWIN else {}
    classifier = timm.create_model(backbone, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                                   num_classes=10, **any_size, **kwargs).eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        expected = classifier.forward_intermediates(x, intermediates_only=True)
        features = detector.backbone.body(x)
    for ours, theirs in zip(features, expected, strict=True):
        ours = ours.permute(0, 3, 1, 2) if detector.backbone.channels_last_output else ours
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_weight_decay_exemptions_follow_the_backbone():
    detector = create_detector(SWIN, 3, **TINY_HEADS, **TINY_SWIN)
    exempt = detector.backbone.no_weight_decay_names
    assert exempt and all("relative_position_bias_table" in name for name in exempt)
    assert all(name in dict(detector.backbone.body.named_parameters()) for name in exempt)


# ----------------------------------------------------------------------------------------------- data

def _rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return dict(size=list(encoded["size"]), counts=encoded["counts"].decode("ascii"))


def _write_coco(root: Path, annotations: list[dict], images: list[dict], categories=None, split="train2017",
                sizes=None) -> CocoSplit:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(exist_ok=True)
    for image in images:
        width, height = (sizes or {}).get(image["id"], (image["width"], image["height"]))
        if not image.get("missing"):
            Image.new("RGB", (width, height), (30, 60, 90)).save(root / split / image["file_name"])
    document = dict(images=[{k: v for k, v in i.items() if k != "missing"} for i in images], annotations=annotations,
                    categories=categories or [dict(id=3, name="cat"), dict(id=7, name="dog")])
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps(document))
    return CocoSplit(path, root / split)


IMAGES = [dict(id=1, file_name="a.png", width=40, height=30), dict(id=2, file_name="b.png", width=20, height=20),
          dict(id=3, file_name="gone.png", width=20, height=20, missing=True),
          dict(id=4, file_name="empty.png", width=16, height=16)]
SQUARE = [[5, 5, 15, 5, 15, 15, 5, 15]]  # a polygon: the square 5..15
GOOD = dict(id=10, image_id=1, category_id=3, bbox=[5, 5, 10, 10], segmentation=SQUARE, area=100, iscrowd=0)
# kind -> (annotation, what the report and the error say)
BAD = {
    "outside": (dict(GOOD, id=11, bbox=[45, 5, 10, 10]), "has box [45, 5, 10, 10] outside the 40x30 image"),
    "zero_area": (dict(GOOD, id=12, bbox=[5, 5, 0, 10]), "has a zero-area box [5, 5, 0, 10]"),
    "bad_mask": (dict(GOOD, id=13, segmentation=[[5, 5, 15, 5, 15]]), "polygon of 5 coordinates"),
    "unknown_category": (dict(GOOD, id=14, category_id=5), "names category id 5, which the file does not define"),
    "unknown_image": (dict(GOOD, id=15, image_id=99), "names image id 99, which the file does not define"),
    "malformed": (dict(GOOD, id=16, bbox=[5, 5, "ten", 10]), "has no usable image_id, category_id or bbox"),
}
CROWD = dict(GOOD, id=20, image_id=2, iscrowd=1, bbox=[0, 0, 8, 8], segmentation=_rle(np.pad(np.ones((8, 8)), ((0, 12), (0, 12)))))
CLIPPED = dict(GOOD, id=21, image_id=2, category_id=7, bbox=[12, 10, 12, 4], segmentation=_rle(np.pad(np.ones((4, 8)), ((10, 6), (12, 0)))))
MISSING_IMAGE_ANNOTATION = dict(GOOD, id=22, image_id=3)


@pytest.fixture
def messy(tmp_path) -> CocoSplit:
    """Two good annotations, a crowd one, a clipped one, one of each bad kind, an image whose file is missing,
    and an image without annotations."""
    bad = [annotation for annotation, _ in BAD.values()]
    rle_of_other_size = dict(GOOD, id=17, segmentation=_rle(np.ones((10, 10))))
    return _write_coco(tmp_path, [GOOD, dict(GOOD, id=18, category_id=7), *bad, rle_of_other_size, CROWD, CLIPPED,
                                  MISSING_IMAGE_ANNOTATION], IMAGES)


def test_every_bad_annotation_kind_is_counted_with_its_id(messy):
    dataset = CocoDetection(messy, keep_empty=False)
    report = dataset.report
    assert dict(report.bad) == dict(outside=1, zero_area=1, bad_mask=2, unknown_category=1, unknown_image=1,
                                    malformed=1, missing_image=1)
    assert (report.images, report.annotations, report.crowd, report.clipped) == (4, 12, 1, 1)
    assert (report.used_images, report.targets, report.empty_images, report.empty_kept) == (2, 3, 1, False)
    summary = report.summary()
    for kind, (annotation, what) in BAD.items():
        assert f"annotation {annotation['id']}" in summary and what in summary, kind
    assert "annotation 17 (image 1, a.png) mask is an RLE of size [10, 10], the image is [30, 40]" in summary
    assert "image 3 (gone.png) has no file" in summary
    assert summary.splitlines()[0].endswith("2 of 4 images (1 without annotations skipped), 3 of 12 annotations as "
                                            "targets; 1 crowd ignored, 1 boxes clipped to their image, 8 bad "
                                            "annotations skipped")
    # targets: labels in category order (3 -> 1, 7 -> 2), clipped box, no crowd; masks decoded
    image, target = dataset.load(0)
    assert target["labels"].tolist() == [1, 2] and target["image_id"] == 1
    assert target["boxes"].tolist() == [[5, 5, 15, 15], [5, 5, 15, 15]]
    assert target["masks"].shape == (2, 30, 40) and target["masks"].sum().item() == 200
    _, target = dataset.load(1)
    assert target["boxes"].tolist() == [[12, 10, 20, 14]] and target["labels"].tolist() == [2]
    assert target["masks"].sum().item() == 32
    # the evaluation ground truth keeps crowd and clipped annotations as written, drops the bad ones
    assert sorted(a["id"] for a in dataset.ground_truth["annotations"]) == [10, 18, 20, 21]
    assert sorted(dataset.coco.getImgIds()) == [1, 2, 4]


@pytest.mark.parametrize("kind", sorted(BAD) + ["missing_image"])
def test_on_bad_error_stops_at_the_first_naming_file_and_annotation(tmp_path, kind):
    if kind == "missing_image":
        split, where, what = _write_coco(tmp_path, [GOOD], IMAGES[:3]), "image 3 (gone.png)", "has no file"
    else:
        annotation, what = BAD[kind]
        split, where = _write_coco(tmp_path, [GOOD, annotation], IMAGES[:2]), f"annotation {annotation['id']}"
    with pytest.raises(AnnotationError) as error:
        CocoDetection(split, on_bad="error")
    message = str(error.value)
    assert message.startswith(f"{split.annotations}: {where}") and what in message and "\n" not in message


def test_empty_images_are_kept_by_default_and_the_masks_option(messy):
    dataset = CocoDetection(messy)
    assert len(dataset) == 3 and dataset.report.empty_kept
    _, target = dataset.load(2)
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 16, 16)
    boxes_only = CocoDetection(messy, masks=False)  # a Faster R-CNN ignores masks: bad ones are not its concern
    assert boxes_only.report.bad["bad_mask"] == 0 and "masks" not in boxes_only.load(0)[1]


@pytest.mark.parametrize("content, message", [
    ("not json", "is not a JSON file"),
    (json.dumps([1, 2]), "is not a COCO annotation file"),
    (json.dumps(dict(images=[], annotations=[])), "has no 'categories' list"),
    (json.dumps(dict(images=IMAGES[:1] * 2, annotations=[], categories=[])), "image id 1 is defined twice"),
    (json.dumps(dict(images=IMAGES[:1], annotations=[GOOD, GOOD], categories=[dict(id=3, name="c")])),
     "annotation id 10 is defined twice"),
    (json.dumps(dict(images=[dict(id=1, file_name="a.png")], annotations=[], categories=[])),
     "entry 0 of 'images' lacks one of ['id', 'file_name', 'width', 'height']"),
    (json.dumps(dict(images=[dict(IMAGES[0], width=0)], annotations=[], categories=[])), "image 1 has width 0"),
    (json.dumps(dict(images=IMAGES[:1], annotations=[], categories=[dict(id="cat", name="c"), dict(id=3, name="d")])),
     "entry 0 of 'categories' has id 'cat', not an integer"),
    (json.dumps(dict(images=[dict(IMAGES[0], id=[1])], annotations=[], categories=[])),
     "entry 0 of 'images' has id [1], not an integer"),
    (json.dumps(dict(images=IMAGES[:1], annotations=[GOOD, dict(GOOD, id=[11])], categories=[])),
     "annotation 1 (0-based) has id [11], not an integer"),
])
def test_files_that_are_not_coco_are_named(tmp_path, content, message):
    path = tmp_path / "instances.json"
    path.write_text(content)
    with pytest.raises(ValueError) as error:
        read_coco_json(path)
    assert str(error.value).startswith(str(path)) and message in str(error.value)


def test_an_image_of_another_size_than_its_record_is_named(tmp_path):
    split = _write_coco(tmp_path, [GOOD], IMAGES[:1], sizes={1: (41, 30)})
    dataset = CocoDetection(split)
    item = dataset[0]
    assert isinstance(item, DataError)
    assert str(item) == f"image {split.images / 'a.png'} is 41x30 but {split.annotations} says 40x30 (image 1)"
    with pytest.raises(ValueError, match="is 41x30 but"):
        check_images(dataset)


def test_categories_must_match_the_models(messy):
    with pytest.raises(ValueError, match=r"has categories \['cat', 'dog'\], the model was trained on \['cat'\]"):
        CocoDetection(messy, categories=CategoryMap((3,), ("cat",)))


def test_split_layouts(tmp_path):
    _write_coco(tmp_path / "coco", [GOOD], IMAGES[:1], split="val2017")
    assert resolve_coco_split(tmp_path / "coco", "val") == CocoSplit(
        tmp_path / "coco" / "annotations" / "instances_val2017.json", tmp_path / "coco" / "val2017")
    other = tmp_path / "other"
    _write_coco(other, [GOOD], IMAGES[:1], split="train")
    (other / "train").rename(other / "images")
    (other / "images").mkdir(parents=True, exist_ok=True)
    (other / "images" / "train").mkdir()
    assert resolve_coco_split(other, "train").images == other / "images" / "train"
    with pytest.raises(FileNotFoundError, match="no val split under .*instances_val2017.json, annotations/instances_val.json"):
        resolve_coco_split(other, "val")


def test_masks_parse_only_when_they_describe_the_image():
    full = _rle(np.ones((4, 6)))
    assert mask_problem(full, 4, 6) is None and mask_problem(SQUARE, 30, 40) is None
    assert mask_problem(dict(full, counts=full["counts"] + "1"), 4, 6) == "is an RLE whose counts do not cover the image"
    assert mask_problem(dict(size=[4, 6], counts=[3, 4, 2]), 4, 6) == "is an RLE whose counts do not cover the image"
    assert mask_problem(dict(size=[4, 6], counts=[3, 4, 17]), 4, 6) is None
    assert mask_problem([[1, 2, 3, "x", 5, 6]], 4, 6).startswith("has a polygon that is not a list of numbers")
    assert mask_problem([], 4, 6) == "has no polygon" and mask_problem(None, 4, 6).startswith("is neither")
    ring = np.ones((9, 9), dtype=np.uint8)
    ring[3:6, 3:6] = 0  # a hole: RLE keeps it
    np.testing.assert_array_equal(decode_mask(_rle(ring), 9, 9), ring)
    np.testing.assert_array_equal(decode_mask(dict(size=[4, 6], counts=[3, 4, 17]), 4, 6).T.flatten()[:8],
                                  [0, 0, 0, 1, 1, 1, 1, 0])
    assert decode_mask(SQUARE, 30, 40).sum() == 100


def test_training_transform_moves_boxes_and_masks_with_the_image():
    import random

    image = Image.new("RGB", (40, 20))
    target = _square_target(20, 40, (4, 2, 14, 12))
    image.paste((255, 255, 255), (4, 2, 14, 12))
    random.seed(0)
    transform = TrainTransform([40], max_size=60, hflip=1.0)  # shorter side 40 -> 80x40 capped at 60 -> 60x30
    pixels, moved = transform(image, target)
    assert pixels.shape == (3, 30, 60) and scaled_size(40, 20, 40, 60) == (60, 30)
    assert moved["boxes"].tolist() == [[60 - 21, 3, 60 - 6, 18]]
    ys, xs = torch.nonzero(moved["masks"][0], as_tuple=True)
    assert (xs.min().item(), xs.max().item() + 1, ys.min().item(), ys.max().item() + 1) == (39, 54, 3, 18)
    white = pixels.mean(0) > 0.5
    assert white[moved["masks"][0].bool()].float().mean() > 0.9
    assert target["boxes"].tolist() == [[4, 2, 14, 12]]  # the input target is left alone


# ------------------------------------------------------------------------------------------ evaluation

def _ground_truth(tmp_path) -> CocoDetection:
    """Two 100x100 objects in a 300x200 image (category 'cat'), plus a crowd region."""
    def box_annotation(annotation_id, x, y, w, h, crowd=0):
        mask = np.zeros((200, 300), dtype=np.uint8)
        mask[y:y + h, x:x + w] = 1
        return dict(id=annotation_id, image_id=1, category_id=3, bbox=[x, y, w, h], area=w * h, iscrowd=crowd,
                    segmentation=_rle(mask) if crowd else [[x, y, x + w, y, x + w, y + h, x, y + h]])

    annotations = [box_annotation(1, 0, 0, 100, 100), box_annotation(2, 150, 50, 100, 100),
                   box_annotation(3, 260, 160, 30, 30, crowd=1)]
    split = _write_coco(tmp_path, annotations, [dict(id=1, file_name="a.png", width=300, height=200)],
                        categories=[dict(id=3, name="cat")])
    return CocoDetection(split)


def _detection(x1, y1, x2, y2, score, height=200, width=300) -> tuple[list, float, torch.Tensor]:
    mask = torch.zeros(1, height, width)
    mask[0, y1:y2, x1:x2] = 0.9
    return [x1, y1, x2, y2], score, mask


def _output(*detections) -> dict:
    boxes, scores, masks = zip(*detections)
    return dict(boxes=torch.tensor(boxes, dtype=torch.float32), scores=torch.tensor(scores),
                labels=torch.ones(len(boxes), dtype=torch.int64), masks=torch.stack(masks))


def test_coco_ap_of_a_hand_made_case(tmp_path):
    """One exact detection, one of IoU 0.72 (a hit for IoU thresholds 0.50-0.70, a miss for 0.75-0.95), one on
    the crowd region (ignored, not a false positive). At thresholds <= 0.70 precision is 1 at every recall
    (AP 1); above, recall stops at 1/2 with precision 1: 51 of COCO's 101 recall points (AP 51/101)."""
    dataset = _ground_truth(tmp_path)
    output = _output(_detection(0, 0, 100, 100, 0.9), _detection(150, 50, 222, 150, 0.8),
                     _detection(262, 162, 288, 188, 0.95))
    results, dropped = to_coco_results(output, 1, dataset.categories)
    assert dropped == 0 and [r["category_id"] for r in results] == [3, 3, 3]
    assert results[1]["bbox"] == [150.0, 50.0, 72.0, 100.0]
    expected_ap = 100 * (5 * 1.0 + 5 * 51 / 101) / 10
    for iou_type in ("bbox", "segm"):
        scores = coco_scores(dataset.coco, results, iou_type, [1])
        assert scores["AP"] == pytest.approx(expected_ap, abs=1e-9)
        assert scores["AP50"] == pytest.approx(100.0) and scores["AP75"] == pytest.approx(100 * 51 / 101)
        assert scores["APl"] == pytest.approx(expected_ap) and math.isnan(scores["APs"]) and math.isnan(scores["APm"])
    nothing = coco_scores(dataset.coco, [], "bbox", [1])
    assert nothing["AP"] == 0.0 and math.isnan(nothing["APs"])


def test_non_finite_detections_are_left_out_and_counted(tmp_path):
    dataset = _ground_truth(tmp_path)
    output = _output(_detection(0, 0, 100, 100, 0.9), _detection(150, 50, 222, 150, 0.8))
    output["scores"][1] = float("nan")
    results, dropped = to_coco_results(output, 1, dataset.categories)
    assert dropped == 1 and len(results) == 1 and results[0]["score"] == pytest.approx(0.9)


def test_evaluation_scores_a_model_on_every_image_once(tmp_path):
    dataset = _ground_truth(tmp_path)

    class Oracle(torch.nn.Module):
        """Returns the hand-made detections of the image whatever its pixels."""

        def forward(self, images):
            return [_output(_detection(0, 0, 100, 100, 0.9), _detection(150, 50, 222, 150, 0.8))]

    scores, results = evaluate_detection(Oracle(), dataset)
    assert scores.images == 1 and scores.detections == 2 and len(results) == 2
    assert scores.box["AP"] == pytest.approx(100 * (5 + 5 * 51 / 101) / 10)
    assert scores.mask["AP50"] == pytest.approx(100.0)


# -------------------------------------------------------------------------------------------- digit-det

def test_digit_det_is_a_coco_folder_with_masks_inside_boxes(tmp_path):
    root = write_digit_det(tmp_path / "digits", SMALL_DIGITS)
    document = json.loads((root / "annotations" / "instances_train.json").read_text())
    assert [c["name"] for c in document["categories"]] == [str(d) for d in range(10)]
    assert len(document["images"]) == SMALL_DIGITS.train_size
    per_image = {}
    for annotation in document["annotations"]:
        mask = decode_mask(annotation["segmentation"], 48, 48)
        ys, xs = np.nonzero(mask)
        x, y, w, h = annotation["bbox"]
        assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min())
        assert annotation["area"] == mask.sum() and annotation["iscrowd"] == 0
        per_image.setdefault(annotation["image_id"], []).append(mask)
    for masks in per_image.values():  # digits never overlap
        assert np.sum(masks, axis=0).max() == 1
        assert 1 <= len(masks) <= SMALL_DIGITS.max_digits
    for split in ("train", "val"):
        dataset = CocoDetection(resolve_coco_split(root, split))
        assert dataset.report.bad_total == 0 and dataset.report.clipped == 0
        image, target = dataset.load(0)
        ink = np.asarray(image.convert("L"), dtype=np.float64)
        inside = target["masks"].sum(0).numpy() > 0
        assert ink[inside].mean() > ink[~inside].mean() + 50  # the masks are where the ink is


def test_digit_det_is_reproducible_held_out_and_cached(tmp_path, monkeypatch):
    first = write_digit_det(tmp_path / "a", SMALL_DIGITS)
    second = write_digit_det(tmp_path / "b", SMALL_DIGITS)
    for name in ("annotations/instances_train.json", "annotations/instances_val.json", "val/000003.png"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    from sklearn.datasets import load_digits

    pools = _source_pools(load_digits().target, SMALL_DIGITS)
    for train, val in zip(pools["train"], pools["val"]):
        assert not set(train) & set(val) and len(val) >= 1
    assert write_digit_det(first, SMALL_DIGITS) == first  # the same configuration: kept as it is
    with pytest.raises(FileExistsError, match="does not hold digit-det"):
        write_digit_det(first, DigitDetConfig(canvas=64))
    monkeypatch.setenv("BOAT_VIT_DATA", str(tmp_path / "cache"))
    cached = prepare_digit_det("digit-det:canvas=48,max_digits=3,min_size=10,max_size=20,train_size=12,val_size=6")
    assert cached.parent == tmp_path / "cache" and cached.name == SMALL_DIGITS.key()
    assert (cached / "annotations/instances_train.json").read_bytes() == (first / "annotations/instances_train.json").read_bytes()
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no staging folder left


@pytest.mark.parametrize("spec, message", [
    ("digit-det:canvas", "bad task option 'canvas'"),
    ("digit-det:colour=3", "bad task option 'colour=3'"),
    ("digit-det:canvas=big", "task option canvas needs a int, got 'big'"),
    ("digit-det:max_size=200", "do not fit a 128-pixel canvas"),
    ("digit-det:min_digits=3,max_digits=2", "needs 1 <= min_digits <= max_digits"),
    ("digit-det:seed=-1", "needs seed >= 0, got -1"),
])
def test_digit_det_options_are_checked(spec, message):
    with pytest.raises(ValueError) as error:
        parse_digit_det(spec)
    assert message in str(error.value)


# ------------------------------------------------------------------------------------------- prediction

class Fixed(torch.nn.Module):
    """A 'detector' with one parameter (for its device) that finds a dog in the top-left corner."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images):
        height, width = images[0].shape[-2:]
        masks = torch.zeros(2, 1, height, width)
        masks[0, 0, 2:10, 2:12] = 1.0
        return [dict(boxes=torch.tensor([[2.0, 2, 12, 10], [5, 5, 9, 9]]), scores=torch.tensor([0.9, 0.2]),
                     labels=torch.tensor([2, 1]), masks=masks)]


PET_CATEGORIES = CategoryMap((3, 7), ("cat", "dog"))


def test_predict_writes_pictures_and_coco_results_and_keeps_existing_outputs(tmp_path):
    torch.manual_seed(0)
    categories = PET_CATEGORIES
    images = []
    for folder in ("x", "y"):  # two images of one name: their outputs must not collide
        (tmp_path / folder).mkdir()
        Image.new("RGB", (24, 16), (0, 0, 0)).save(tmp_path / folder / "photo.png")
        images.append(str(tmp_path / folder / "photo.png"))
    written = predict_images(Fixed(), categories, images, tmp_path / "out", score_threshold=0.5, upscale=2)
    assert [p.name for p in written] == [f"x_photo{PICTURE_SUFFIX}", f"y_photo{PICTURE_SUFFIX}", RESULTS_FILE]
    results = json.loads((tmp_path / "out" / RESULTS_FILE).read_text())
    assert [(r["image_id"], r["category_id"], r["bbox"]) for r in results] == [
        (1, 7, [2.0, 2.0, 10.0, 8.0]), (1, 3, [5.0, 5.0, 4.0, 4.0]), (2, 7, [2.0, 2.0, 10.0, 8.0]),
        (2, 3, [5.0, 5.0, 4.0, 4.0])]
    assert results[0]["file_name"] == images[0]
    assert mask_utils.area(dict(results[0]["segmentation"], counts=results[0]["segmentation"]["counts"].encode())) == 80
    picture = np.asarray(Image.open(written[0]))
    assert picture.shape == (32, 48, 3)
    assert picture[10:18, 8:22].any(-1).all()  # the drawn mask (inside the box) is coloured
    assert not picture[24:, 30:].any()  # outside every drawn detection: the black image
    with pytest.raises(FileExistsError, match="exists .and 2 more outputs.; pass overwrite=True to replace"):
        predict_images(Fixed(), categories, images, tmp_path / "out")
    predict_images(Fixed(), categories, images, tmp_path / "out", overwrite=True)

    # planted links (one dangling) at a picture and at the results: refused, then replaced, never followed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_bytes(b"the user's own file")
    links = [tmp_path / "linked" / f"x_photo{PICTURE_SUFFIX}", tmp_path / "linked" / RESULTS_FILE]
    links[0].parent.mkdir()
    links[0].symlink_to(elsewhere / "precious")
    links[1].symlink_to(elsewhere / "nowhere.json")
    with pytest.raises(FileExistsError, match=f"x_photo{PICTURE_SUFFIX} exists .and 1 more outputs."):
        predict_images(Fixed(), categories, images, tmp_path / "linked")
    predict_images(Fixed(), categories, images, tmp_path / "linked", overwrite=True)
    assert os.listdir(elsewhere) == ["precious"] and (elsewhere / "precious").read_bytes() == b"the user's own file"
    assert not any(link.is_symlink() for link in links) and json.loads(links[1].read_text()) == results


def test_prediction_names_never_collide(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    for name in ("a/x.png", "a/x.jpg", "b/x.png", "a/y.png", "a/x_png.png"):
        Image.new("RGB", (16, 16)).save(tmp_path / name)
    paths = [str(tmp_path / name) for name in ("a/x.png", "a/x.jpg", "a/y.png")]
    assert distinct_stems(paths) == ["x_png", "x_jpg", "y"]
    assert distinct_stems([str(tmp_path / "a/x.png"), str(tmp_path / "b/x.png")]) == ["a_x", "b_x"]
    assert distinct_stems([str(tmp_path / "a/x.png"), str(tmp_path / "a/x.jpg"), str(tmp_path / "a/x_png.png")]) \
        == ["x_png", "x_jpg", "x_png-2"]
    written = predict_images(Fixed(), PET_CATEGORIES, paths[:2], tmp_path / "out")
    assert [path.name for path in written] == [f"x_png{PICTURE_SUFFIX}", f"x_jpg{PICTURE_SUFFIX}", RESULTS_FILE]
    assert all(path.is_file() for path in written)
    with pytest.raises(ValueError, match="the same image is given twice: .*x.png"):
        predict_images(Fixed(), PET_CATEGORIES, [paths[0], str(tmp_path / "b/../a/x.png")], tmp_path / "again")


def test_prediction_checks_images_options_and_outputs_before_any_work(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (16, 16)).save(good)
    (tmp_path / "broken.png").write_text("not an image")
    (tmp_path / "truncated.png").write_bytes(b"\x89PNG")
    out = tmp_path / "out"
    for images, options, error, message in [
        ([good, tmp_path / "missing.png"], {}, ValueError, "image not found: .*missing.png"),
        ([tmp_path, good], {}, ValueError, "is a folder, not an image file"),
        ([good, tmp_path / "broken.png", tmp_path / "truncated.png"], {}, ValueError,
         "cannot read image .*broken.png.* .and 1 more images."),
        ([good], dict(score_threshold=1.5), ValueError, "score_threshold must be between 0 and 1, got 1.5"),
        ([good], dict(upscale=0), ValueError, "upscale must be a whole number of at least 1, got 0"),
    ]:
        with pytest.raises(error, match=message):
            predict_images(Fixed(), PET_CATEGORIES, [str(image) for image in images], out, **options)
        assert not out.exists()
    out.write_text("mine")
    with pytest.raises(OSError, match="output=.*out' is a file, not a folder"):
        predict_images(Fixed(), PET_CATEGORIES, [str(good)], out)
    out.unlink()
    (out / f"good{PICTURE_SUFFIX}").mkdir(parents=True)  # a folder where the picture goes
    with pytest.raises(OSError, match=f"good{PICTURE_SUFFIX} is a folder; give a file name"):
        predict_images(Fixed(), PET_CATEGORIES, [str(good)], out, overwrite=True)
    assert not (out / RESULTS_FILE).exists()


def test_drawing_leaves_the_image_alone_without_detections():
    image = Image.new("RGB", (20, 10), (10, 20, 30))
    empty = dict(boxes=torch.zeros(0, 4), scores=torch.zeros(0), labels=torch.zeros(0, dtype=torch.int64),
                 masks=torch.zeros(0, 1, 10, 20))
    assert np.array_equal(np.asarray(draw_detections(image, empty, CategoryMap((1,), ("a",)))), np.asarray(image))


# ------------------------------------------------------------------------------------- training and commands

TINY_TASK = "digit-det:canvas=48,max_digits=2,min_size=12,max_size=24,train_size=16,val_size=4"
TRAIN_ARGS = [
    "det-train", "--preset", "digit_det", "--data", TINY_TASK, "--backbone-kwargs", json.dumps(TINY_SWIN),
    "--fpn-channels", "16", "--box-head-channels", "32", "--mask-head-channels", "8", "--roi-samples", "32",
    "--train-scales", "48", "--test-scale", "48", "--max-size", "48", "--batch-size", "4", "--epochs", "2",
    "--lr-steps", "1", "--warmup-iters", "2", "--eval-interval", "4", "--checkpoint-interval", "1", "--workers", "0",
    "--no-progress", "--seed", "1",
]


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory):
    """Generated data sets go to a temporary cache (``$BOAT_VIT_DATA``) for these tests and their subprocesses."""
    with pytest.MonkeyPatch.context() as patch:
        cache = tmp_path_factory.mktemp("data-cache")
        patch.setenv("BOAT_VIT_DATA", str(cache))
        yield cache


@pytest.fixture(scope="module")
def trained(data_cache, tmp_path_factory) -> Path:
    """Eight iterations of a tiny Mask R-CNN on a tiny digit-det: evaluations at 4 and 8, a checkpoint at each."""
    run = tmp_path_factory.mktemp("det") / "run"
    assert cli_main([*TRAIN_ARGS, "--output", str(run)]) == 0
    return run


def _weights(run: Path) -> dict:
    return RunCheckpoint.read(run).weights()


def test_det_train_writes_the_run_directory(trained, capsys):
    rows = (trained / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert header[:3] == ["iteration", "train_loss", "lr"] and "box_ap" in header and "mask_apl" in header
    assert [row.split(",")[0] for row in rows[1:]] == ["4", "8"]
    assert all((trained / name).is_file() for name in ("last.pth", "best.pth", "summary.json", "curves.png"))
    run = RunCheckpoint.read(trained, task="detection")
    assert run.state["step"] == 8 and run.model_args["num_classes"] == 10 and run.model_args["min_size"] == 48
    assert run.entry("categories")["names"] == [str(d) for d in range(10)]
    assert run.entry("backbone_part") == dict(task="detection", prefix="backbone.body.",
                                              renames={f"layers_{i}.": f"layers.{i}." for i in range(4)})
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["annotations"]["train"]["images"] == 16 and summary["best"]["box"]["AP"] == summary["best_box_ap"]
    assert math.isfinite(summary["final_box_ap"]) and summary["iterations"] == 8
    lrs = [float(row.split(",")[2]) for row in rows[1:]]  # the rate of the next update: epoch 2's, decayed at 1
    assert lrs == pytest.approx([1e-4, 1e-4])


def test_the_learning_rate_warms_up_and_steps_down_at_epoch_boundaries():
    task = DetectionTask(resolve_det_config(dict(lr=1e-4, warmup_iters=10, warmup_ratio=0.001, epochs=12,
                                                 lr_steps=[8, 11])))
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    scheduler, schedule = task.build_scheduler(optimizer, updates_per_epoch=100)
    assert schedule.total == 1200 and schedule.eval_interval == 100 and schedule.checkpoint_interval == 100

    def lr_after(updates: int) -> float:  # the rate of the next update (index `updates`, from 0)
        scheduler.step_update(updates)
        return optimizer.param_groups[0]["lr"]

    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-7)
    assert lr_after(5) == pytest.approx(1e-4 * (0.001 + 0.999 * 5 / 10))
    assert [lr_after(n) for n in (10, 799, 800, 1099, 1100)] == pytest.approx([1e-4, 1e-4, 1e-5, 1e-5, 1e-6])


def test_weight_decay_spares_norms_biases_and_relative_position_tables(data_cache):
    task = DetectionTask(resolve_det_config(dict(backbone_kwargs=TINY_SWIN, weight_decay=0.05, **{
        k: v for k, v in dict(fpn_channels=16, box_head_channels=32, mask_head_channels=8).items()})))
    model = create_detector(SWIN, 2, **TINY_HEADS, **TINY_SWIN)
    decay, no_decay = task.build_optimizer(model).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    spared = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert "backbone.body.layers_0.blocks.0.attn.relative_position_bias_table" in spared
    assert "backbone.body.layers_0.blocks.0.norm1.weight" in spared and "backbone.fpn.inner_blocks.0.0.bias" in spared
    assert not any(p.ndim <= 1 for p in decay["params"]) and len(spared) + len(decay["params"]) == len(names)


def test_presets_and_overrides():
    config = resolve_det_config(dict(preset="coco_maskrcnn_3x"))
    assert config.train_scales == tuple(range(480, 801, 32)) and config.epochs == 36 and config.lr_steps == (27, 33)
    assert (config.lr, config.weight_decay, config.batch_size, config.max_size) == (1e-4, 0.05, 16, 1333)
    assert config.drop_path == 0.2 and config.kind == "mask_rcnn"
    one_x = resolve_det_config(dict(preset="coco_maskrcnn_1x", backbone="boat_cswin_base_224", lr=2e-4))
    assert one_x.train_scales == (800,) and one_x.lr_steps == (8, 11) and one_x.drop_path == 0.3 and one_x.lr == 2e-4
    assert resolve_det_config(dict(backbone="resnet50")).drop_path == 0.0
    for overrides, message in [(dict(preset="coco"), "unknown preset 'coco'"),
                               (dict(epochs=10, lr_steps=[8, 12]), "lr_steps must be increasing epochs below epochs=10"),
                               (dict(lr=0), "lr must be > 0"), (dict(on_bad="ignore"), "on_bad must be one of"),
                               (dict(partial_weights=True), "partial_weights applies to backbone_weights")]:
        with pytest.raises(ValueError) as error:
            resolve_det_config(overrides)
        assert message in str(error.value)


def test_resume_after_sigkill_is_exact(trained, tmp_path):
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "boat_vit", *TRAIN_ARGS, "--output", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "last.pth").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert RunCheckpoint.read(killed).state["step"] < 8
    assert cli_main(["det-train", "--resume", str(killed), "--no-progress"]) == 0
    reference, resumed = _weights(trained), _weights(killed)
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(reference[key], resumed[key]) for key in reference)
    drop_speed = lambda text: [row.rsplit(",", 1)[0] for row in text.splitlines()]  # noqa: E731
    assert drop_speed((killed / "metrics.csv").read_text()) == drop_speed((trained / "metrics.csv").read_text())


def test_two_process_evaluation_equals_one(trained, tmp_path, capsys):
    one = ["--checkpoint", str(trained / "best.pth"), "--data", TINY_TASK, "--workers", "0"]
    assert cli_main(["det-eval", *one, "--json", str(tmp_path / "one.json"),
                     "--results", str(tmp_path / "one_results.json")]) == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "boat_vit", "det-eval",
               *one, "--device", "cpu", "--threads", "1", "--json", str(tmp_path / "two.json"),
               "--results", str(tmp_path / "two_results.json")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    one_scores, two_scores = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert one_scores == two_scores and one_scores["images"] == 4
    assert (tmp_path / "one_results.json").read_text() == (tmp_path / "two_results.json").read_text()
    results = json.loads((tmp_path / "one_results.json").read_text())
    assert {r["image_id"] for r in results} <= {1, 2, 3, 4} and all("segmentation" in r for r in results)


def test_det_eval_keeps_existing_outputs_and_checks_categories(trained, tmp_path, capsys):
    (tmp_path / "scores.json").write_text("mine")
    args = ["det-eval", "--checkpoint", str(trained / "best.pth"), "--workers", "0"]
    assert cli_main([*args, "--data", TINY_TASK, "--json", str(tmp_path / "scores.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "scores.json exists; pass --overwrite to replace it" in err
    assert (tmp_path / "scores.json").read_text() == "mine"
    split = _write_coco(tmp_path / "other", [GOOD], IMAGES[:1], split="val2017")
    assert cli_main([*args, "--data", str(split.annotations.parents[1])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has categories ['cat', 'dog'], the model was trained on ['0', '1'," in err


@pytest.mark.parametrize("option", ["--json", "--results"])
def test_det_eval_replaces_a_planted_link_and_checks_its_folder_first(option, trained, tmp_path, capsys):
    args = ["det-eval", "--checkpoint", str(trained / "best.pth"), "--workers", "0", "--data", TINY_TASK]
    missing = tmp_path / "missing" / "out.json"
    assert cli_main([*args, option, str(missing)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == f"boat-vit det-eval: error: {option} {missing}: the folder {missing.parent} " \
                                        "does not exist"
    precious = tmp_path / "precious"
    precious.write_bytes(b"the user's own file")
    (tmp_path / "out.json").symlink_to(precious)
    assert cli_main([*args, option, str(tmp_path / "out.json")]) == 2
    assert f"{option} {tmp_path / 'out.json'} exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert cli_main([*args, option, str(tmp_path / "out.json"), "--overwrite"]) == 0
    assert precious.read_bytes() == b"the user's own file"
    assert not (tmp_path / "out.json").is_symlink() and json.loads((tmp_path / "out.json").read_text()) is not None


def test_det_predict_command(trained, data_cache, tmp_path, capsys):
    root = prepare_digit_det(TINY_TASK)
    images = [str(path) for path in sorted((root / "val").glob("*.png"))[:2]]
    assert cli_main(["det-predict", *images, "--checkpoint", str(trained / "best.pth"), "--output",
                     str(tmp_path / "out"), "--score-threshold", "0", "--upscale", "2"]) == 0
    printed = capsys.readouterr().out.split()
    assert [Path(p).name for p in printed] == ["000000_detections.png", "000001_detections.png", RESULTS_FILE]
    assert Image.open(printed[0]).size == (96, 96)
    results = json.loads(Path(printed[2]).read_text())
    assert {r["file_name"] for r in results} <= set(images) and all(1 <= r["category_id"] <= 10 for r in results)
    assert cli_main(["det-predict", images[0], "missing.png", "--checkpoint", str(trained / "best.pth"),
                     "--output", str(tmp_path / "none")]) == 2
    assert "image not found: missing.png" in capsys.readouterr().err and not (tmp_path / "none").exists()
    (tmp_path / "broken.png").write_text("not an image")
    for extra, message in [([str(tmp_path / "broken.png")], "cannot read image "),
                           (["--score-threshold", "2"], "--score-threshold must be between 0 and 1, got 2.0")]:
        assert cli_main(["det-predict", images[0], *extra, "--checkpoint", str(trained / "best.pth"),
                         "--output", str(tmp_path / "none")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and not (tmp_path / "none").exists()


def test_a_detection_checkpoint_gives_its_backbone_to_other_tasks(trained, tmp_path, capsys):
    from boat_vit.seg import BoatUPerNet
    from boat_vit.seg import load_backbone_weights as load_segmentation_backbone

    detector = create_detector(SWIN, 3, **TINY_HEADS, **TINY_SWIN)
    report = load_backbone_weights(detector, trained / "best.pth")
    assert report.entry == "model (backbone)" and not report.initial and not report.unused
    trained_body = {k.removeprefix("backbone.body."): v for k, v in _weights(trained / "best.pth").items()
                    if k.startswith("backbone.body.")}
    assert all(torch.equal(detector.backbone.body.state_dict()[k], v) for k, v in trained_body.items())
    segmenter = BoatUPerNet(SWIN, 3, TINY_SWIN, decoder_channels=16)
    assert not load_segmentation_backbone(segmenter, trained / "best.pth").initial
    assert cli_main(["eval", "--model", SWIN, "--pretrained-file", str(trained / "best.pth")]) == 2
    assert "best.pth is a detection training checkpoint: only its backbone" in capsys.readouterr().err


def test_bad_annotations_in_det_train_are_reported_or_stop_in_one_line(data_cache, tmp_path, capsys):
    root = tmp_path / "coco"
    bad_box = BAD["outside"][0]
    _write_coco(root, [GOOD, dict(GOOD, id=18, image_id=2, bbox=[2, 2, 8, 8], segmentation=[[2, 2, 10, 2, 10, 10]]),
                       bad_box], IMAGES[:2], split="train2017")
    _write_coco(root, [GOOD], IMAGES[:1], split="val2017")
    args = [*TRAIN_ARGS, "--data", str(root), "--batch-size", "2", "--epochs", "1", "--lr-steps", "--eval-interval",
            "1", "--output", str(tmp_path / "run")]
    assert cli_main([*args, "--on-bad", "error"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "instances_train2017.json: annotation 11 (image 1, a.png): has box [45, 5, 10, " \
                                    "10] outside the 40x30 image" in err
    assert not (tmp_path / "run" / "last.pth").exists()
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "2 of 3 annotations as targets" in out and "1 boxes outside their image: annotation 11" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["annotations"]["train"]["bad"] == {"outside": 1}


def test_a_non_finite_evaluation_stops_the_run_before_saving(data_cache, tmp_path, monkeypatch, capsys):
    import boat_vit.det.train as det_train
    from boat_vit.det.evaluate import DetectionScores

    nan_scores = {metric: 0.0 for metric in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    monkeypatch.setattr(det_train, "evaluate_detection", lambda *args, **kwargs: (
        DetectionScores(box=nan_scores, mask=nan_scores, images=4, detections=3, non_finite=2), []))
    assert cli_main([*TRAIN_ARGS, "--output", str(tmp_path / "run"), "--checkpoint-interval", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "non-finite detections at " in err and "4 (2 with NaN or infinite values)" in err
    assert "try a lower --lr, --clip-grad or no --amp" in err
    assert not (tmp_path / "run" / "best.pth").exists() and not (tmp_path / "run" / "last.pth").exists()


def test_mixed_precision_trains_and_evaluates(data_cache, tmp_path):
    run = tmp_path / "run"
    assert cli_main([*TRAIN_ARGS, "--output", str(run), "--amp", "--epochs", "1", "--lr-steps",
                     "--checkpoint-interval", "4"]) == 0  # bfloat16 autocast on CPU: 4 iterations, one evaluation
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == ["4"]
    assert all(math.isfinite(float(value)) for row in rows for value in row.split(",")[1:4])
    assert RunCheckpoint.read(run).config["amp"] is True


def test_det_train_help_lists_the_recipe(capsys):
    with pytest.raises(SystemExit):
        cli_main(["det-train", "--help"])
    text = capsys.readouterr().out
    for option in ("--preset", "--train-scales", "--lr-steps", "--backbone-weights", "--on-bad", "--keep-empty",
                   "coco_maskrcnn_3x", "digit_det", "--resume", "--amp"):
        assert option in text


def _trivial_detector_ap(train: CocoDetection, val: CocoDetection) -> float:
    """Box AP of a detector that knows only where objects are on average: one box per image and category at the
    mean training box, score 1."""
    boxes = torch.tensor([box for record in train.records for box in record.boxes]).mean(0).tolist()
    x1, y1, x2, y2 = boxes
    results = [dict(image_id=record.image_id, category_id=category, bbox=[x1, y1, x2 - x1, y2 - y1], score=1.0)
               for record in val.records for category in val.categories.ids]
    return coco_scores(val.coco, results, "bbox", [record.image_id for record in val.records])["AP"]


@pytest.mark.slow
def test_digit_det_box_ap_clearly_beats_a_trivial_detector(data_cache, tmp_path):
    """The digit_det recipe for one epoch (250 iterations): box and mask AP far above those of boxes at the mean
    place (about 0.003)."""
    run = tmp_path / "run"
    assert cli_main(["det-train", "--preset", "digit_det", "--epochs", "1", "--eval-interval", "125",
                     "--output", str(run), "--workers", "0", "--no-progress"]) == 0
    root = prepare_digit_det("digit-det")
    trivial = _trivial_detector_ap(CocoDetection(resolve_coco_split(root, "train")),
                                   CocoDetection(resolve_coco_split(root, "val")))
    summary = json.loads((run / "summary.json").read_text())
    assert trivial < 0.1
    assert summary["final_box_ap"] > 10 and summary["best"]["mask"]["AP"] > 10
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    assert float(rows[-1].split(",")[3]) > float(rows[0].split(",")[3])  # box AP rises
