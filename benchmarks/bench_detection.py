"""Mask R-CNN cost with BOAT backbones against the same detector without FSLA, at COCO sizes.

Four detectors (COCO's 80 classes, FPN 256, torchvision's standard heads): BOAT-Swin-T and timm's Swin-T,
BOAT-CSWin-T and the same CSWin-T with FSLA off. Each is timed on one image (default 800x1216: COCO's test
scale for a 4:3 photograph, rounded to a multiple of 32) for an inference forward and for a training step
(forward with ten boxes and masks as targets, backward, AdamW step), all eight contenders interleaved in one
run (:func:`boat_vit.bench.time_interleaved`); a ratio is the median of the per-repeat ratios against the
FSLA-off twin. Two measures of the FSLA's share of a detector's time:

* ``FSLA share (ratio)``: ``1 - off / BOAT`` from the interleaved times: everything FSLA adds, backward included;
* ``FSLA share (layers)``: the time spent inside the FSLA layers during one more inference forward (forward
  hooks around every :class:`~boat_vit.layers.FeatureSpaceLocalAttention`), over that forward's time.

Peak memory is measured for each detector and pass in a fresh process (:func:`boat_vit.bench.run_isolated`:
one warm-up pass, then the peak resident size over one more, above the process before the model was built).
GMACs are those of the backbone and FPN (the part that differs) for one inference forward.

Usage: ``python benchmarks/bench_detection.py [--size 800 1216] [--repeats 3] [--threads 1] [--json FILE]``.
At 800x1216 on one CPU thread a training step of one detector takes tens of seconds: keep ``--repeats`` small.
"""
import argparse
import time
from typing import Callable

import torch
import torch.nn as nn

from boat_vit.bench import (
    ALLOCATOR_HELP,
    ALLOCATORS,
    count_macs,
    environment,
    machine_line,
    markdown_table,
    peak_bytes,
    report_path,
    resident_bytes,
    run_isolated,
    time_interleaved,
    use_allocator,
    write_json,
)
from boat_vit.det import create_detector
from boat_vit.layers import FeatureSpaceLocalAttention

DETECTORS = {  # name -> (backbone, keyword arguments, name of its FSLA-off twin)
    "BOAT-Swin-T": ("boat_swin_tiny_patch4_window7_224", {}, "Swin-T (timm)"),
    "Swin-T (timm)": ("swin_tiny_patch4_window7_224", {}, None),
    "BOAT-CSWin-T": ("boat_cswin_tiny_224", {}, "CSWin-T (FSLA off)"),
    "CSWin-T (FSLA off)": ("boat_cswin_tiny_224", dict(fsla_stages=False), None),
}
NUM_CLASSES = 80  # COCO
NUM_OBJECTS = 10  # training targets per image
PASSES = ("inference", "training")
MIB = 2**20
COLUMNS = (
    ("model", "detector", "{}"),
    ("pass", "pass", "{}"),
    ("params_m", "params (M)", "{:.2f}"),
    ("backbone_gmacs", "backbone+FPN GMACs", "{:.0f}"),
    ("seconds", "s/image", "{:.2f}"),
    ("peak_memory_mib", "peak MiB", "{:.0f}"),
    ("time_ratio", "time vs FSLA off", "{:.2f}x"),
    ("fsla_share_ratio", "FSLA share (ratio)", "{:.0%}"),
    ("fsla_share_layers", "FSLA share (layers)", "{:.0%}"),
)


def build(name: str, size: tuple[int, int]) -> nn.Module:
    """The detector ``name``, with the test scale set to ``size`` (inference takes the image as it is)."""
    backbone, kwargs, _ = DETECTORS[name]
    torch.manual_seed(0)
    return create_detector(backbone, NUM_CLASSES, min_size=min(size), max_size=max(size), **kwargs)


def targets(size: tuple[int, int]) -> list[dict]:
    """``NUM_OBJECTS`` boxes of random size and place, their masks filled, random classes (seeded)."""
    generator = torch.Generator().manual_seed(0)
    height, width = size
    boxes, masks = [], torch.zeros(NUM_OBJECTS, height, width, dtype=torch.uint8)
    for index in range(NUM_OBJECTS):
        w, h = (int(torch.randint(32, max(33, extent // 3), (1,), generator=generator)) for extent in (width, height))
        x, y = int(torch.randint(0, width - w, (1,), generator=generator)), int(torch.randint(0, height - h, (1,), generator=generator))
        boxes.append([x, y, x + w, y + h])
        masks[index, y:y + h, x:x + w] = 1
    labels = torch.randint(1, NUM_CLASSES + 1, (NUM_OBJECTS,), generator=generator)
    return [dict(boxes=torch.tensor(boxes, dtype=torch.float32), labels=labels, masks=masks)]


def inference_step(model: nn.Module, image: torch.Tensor) -> Callable[[], object]:
    def step():
        model.eval()
        with torch.inference_mode():
            return model([image])
    return step


def training_step(model: nn.Module, image: torch.Tensor, target: list[dict]) -> Callable[[], object]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)

    def step():
        model.train()
        loss = sum(model([image], target).values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def peak_memory(name: str, kind: str, size: tuple[int, int]) -> int:
    """Bytes above the process before the model at the peak of one (warm) pass; run it isolated."""
    baseline = resident_bytes()
    model, image = build(name, size), torch.rand(3, *size)
    step = inference_step(model, image) if kind == "inference" else training_step(model, image, targets(size))
    step()
    return peak_bytes(step, baseline)


def fsla_layer_share(model: nn.Module, image: torch.Tensor) -> float:
    """Time inside FSLA layers over the time of one inference forward (forward hooks; CPU, synchronous)."""
    spent, started = [0.0], {}

    def before(module, args):
        started[module] = time.perf_counter()

    def after(module, args, output):
        spent[0] += time.perf_counter() - started.pop(module)

    layers = [m for m in model.modules() if isinstance(m, FeatureSpaceLocalAttention)]
    handles = [h for layer in layers for h in (layer.register_forward_pre_hook(before), layer.register_forward_hook(after))]
    try:
        start = time.perf_counter()
        inference_step(model, image)()
        total = time.perf_counter() - start
    finally:
        for handle in handles:
            handle.remove()
    return spent[0] / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1216), help="image height width (default 800 1216)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes per contender (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per contender (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory processes")
    parser.add_argument("--allocator", choices=ALLOCATORS, default="retain", help=ALLOCATOR_HELP)
    parser.add_argument("--json", type=report_path, help="also write the results to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    allocator = use_allocator(args.allocator)
    size = tuple(args.size)

    names = list(DETECTORS)
    models = {name: build(name, size) for name in names}
    image, target = torch.rand(3, *size), targets(size)
    contenders = [(name, kind) for name in names for kind in PASSES]
    steps = [inference_step(models[name], image) if kind == "inference" else training_step(models[name], image, target)
             for name, kind in contenders]
    timings = time_interleaved(steps, args.repeats, args.warmup)
    layer_share = {name: fsla_layer_share(models[name], image) for name in names if DETECTORS[name][2]}
    padded = torch.rand(1, 3, *(-(-side // 32) * 32 for side in size))
    gmacs = {name: count_macs(models[name].backbone.eval(), padded) / 1e9 for name in names}
    params = {name: sum(p.numel() for p in models[name].parameters()) / 1e6 for name in names}
    del models, steps
    memory = {contender: run_isolated(peak_memory, *contender, size, threads=args.threads) / MIB
              for contender in contenders} if args.memory else {}

    info = environment()
    print(f"Mask R-CNN, one {size[0]}x{size[1]} image, float32, {args.threads} thread(s), allocator {allocator}; "
          f"{machine_line(info)}, torch {info['torch']}, {info['date']}; {args.warmup} warm-up + {args.repeats} "
          "interleaved timed passes per contender")
    rows = []
    for index, (name, kind) in enumerate(contenders):
        twin = DETECTORS[name][2]
        ratio = timings.ratio(index, baseline=contenders.index((twin, kind))) if twin else None
        rows.append(dict(model=name, **{"pass": kind}, params_m=params[name], backbone_gmacs=gmacs[name],
                         seconds=timings.median(index), peak_memory_mib=memory.get((name, kind)), time_ratio=ratio,
                         fsla_share_ratio=1 - 1 / ratio if ratio else None,
                         fsla_share_layers=layer_share.get(name) if kind == "inference" else None,
                         all_seconds=timings.seconds[index]))
    print(markdown_table(rows, COLUMNS))
    if args.json:
        write_json(dict(environment=info, size=size, threads=args.threads, results=rows), args.json)


if __name__ == "__main__":
    main()
