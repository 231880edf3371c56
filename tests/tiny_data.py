"""Tiny data and settings the training tests share: drawn shapes in the ImageNet and ADE20K layouts, and
small models with recipes that train in seconds."""
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

# A very small BOAT-Swin: 16x16 images, patch 2, an 8x8 map with window 4 (shifted block with FSLA).
TINY_MODEL = ["--model", "boat_swin_tiny_patch4_window7_224", "--model-kwargs",
              json.dumps(dict(img_size=16, patch_size=2, window_size=4, embed_dim=16, depths=[2, 2],
                              num_heads=[1, 2]))]
TINY_RECIPE = ["--img-size", "16", "--batch-size", "8", "--lr", "1e-3", "--warmup-epochs", "1", "--workers", "0",
               "--no-progress", "--hflip", "0", "--seed", "3"]
SHAPES = ("circle", "square")


def _draw_shape(shape: str, index: int) -> Image.Image:
    image = Image.new("RGB", (16, 16), (20 * (index % 5), 0, 0))
    draw = ImageDraw.Draw(image)
    box = (3 + index % 3, 3, 12, 12 - index % 2)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=(255, 255, 255))
    return image


def make_shapes_folder(root: Path) -> Path:
    """ImageNet layout with two classes of drawn shapes: 24 train and 8 val images per class."""
    for split, count in (("train", 24), ("val", 8)):
        for shape in SHAPES:
            folder = root / split / shape
            folder.mkdir(parents=True)
            for i in range(count):
                _draw_shape(shape, i + (0 if split == "train" else 100)).save(folder / f"{i}.png")
    return root


def train_args(data: Path, output: Path, epochs: int = 2, *extra: str) -> list[str]:
    """``boat-vit train`` arguments of the tiny model on ``data``."""
    return ["train", *TINY_MODEL, *TINY_RECIPE, "--data", str(data), "--output", str(output),
            "--epochs", str(epochs), *extra]


SWIN = "boat_swin_tiny_patch4_window7_224"
CSWIN = "boat_cswin_tiny_224"
TINY_SWIN = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))
TINY_CSWIN = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(2, 2, 4, 8))
# ADE20K label values of the generated data: 0 "other" (ignored), 1 background, 2-4 shapes -> classes 0..3
SHAPE_COLOURS = {2: (220, 40, 40), 3: (40, 200, 60), 4: (50, 80, 230)}
NUM_CLASSES = 4
SIZES = ((64, 64), (80, 56))  # (width, height): square and odd-shaped images
SEG_TRAIN_ARGS = [
    "--num-classes", str(NUM_CLASSES), "--backbone", SWIN, "--backbone-kwargs", json.dumps(TINY_SWIN),
    "--decoder-channels", "32", "--crop-size", "64", "--scale", "128", "64", "--ratio-range", "0.75", "1.25",
    "--test-scale", "128", "64", "--batch-size", "4", "--lr", "2e-3", "--warmup-iters", "5", "--drop-path", "0",
    "--workers", "0", "--no-progress", "--seed", "1",
]


def _draw_scene(rng: random.Random, size: tuple[int, int]) -> tuple[Image.Image, Image.Image]:
    """A grey image with two coloured shapes (square, disc, triangle) and its ADE20K-style label map."""
    width, height = size
    image = Image.new("RGB", size, tuple(rng.randint(90, 140) for _ in range(3)))
    label = Image.new("L", size, 1)
    pen, marker = ImageDraw.Draw(image), ImageDraw.Draw(label)
    for value in rng.sample(sorted(SHAPE_COLOURS), 2):
        side = rng.randint(12, 24)
        x, y = rng.randint(0, width - side), rng.randint(0, height - side)
        box = (x, y, x + side, y + side)
        for draw, fill in ((pen, SHAPE_COLOURS[value]), (marker, value)):
            if value == 2:
                draw.rectangle(box, fill=fill)
            elif value == 3:
                draw.ellipse(box, fill=fill)
            else:
                draw.polygon([(x, y + side), (x + side, y + side), (x + side // 2, y)], fill=fill)
    marker.rectangle((0, 0, width - 1, 1), fill=0)  # a strip of "other": ignored
    return image, label


def make_ade20k(root: Path, train: int = 24, val: int = 6, seed: int = 0) -> Path:
    """A small data set in the ADEChallengeData2016 layout; returns ``root``."""
    rng = random.Random(seed)
    base = root / "ADEChallengeData2016"
    for split, count in (("training", train), ("validation", val)):
        (base / "images" / split).mkdir(parents=True)
        (base / "annotations" / split).mkdir(parents=True)
        for i in range(count):
            image, label = _draw_scene(rng, SIZES[i % 2])
            image.save(base / "images" / split / f"{split}_{i:03d}.jpg", quality=95)
            label.save(base / "annotations" / split / f"{split}_{i:03d}.png")
    return root
