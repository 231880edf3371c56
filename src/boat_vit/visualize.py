"""Pictures of which patches attend to which through FSLA (``boat-vit show-clusters``).

The model runs once on one image, and the groups of the chosen FSLA layer are recorded as the layer used them
(:func:`boat_vit.layers.record_clusters`). The picture has one column per chosen head. Top: every patch
coloured by its FSLA group. Bottom: the groups of one selected patch: the members of its group (orange),
and the tokens of the sibling group that its group also uses as keys and values (the overlap, cyan); the
selected patch has a red frame. Members far from the selected patch are the point of feature-space
attention: window attention never reaches them.

The clustering is a function of the layer's queries, which are a function of the image, so a model with
random weights also groups patches by content (colour, texture); trained weights give semantic groups.
"""
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from .classification import create_classifier, load_classifier
from .errors import Argument, ConfigError
from .images import load_image, palette
from .layers import ClusterRecord, record_clusters, select_fsla_layer

__all__ = ["SAMPLES", "figure_size", "plural", "render_clusters", "sample_image", "show_clusters"]

SAMPLES = ("china", "flower", "digit")  # photographs shipped with scikit-learn; a handwritten digit
DEFAULT_SAMPLE = "china"
DEFAULT_PANEL_WIDTH = 320
MIN_PANEL_WIDTH = 200  # room for a panel's label
MIN_FIGURE_WIDTH = 720  # room for the header
LABEL_FONT_SIZE = 8
TITLE_FONT_SIZE = 9
LEGEND_FONT_SIZE = 8
HEADER_LINES = (1 / 3, 3 / 4)  # heights of the title and legend lines, as fractions of the header
CHARACTER_WIDTH = 0.6  # average width of a character of the figure font, in font sizes
POINTS_PER_INCH = 72
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
IMAGENET_CLASSES = 1000  # the head of a model built by name


def sample_image(sample: str = DEFAULT_SAMPLE) -> Image.Image:
    """A picture that ships with the dependencies: scikit-learn's ``china`` or ``flower`` photograph, or a
    handwritten ``digit`` of the embedded digits' validation split."""
    if sample == "digit":
        from .classification.data import DigitsDataset

        return DigitsDataset("val")[0][0]
    if sample not in SAMPLES:
        raise ValueError(f"unknown sample {sample!r}; choose from {SAMPLES}")
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image(f"{sample}.jpg"))


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


def _fitting_font_size(text: str, size: float, width: int) -> float:
    """``size``, or smaller where a line of ``text`` would be wider than ``width`` pixels."""
    text_width = len(text) * CHARACTER_WIDTH * size * DPI / POINTS_PER_INCH
    return size * min(1.0, width / text_width)


def plural(count: int, noun: str) -> str:
    """``1 group``, ``2 groups``."""
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
    for line, (text, size) in enumerate(((title, TITLE_FONT_SIZE),
                                         (LEGEND.format(patch=f"({patch[0]},{patch[1]})"), LEGEND_FONT_SIZE))):
        figure.text(0.5, 1 - HEADER_HEIGHT * HEADER_LINES[line] / fig_height, text, ha="center", va="center",
                    fontsize=_fitting_font_size(text, size, fig_width))
    pixels = image.astype(np.float32) / 255
    grey = np.repeat(pixels.mean(axis=2, keepdims=True), 3, axis=2) * DIM_FACTOR
    colours = palette(record.clustering.plan.num_groups) / 255
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
        panel(column, 0, coloured, f"head {head}: {plural(len(colours), 'group')}")

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
    model_name: Optional[str], checkpoint: Optional[str], weights: Optional[str], model_kwargs: dict
) -> tuple[torch.nn.Module, Optional[list[str]], dict]:
    """Model in eval mode, its class names (``None`` for random weights) and data config."""
    from timm.data import resolve_model_data_config

    if checkpoint is not None:
        if model_kwargs or weights:
            raise ConfigError(Argument("checkpoint"), " brings its own model; drop ", Argument("model_kwargs"), " and ",
                              Argument("pretrained_file"))
        model, class_names, data_config = load_classifier(checkpoint=checkpoint)
        if model_name is not None and model_name != model.pretrained_cfg.get("architecture", model_name):
            raise ConfigError(f"{checkpoint} holds {model.pretrained_cfg.get('architecture')}, not {model_name}")
        return model, class_names, data_config
    if model_name is None:
        raise ConfigError("give ", Argument("model_name"), " (and optionally ", Argument("pretrained_file"), "), or ",
                          Argument("checkpoint"))
    model, _ = create_classifier(model_name, IMAGENET_CLASSES, weights, **model_kwargs)
    data_config = resolve_model_data_config(model.eval())
    if "img_size" in model_kwargs:
        data_config["input_size"] = (3, *np.broadcast_to(model_kwargs["img_size"], 2).tolist())
    class_names = [str(i) for i in range(model.num_classes)] if weights else None
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
    picture = load_image(image) if image is not None else sample_image(sample)
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
             f"{record.token_map[1]}  {plural(plan.num_groups, 'group')} of {plan.group_size}")
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
