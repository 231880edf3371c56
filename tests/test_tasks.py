"""The generated digit tasks: disjoint splits, balanced labels, determinism, geometry, specs."""
import numpy as np
import pytest
from PIL import Image

from boat_vit.classification.data import build_datasets, build_eval_dataset
from boat_vit.classification.tasks import (
    CLUTTER_TASK,
    PAIRS_TASK,
    DigitTaskDataset,
    TaskConfig,
    generate_split,
    load_source_digits,
    parse_task,
)

SMALL = dict(train_size=60, heldout_size=40)


@pytest.mark.parametrize("name", [PAIRS_TASK, CLUTTER_TASK])
def test_splits_use_disjoint_source_digits(name):
    config = TaskConfig(name=name, **SMALL)
    train, held_out = generate_split(config, "train"), generate_split(config, "val")
    used_train = {s for sources in train.sources for s in sources}
    used_held_out = {s for sources in held_out.sources for s in sources}
    assert used_train and used_held_out and not used_train & used_held_out
    expected = 2 if name == PAIRS_TASK else 1
    assert all(len(s) == expected + config.num_clutter for s in train.sources)


def test_labels_are_balanced():
    pairs = DigitTaskDataset("train", TaskConfig(name=PAIRS_TASK, **SMALL))
    assert np.bincount(pairs.targets).tolist() == [30, 30]
    clutter = DigitTaskDataset("val", TaskConfig(name=CLUTTER_TASK, train_size=60, heldout_size=43))
    counts = np.bincount(clutter.targets, minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 43


def test_pairs_follow_their_label_and_the_distance_rule():
    config = TaskConfig(name=PAIRS_TASK, **SMALL)
    data = DigitTaskDataset("train", config)
    _, source_labels = load_source_digits()
    for target, classes, boxes, sources in zip(data.targets, data.digit_labels, data.digit_boxes, data.sources):
        assert (classes[0] == classes[1]) == bool(target)
        assert sources[0] != sources[1]  # a same pair is two hands, never a copy
        assert source_labels[list(sources[:2])].tolist() == classes.tolist()
        span = boxes[:, 2:].max(axis=0) - boxes[:, :2].min(axis=0)
        assert span.max() >= config.min_span
        assert set(classes.tolist()) <= set(config.digit_values)


def test_generation_is_deterministic_and_per_image():
    config = TaskConfig(name=PAIRS_TASK, **SMALL)
    first = generate_split(config, "train")
    generate_split.cache_clear()
    again = generate_split(config, "train")
    assert first is not again and np.array_equal(first.images, again.images) and first.targets == again.targets
    longer = generate_split(TaskConfig(name=PAIRS_TASK, train_size=90, heldout_size=40), "train")
    assert np.array_equal(longer.images[:60], first.images)  # image i does not depend on the split size
    other_seed = generate_split(TaskConfig(name=PAIRS_TASK, seed=1, **SMALL), "train")
    assert not np.array_equal(other_seed.images, first.images)
    assert not first.images.flags.writeable  # cached arrays are shared, so read-only


def test_clutter_keeps_off_the_digits():
    config = TaskConfig(name=CLUTTER_TASK, num_clutter=4, **SMALL)
    data = generate_split(config, "train")
    digits, _ = load_source_digits()
    scale = config.digit_scale
    for image, (top, left, bottom, right), sources in zip(data.images, data.digit_boxes[:, 0], data.sources):
        digit = digits[sources[0]].repeat(scale, 0).repeat(scale, 1)
        assert np.array_equal(image[top:bottom, left:right][digit > 0], digit[digit > 0])  # the digit is intact


def test_default_images_are_those_of_the_first_ablation():
    """New options leave the images of existing specs as they were (digests taken before the options came)."""
    import hashlib

    for spec, digest in [("digit-pairs:train_size=50,heldout_size=20", "b5bcc21abee3c7e5"),
                         ("digit-clutter:train_size=50,heldout_size=20", "5ff3b660f7c0d088")]:
        images = generate_split(parse_task(spec), "train").images
        assert hashlib.sha256(images.tobytes()).hexdigest()[:16] == digest


def test_opposite_placement_puts_the_digits_at_opposite_edges():
    config = parse_task("digit-pairs:digit_scale=1,placement=opposite,train_size=200,heldout_size=10")
    boxes = generate_split(config, "train").digit_boxes
    low, high = 0, config.canvas - config.digit_side
    axes = []
    for (a, b) in boxes:
        along = [axis for axis in (0, 1) if {a[axis], b[axis]} == {low, high}]
        assert along, (a, b)
        axes.append(along[0])
        assert (a[2:] - a[:2] == config.digit_side).all() and (b[2:] - b[:2] == config.digit_side).all()
    assert 0.3 < np.mean(axes) < 0.7  # both axes occur
    assert len({tuple(b[0, :2]) for b in boxes}) > 20  # the other coordinate varies


def test_block_placement_keeps_both_digits_in_one_aligned_square():
    config = parse_task("digit-pairs:digit_scale=1,placement=block,block=16,train_size=200,heldout_size=10")
    data = generate_split(config, "train")
    squares = set()
    for (a, b) in data.digit_boxes:
        assert (a[:2] // 16 == b[:2] // 16).all() and ((a[2:] - 1) // 16 == a[:2] // 16).all()
        assert ((b[2:] - 1) // 16 == b[:2] // 16).all()
        overlap = np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2])
        assert (overlap <= 0).any()  # side by side or stacked, never overlapping
        squares.add(tuple(a[:2] // 16))
    assert squares == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_spec_round_trip_and_errors():
    config = parse_task("digit-pairs:canvas=48,min_span=40,digit_classes=0147,train_size=10")
    assert config == TaskConfig(canvas=48, min_span=40, digit_classes="0147", train_size=10)
    assert parse_task(config.spec()) == config
    assert parse_task("digit-clutter").digit_classes == "0123456789"
    for bad, message in [("digit-pairs:canvass=3", "bad task option"), ("digit-pairs:canvas=x", "needs a int"),
                         ("digit-pairs:min_span=8", "min_span"), ("digit-pairs:digit_classes=00", "digit_classes"),
                         ("digit-pairs:placement=far", "placement must be one of"),
                         ("digit-pairs:placement=block,block=24", "block must divide canvas=32"),
                         ("digit-pairs:placement=block,block=16", "at least 32"),
                         ("digit-pairs:canvas=24,min_span=24,digit_scale=2,placement=opposite", "canvas >= 32")]:
        with pytest.raises(ValueError, match=message):
            parse_task(bad)


def test_tasks_are_training_data():
    spec = "digit-clutter:train_size=20,heldout_size=10"
    train, held_out = build_datasets(spec, None, None)
    assert len(train) == 20 and len(held_out) == 10 and train.classes == [str(c) for c in range(10)]
    image, label = train[3]
    assert isinstance(image, Image.Image) and image.size == (32, 32) and image.mode == "RGB" and label == 3
    assert len(build_eval_dataset(spec, None)) == 10
