"""Do FSLA's groups join the two digits of a ``digit-pairs`` image, and more than groups that only separate
ink from background would? Measured on the held-out split.

For a trained ablation run (``boat-vit ablate``), every FSLA layer of the model is recorded on the held-out
images (:func:`boat_vit.layers.recording_clusters`). A token is *ink of digit A* when its patch holds
ink inside digit A's box (likewise B). For every ink token of A and every head, ``reach`` is the share of
B's ink tokens among the keys it attends to through FSLA (its group plus the sibling overlap); the script
averages it over A's ink tokens, heads and images, separately for ``same`` and ``different`` pairs. The
same model's layers are then measured with the other groupings of the same layout on the same queries:
``norm`` (queries ranked by norm: ink vs background) and ``random`` (content-blind). Window attention
reaches none of B when the digits are more than a window apart; global attention reaches all of it.

    python benchmarks/ablation_groups.py runs/ablation-long-range/far/boat_swin/seed0/last.pth
"""
import argparse
import contextlib
import sys

import numpy as np
import torch

from boat_vit.clustering import sibling_overlap_slots
from boat_vit.classification import load_classifier
from boat_vit.layers import FeatureSpaceLocalAttention
from boat_vit.classification.tasks import generate_split, parse_task
from boat_vit.layers import recording_clusters

BATCH = 100
COMPARED_GROUPINGS = ("content", "norm", "random")  # the layer's rule first, then the controls of its layout


def ink_tokens(image: np.ndarray, box: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``(H * W,)`` mask of the tokens whose patch holds ink inside ``box`` (top, left, bottom, right)."""
    inside = np.zeros(image.shape, dtype=bool)
    inside[box[0]:box[2], box[1]:box[3]] = True
    ink = (image > 0) & inside
    rows, cols = image.shape[0] // grid[0], image.shape[1] // grid[1]
    return ink.reshape(grid[0], rows, grid[1], cols).any(axis=(1, 3)).reshape(-1)


def key_masks(record) -> torch.Tensor:
    """``(S, num_groups, N)``: which tokens each group of each sequence attends to (members and overlap)."""
    plan, order = record.clustering.plan, record.clustering.order
    num_seq, num_tokens = order.shape[0], record.num_tokens
    keys = torch.cat([record.clustering.groups,
                      order[:, sibling_overlap_slots(plan, record.overlap, order.device)]], dim=-1)
    masks = torch.zeros(num_seq, plan.num_groups, num_tokens + plan.num_padding, dtype=torch.bool)
    masks.scatter_(2, keys, True)
    return masks[..., :num_tokens]


@torch.inference_mode()
def measure(model, images: torch.Tensor, raw: np.ndarray, boxes: np.ndarray) -> dict[str, np.ndarray]:
    """Per FSLA layer: the reach of every image (mean over heads and A's ink tokens)."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, FeatureSpaceLocalAttention)}
    with contextlib.ExitStack() as stack:
        records = {name: stack.enter_context(recording_clusters(m, name)) for name, m in layers.items()}
        model(images)
    out = {}
    for name, (record,) in records.items():
        masks, heads = key_masks(record), record.num_heads
        group_of = record.clustering.inverse // record.clustering.plan.group_size  # (S, N)
        reach = []
        for b in range(len(raw)):
            ink_a, ink_b = (torch.from_numpy(ink_tokens(raw[b], boxes[b, d], record.token_map)) for d in range(2))
            per_head = []
            for h in range(heads):
                s = b * heads + h
                seen = masks[s][group_of[s][ink_a]]  # (A's ink tokens, N): the keys of each
                per_head.append(seen[:, ink_b].float().mean().item())
            reach.append(np.mean(per_head))
        out[name] = np.array(reach)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="best.pth or last.pth of a digit-pairs run with FSLA")
    parser.add_argument("--images", type=int, default=1000, help="held-out images to measure (default 1000)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model, _, data_config = load_classifier(checkpoint=args.checkpoint)
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    task = parse_task(state["config"]["data"])
    held_out = generate_split(task, "val")
    count = min(args.images, len(held_out.targets))
    raw, boxes = held_out.images[:count], held_out.digit_boxes[:count]
    targets = np.array(held_out.targets[:count])
    mean, std = (torch.tensor(data_config[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    images = (torch.from_numpy(np.ascontiguousarray(raw)).float()[:, None].expand(-1, 3, -1, -1) / 255 - mean) / std
    print(f"{args.checkpoint}: {task.spec()}, {count} held-out images")
    for grouping in COMPARED_GROUPINGS:
        for layer in model.modules():
            if isinstance(layer, FeatureSpaceLocalAttention):
                layer.grouping = grouping  # eval mode: random groups are one fixed draw per head
        results = {}
        for start in range(0, count, BATCH):
            part = measure(model, images[start:start + BATCH], raw[start:start + BATCH], boxes[start:start + BATCH])
            for name, values in part.items():
                results.setdefault(name, []).append(values)
        for name, parts in results.items():
            reach = np.concatenate(parts)
            print(f"  {grouping:7s} {name}: reach of digit B from digit A's ink {reach.mean():.3f} "
                  f"(same pairs {reach[targets == 1].mean():.3f}, different {reach[targets == 0].mean():.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
