"""Which patches attend to which through FSLA: ``boat-vit show-clusters``.

The model runs once on one image. For the chosen FSLA layer, :func:`recording_clusters` replaces the
layer's ``forward`` (an instance attribute, for the duration of the ``with`` block only) by a function
that calls the layer's own :meth:`~boat_vit.layers.FeatureSpaceLocalAttention.forward_with_clusters` with
the same arguments, stores the :class:`~boat_vit.clustering.Clustering` it returns and passes the output
on. The layer therefore computes everything exactly once, the model's output is unchanged, and the groups
drawn are exactly the groups the layer used. Nothing is re-implemented here.

The picture has one column per chosen head. Top: every patch coloured by its FSLA group. Bottom: the
groups of one selected patch: the members of its group (orange), and the tokens of the sibling group that
its group also uses as keys and values (the overlap, cyan); the selected patch has a red frame. Members
far from the selected patch are the point of feature-space attention: window attention never reaches them.

The clustering is a function of the layer's queries, which are a function of the image, so a model with
random weights also groups patches by content (colour, texture); trained weights give semantic groups.
"""
import argparse
import json
import math
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from .clustering import Clustering, sibling_overlap_slots
from .layers import FeatureSpaceLocalAttention

__all__ = [
    "ClusterRecord",
    "recording_clusters",
    "record_clusters",
    "find_fsla_layers",
    "select_fsla_layer",
    "load_image",
    "render_clusters",
    "show_clusters",
]

SAMPLES = ("china", "flower", "digit")  # photographs shipped with scikit-learn; a handwritten digit
DEFAULT_SAMPLE = "china"
DEFAULT_PANEL_WIDTH = 320
MIN_PANEL_WIDTH = 200  # room for a panel's label
MIN_FIGURE_WIDTH = 720  # room for the header
LABEL_FONT_SIZE = 8
HEADER_HEIGHT = 40  # pixels of the figure's header: title and colour legend
LABEL_HEIGHT = 22  # pixels of the label above each panel
DPI = 100
GROUP_ALPHA = 0.6
DIM_FACTOR = 0.3  # brightness of patches the selected patch does not attend to through FSLA
HIGHLIGHT_ALPHA = 0.55
MEMBER_COLOUR = (1.0, 0.55, 0.0)
OVERLAP_COLOUR = (0.0, 0.85, 1.0)
SELECTED_COLOUR = "red"
LEGEND = ("top: patches coloured by FSLA group;  bottom: patch {patch} (red) attends to its group (orange) "
          "and to the sibling overlap (cyan)")
_GOLDEN_RATIO = (math.sqrt(5) - 1) / 2
_FSLA_NAME = re.compile(r"(?:^|\.)(\d+)\.blocks\.(\d+)\.")


@dataclass(frozen=True)
class ClusterRecord:
    """The clustering one FSLA layer used in one forward pass.

    Attributes:
        layer: Module name of the layer in the model.
        clustering: What the layer returned: sequence ``b * num_heads + h`` is image ``b``, head ``h``.
        token_map: ``(H, W)`` of the layer's input; token ``i`` is the patch at ``divmod(i, W)``.
        num_heads: Heads of the layer.
        overlap: Sibling tokens each group borrows as extra keys and values.
    """

    layer: str
    clustering: Clustering
    token_map: tuple[int, int]
    num_heads: int
    overlap: int

    @property
    def num_tokens(self) -> int:
        return self.token_map[0] * self.token_map[1]

    def _sequence(self, head: int, image: int) -> int:
        if not 0 <= head < self.num_heads:
            raise ValueError(f"head must be in [0, {self.num_heads}), got {head}")
        return image * self.num_heads + head

    def group_map(self, head: int, image: int = 0) -> torch.Tensor:
        """``(H, W)`` group index of every patch."""
        slots = self.clustering.inverse[self._sequence(head, image)]
        return (slots // self.clustering.plan.group_size).view(self.token_map)

    def attended(self, head: int, row: int, col: int, image: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """What patch ``(row, col)`` attends to: ``(H, W)`` masks of its group and of the sibling overlap."""
        height, width = self.token_map
        if not (0 <= row < height and 0 <= col < width):
            raise ValueError(f"patch ({row}, {col}) is outside the {height}x{width} token map of {self.layer}")
        sequence = self._sequence(head, image)
        plan, order = self.clustering.plan, self.clustering.order[sequence]
        group = int(self.group_map(head, image)[row, col])
        overlap_slots = sibling_overlap_slots(plan, self.overlap, order.device)[group]
        masks = []
        for tokens in (self.clustering.groups[sequence, group], order[overlap_slots]):
            mask = torch.zeros(self.num_tokens + plan.num_padding, dtype=torch.bool, device=order.device)
            mask[tokens] = True
            masks.append(mask[: self.num_tokens].view(self.token_map))  # padding slots point past the tokens
        return masks[0], masks[1]


@contextmanager
def recording_clusters(module: FeatureSpaceLocalAttention, name: str = "") -> Iterator[list[ClusterRecord]]:
    """Records the clustering of every call of ``module`` inside the block (module docstring).

    Yields:
        The list the records are appended to, one per call.
    """
    if not isinstance(module, FeatureSpaceLocalAttention):
        raise ValueError(f"{name or type(module).__name__} is not a FeatureSpaceLocalAttention layer")
    records: list[ClusterRecord] = []

    def forward(x: torch.Tensor, clustering: Optional[Clustering] = None) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"{name} got a token sequence {tuple(x.shape)}; the patch layout needs (B, H, W, C)")
        out, used = module.forward_with_clusters(x, clustering)
        records.append(ClusterRecord(name, used, (x.shape[1], x.shape[2]), module.num_heads, module.overlap))
        return out

    module.forward = forward
    try:
        yield records
    finally:
        del module.forward


def find_fsla_layers(model: nn.Module) -> dict[tuple[int, int], str]:
    """``{(stage, block): module name}`` of every FSLA layer, from names like ``layers.0.blocks.1.fsla``."""
    layers = {}
    for name, module in model.named_modules():
        match = _FSLA_NAME.search(name)
        if isinstance(module, FeatureSpaceLocalAttention) and match:
            layers[int(match.group(1)), int(match.group(2))] = name
    return dict(sorted(layers.items()))


def select_fsla_layer(model: nn.Module, stage: Optional[int] = None, block: Optional[int] = None) -> str:
    """Name of the FSLA layer of ``stage`` / ``block``; by default the first stage's first FSLA block."""
    layers = find_fsla_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no FeatureSpaceLocalAttention layer")
    stage = next(iter(layers))[0] if stage is None else stage
    in_stage = [b for s, b in layers if s == stage]
    block = (in_stage[0] if in_stage else -1) if block is None else block
    if (stage, block) not in layers:
        available = ", ".join(f"--stage {s} --block {b}" for s, b in layers)
        raise ValueError(f"no FSLA layer at stage {stage} block {block}; this model has: {available}")
    return layers[stage, block]


@torch.inference_mode()
def record_clusters(model: nn.Module, images: torch.Tensor, layer: str) -> tuple[ClusterRecord, torch.Tensor]:
    """Runs ``model`` once on ``images``; returns the clustering of FSLA layer ``layer`` and the output."""
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ValueError(f"the model has no module {layer!r}")
    with recording_clusters(modules[layer], layer) as records:
        output = model(images)
    if len(records) != 1:
        raise ValueError(f"{layer} ran {len(records)} times in one forward pass; expected once")
    return records[0], output


def load_image(path: Optional[str] = None, sample: str = DEFAULT_SAMPLE) -> Image.Image:
    """The image at ``path`` or, without one, a sample that ships with the dependencies (``SAMPLES``)."""
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"image not found: {path}")
        try:
            return Image.open(path).convert("RGB")
        except OSError as error:
            raise ValueError(f"cannot read image {path}: {error}") from None
    if sample == "digit":
        from .data import DigitsDataset

        return DigitsDataset("val")[0][0]
    if sample not in SAMPLES:
        raise ValueError(f"unknown sample {sample!r}; choose from {SAMPLES}")
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image(f"{sample}.jpg"))


def _group_colours(num_groups: int) -> np.ndarray:
    """``(num_groups, 3)`` distinct RGB colours: golden-ratio hue steps, alternating saturation and value."""
    from matplotlib.colors import hsv_to_rgb

    index = np.arange(num_groups)
    hsv = np.stack([(index * _GOLDEN_RATIO) % 1.0, np.where(index % 2, 0.55, 0.95),
                    np.where(index // 2 % 2, 0.75, 1.0)], axis=1)
    return hsv_to_rgb(hsv)


def _upsample(token_values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour ``(H, W, ...)`` token map to ``size`` pixels (every patch a block)."""
    rows = np.arange(size[0]) * token_values.shape[0] // size[0]
    cols = np.arange(size[1]) * token_values.shape[1] // size[1]
    return token_values[rows][:, cols]


def figure_size(image_size: tuple[int, int], num_heads: int, panel_width: int) -> tuple[int, int]:
    """``(width, height)`` in pixels of the picture for an ``image_size = (height, width)`` input.

    Panels are ``panel_width`` wide with the image's aspect ratio; the figure is at least
    ``MIN_FIGURE_WIDTH`` wide (for the header), with the panels centred.
    """
    panel_height = round(panel_width * image_size[0] / image_size[1])
    return max(num_heads * panel_width, MIN_FIGURE_WIDTH), HEADER_HEIGHT + 2 * (LABEL_HEIGHT + panel_height)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def render_clusters(
    image: np.ndarray,
    record: ClusterRecord,
    heads: Sequence[int],
    patch: tuple[int, int],
    output: str,
    title: str = "",
    panel_width: int = DEFAULT_PANEL_WIDTH,
) -> tuple[int, int]:
    """Writes the picture (module docstring) to ``output`` as PNG; returns its ``(width, height)``.

    Args:
        image: ``(h, w, 3)`` uint8, the image as the model saw it (before normalisation).
        record: The recorded clustering of the image (image 0 of the batch).
        heads: Heads to draw, one column each.
        patch: ``(row, col)`` of the selected patch in the layer's token map.
        output: PNG path.
        title: Header line.
        panel_width: Width of each panel in pixels, at least ``MIN_PANEL_WIDTH``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    if panel_width < MIN_PANEL_WIDTH:
        raise ValueError(f"panel width must be at least {MIN_PANEL_WIDTH} pixels, got {panel_width}")
    height, width = image.shape[:2]
    fig_width, fig_height = figure_size((height, width), len(heads), panel_width)
    left = (fig_width - len(heads) * panel_width) // 2
    interpolation = "nearest" if panel_width >= width else "antialiased"  # crisp patches when enlarging
    panel_height = (fig_height - HEADER_HEIGHT) // 2 - LABEL_HEIGHT
    figure = Figure(figsize=(fig_width / DPI, fig_height / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    figure.text(0.5, 1 - HEADER_HEIGHT / 3 / fig_height, title, ha="center", va="center", fontsize=9)
    legend = LEGEND.format(patch=f"({patch[0]},{patch[1]})")
    figure.text(0.5, 1 - HEADER_HEIGHT * 3 / 4 / fig_height, legend, ha="center", va="center", fontsize=8)
    pixels = image.astype(np.float32) / 255
    grey = np.repeat(pixels.mean(axis=2, keepdims=True), 3, axis=2) * DIM_FACTOR
    colours = _group_colours(record.clustering.plan.num_groups)
    row, col = patch
    token_h, token_w = record.token_map

    def panel(column: int, line: int, picture: np.ndarray, label: str):
        bottom = fig_height - HEADER_HEIGHT - (line + 1) * (LABEL_HEIGHT + panel_height)
        x = left + column * panel_width
        axes = figure.add_axes((x / fig_width, bottom / fig_height, panel_width / fig_width, panel_height / fig_height))
        axes.imshow(np.clip(picture, 0, 1), extent=(0, token_w, token_h, 0), interpolation=interpolation, aspect="auto")
        axes.set_axis_off()
        figure.text((x + panel_width / 2) / fig_width, (bottom + panel_height + LABEL_HEIGHT / 2) / fig_height,
                    label, ha="center", va="center", fontsize=LABEL_FONT_SIZE)
        return axes

    for column, head in enumerate(heads):
        groups = record.group_map(head).cpu().numpy()
        tint = _upsample(colours[groups], (height, width))
        coloured = (1 - GROUP_ALPHA) * pixels + GROUP_ALPHA * tint
        panel(column, 0, coloured, f"head {head}: {_plural(len(colours), 'group')}")

        members, overlap = (m.cpu().numpy() for m in record.attended(head, row, col))
        picture = grey.copy()
        for mask, colour in ((members, MEMBER_COLOUR), (overlap, OVERLAP_COLOUR)):
            where = _upsample(mask, (height, width))
            picture[where] = (1 - HIGHLIGHT_ALPHA) * pixels[where] + HIGHLIGHT_ALPHA * np.asarray(colour)
        axes = panel(column, 1, picture, f"head {head}: group {groups[row, col]} ({int(members.sum())} + "
                                         f"{int(overlap.sum())} overlap)")
        axes.add_patch(Rectangle((col, row), 1, 1, fill=False, edgecolor=SELECTED_COLOUR, linewidth=1.5))
    figure.savefig(output, dpi=DPI, format="png")
    return fig_width, fig_height


def _model_input_size(image_size: tuple[int, int], side: int, multiple: int) -> tuple[int, int]:
    """Shorter side scaled to ``side``, both sides rounded to a multiple of the model's total stride."""
    scale = side / min(image_size)
    return tuple(max(multiple, round(s * scale / multiple) * multiple) for s in image_size)


def _load_model(
    model_name: Optional[str], checkpoint: Optional[str], pretrained_file: Optional[str], model_kwargs: dict
) -> tuple[nn.Module, Optional[list[str]], dict]:
    """Model in eval mode, its class names (``None`` for random weights) and data config."""
    from timm.data import resolve_model_data_config

    from .evaluate import load_classifier
    from .factory import create_classifier

    if checkpoint is not None:
        if model_kwargs or pretrained_file:
            raise ValueError("--checkpoint brings its own model; drop --model-kwargs and --pretrained-file")
        model, class_names, data_config = load_classifier(checkpoint=checkpoint)
        if model_name is not None and model_name != model.pretrained_cfg.get("architecture", model_name):
            raise ValueError(f"{checkpoint} holds {model.pretrained_cfg.get('architecture')}, not {model_name}")
        return model, class_names, data_config
    if model_name is None:
        raise ValueError("give --model NAME (and optionally --pretrained-file), or --checkpoint")
    model = create_classifier(model_name, num_classes=1000, pretrained_file=pretrained_file, **model_kwargs).eval()
    data_config = resolve_model_data_config(model)
    if "img_size" in model_kwargs:
        data_config["input_size"] = (3, *np.broadcast_to(model_kwargs["img_size"], 2).tolist())
    class_names = [str(i) for i in range(model.num_classes)] if pretrained_file else None
    return model, class_names, data_config


def show_clusters(
    output: str,
    model_name: Optional[str] = None,
    image: Optional[str] = None,
    sample: str = DEFAULT_SAMPLE,
    checkpoint: Optional[str] = None,
    pretrained_file: Optional[str] = None,
    model_kwargs: Optional[dict] = None,
    stage: Optional[int] = None,
    block: Optional[int] = None,
    heads: Optional[Sequence[int]] = None,
    patch: Optional[tuple[int, int]] = None,
    img_size: Optional[int] = None,
    panel_width: int = DEFAULT_PANEL_WIDTH,
    seed: int = 0,
) -> dict:
    """Runs a model on an image and draws the FSLA groups of one layer (module docstring).

    Args:
        output: PNG path to write.
        model_name: timm model name (not needed with ``checkpoint``).
        image: Image file; ``None`` uses ``sample``.
        sample: Built-in image when ``image`` is ``None``: ``china``, ``flower`` or ``digit``.
        checkpoint: boat-vit training checkpoint (model, weights, classes and data config inside).
        pretrained_file: Weights for ``model_name`` through its checkpoint filter (e.g. released BOAT files).
        model_kwargs: Keyword arguments for ``model_name``.
        stage: Stage of the FSLA layer; default: the first with FSLA.
        block: Block of the FSLA layer within the stage; default: the stage's first FSLA block.
        heads: Heads to draw; default all.
        patch: ``(row, col)`` of the selected patch in the layer's token map; default the centre.
        img_size: The image's shorter side for the model (both sides are then rounded to a multiple of the
            model's total stride); default the model's input size.
        panel_width: Width of each panel in pixels.
        seed: Seed of random weights.

    Returns:
        ``layer``, ``token_map``, ``num_groups``, ``group_size``, ``input_size``, ``heads``, ``patch``,
        ``figure_size`` and, with weights, ``prediction`` (class name, probability).
    """
    torch.manual_seed(seed)
    model, class_names, data_config = _load_model(model_name, checkpoint, pretrained_file, model_kwargs or {})
    layer = select_fsla_layer(model, stage, block)
    picture = load_image(image, sample)
    side = img_size or min(data_config["input_size"][1:])
    stride = model.feature_info[-1]["reduction"] if getattr(model, "feature_info", None) else 1
    input_size = _model_input_size((picture.height, picture.width), side, stride)
    resample = Image.Resampling[str(data_config.get("interpolation", "bicubic")).upper()]
    shown = np.asarray(picture.resize(input_size[::-1], resample))
    mean, std = (torch.tensor(data_config[k]).view(3, 1, 1) for k in ("mean", "std"))
    tensor = ((torch.from_numpy(shown.copy()).permute(2, 0, 1).float() / 255 - mean) / std)[None]
    if hasattr(model, "set_input_size"):
        model.set_input_size(img_size=input_size)  # timm's resize: e.g. Swin windows scale with the token grid

    record, logits = record_clusters(model, tensor, layer)
    heads = list(range(record.num_heads)) if heads is None else list(heads)
    patch = (record.token_map[0] // 2, record.token_map[1] // 2) if patch is None else tuple(patch)
    plan = record.clustering.plan
    title = (f"{model.pretrained_cfg.get('architecture', model_name)}  {layer}  tokens {record.token_map[0]}x"
             f"{record.token_map[1]}  {_plural(plan.num_groups, 'group')} of {plan.group_size}")
    summary = dict(layer=layer, token_map=record.token_map, num_groups=plan.num_groups, group_size=plan.group_size,
                   input_size=input_size, heads=heads, patch=patch)
    if class_names is None:
        title += "  (random weights)"
    else:
        probability, index = logits.softmax(dim=-1)[0].max(dim=0)
        summary["prediction"] = (class_names[int(index)], float(probability))
        title += f"  predicted {class_names[int(index)]} ({float(probability):.0%})"
    summary["figure_size"] = render_clusters(shown, record, heads, patch, output, title, panel_width)
    return summary


def _parse_heads(value: str) -> Optional[list[int]]:
    if value == "all":
        return None
    try:
        return [int(h) for h in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'all' or comma-separated head indices, got {value!r}") from None


def run_from_args(args: argparse.Namespace) -> int:
    summary = show_clusters(
        args.output, model_name=args.model, image=args.image, sample=args.sample, checkpoint=args.checkpoint,
        pretrained_file=args.pretrained_file, model_kwargs=args.model_kwargs, stage=args.stage, block=args.block,
        heads=args.head, patch=args.patch, img_size=args.img_size, panel_width=args.panel_width, seed=args.seed,
    )
    height, width = summary["token_map"]
    print(f"{summary['layer']}: {height}x{width} tokens (input {summary['input_size'][0]}x{summary['input_size'][1]}),"
          f" {_plural(summary['num_groups'], 'group')} of {summary['group_size']}; selected patch {summary['patch']}")
    if "prediction" in summary:
        print(f"predicted {summary['prediction'][0]} ({summary['prediction'][1]:.1%})")
    print(f"wrote {args.output} ({summary['figure_size'][0]}x{summary['figure_size'][1]} pixels)")
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("show-clusters", help="draw the FSLA groups of a model on an image",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("image", nargs="?", help="image file (any size); default: the --sample image")
    add("--sample", choices=SAMPLES, default=DEFAULT_SAMPLE,
        help="built-in image without IMAGE: scikit-learn's china or flower photograph, or a handwritten digit "
             f"(default {DEFAULT_SAMPLE})")
    add("--model", help="timm model name, e.g. boat_swin_tiny_patch4_window7_224 (not needed with --checkpoint)")
    add("--checkpoint", help="a boat-vit training checkpoint, e.g. the digits demo's best.pth")
    add("--pretrained-file", help="weights for --model through its checkpoint filter (e.g. released BOAT weights); "
                                  "without weights the model is random and still groups by content")
    add("--model-kwargs", type=json.loads, help='JSON keyword arguments for --model, e.g. \'{"embed_dim": 48}\'')
    add("--output", required=True, help="PNG file to write")
    add("--stage", type=int, help="stage of the FSLA layer (default: the first stage with FSLA)")
    add("--block", type=int, help="block of the FSLA layer in the stage (default: the stage's first FSLA block)")
    add("--head", type=_parse_heads, default=None, help="'all' (default) or comma-separated head indices")
    add("--patch", type=int, nargs=2, metavar=("ROW", "COL"),
        help="selected patch in the layer's token map (default: the centre)")
    add("--img-size", type=int, help="shorter side of the image for the model; both sides are rounded to a "
                                     "multiple of the model's stride (default: the model's input size)")
    add("--panel-width", type=int, default=DEFAULT_PANEL_WIDTH,
        help=f"pixels per panel (default {DEFAULT_PANEL_WIDTH})")
    add("--seed", type=int, default=0, help="seed of random weights (default 0)")
    parser.set_defaults(func=run_from_args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .cli import main as cli_main

    return cli_main(["show-clusters", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
