"""Hugging Face Hub folders: a classifier as timm loads it from ``hf-hub:ORG/NAME`` or ``local-dir:FOLDER``.

A hub folder holds the model's weights in its own layout (``model.safetensors``), ``config.json`` (the
architecture, the arguments that rebuild it, input size, mean/std and the other data settings, class names) and
a model card (``README.md``: architecture, paper, licence, parameters, GMACs, input size, mean/std, the source
file, and the accuracy where a training run measured one). timm's own helpers write them
(``timm.models.save_for_hf`` and the model-card writer of its hub module); the folder is filled under a
temporary name and renamed into place when complete (:func:`~boat_vit.files.atomic_folder`).

After ``import boat_vit`` (which registers the architectures), ``timm.create_model("local-dir:FOLDER",
pretrained=True)`` loads the model; uploaded (``hf upload ORG/NAME FOLDER``),
``timm.create_model("hf-hub:ORG/NAME", pretrained=True)`` does.
"""
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
from timm.data import resolve_model_data_config
from timm.models import save_for_hf
from timm.models._hub import generate_readme

from .bench import count_macs
from .classification import classifier_from_run
from .engine import RunCheckpoint
from .files import PathLike, atomic_folder, check_output_folder, write_text
from .models import BOAT_CITATION, BOAT_PAPER_CFG, create_model, weights_filter
from .weights import load_whole_model

__all__ = ["hub_folder_from_run", "hub_folder_from_weights", "write_hub_folder"]

CARD_FILE = "README.md"  # the Hub shows a repository's README.md as its model card
UNKNOWN_LICENSE = "other"  # the Hub's licence tag where none is known
MILLION, BILLION = 1e6, 1e9
SMALL_FIGURE = 0.01  # parameters (M) and GMACs below it are shown with significant digits
ARXIV_ABSTRACTS = "https://arxiv.org/abs/"


def _figure(value: float) -> str:
    """Two decimals, or two significant digits for a value below 0.01 (a small test model)."""
    return f"{value:.2f}" if value >= SMALL_FIGURE else f"{value:.2g}"


def _papers(cfg: dict) -> dict[str, str]:
    """The paper of a pretrained config, as the model card lists it (title -> link)."""
    paper_ids = [p.strip() for p in str(cfg.get("paper_ids") or "").split(",") if p.strip()]
    links = [ARXIV_ABSTRACTS + p.removeprefix("arXiv:") if p.startswith("arXiv:") else p for p in paper_ids]
    return {cfg.get("paper_name") or "Paper": ", ".join(links)} if links else {}


def _usage(architecture: str, repository: str) -> str:
    return (
        "```python\n"
        "import timm\n"
        "import boat_vit  # pip install boat-vit: registers the architecture with timm\n\n"
        f'model = timm.create_model("hf-hub:{repository}", pretrained=True).eval()  # {architecture}\n'
        "data_config = timm.data.resolve_model_data_config(model)\n"
        "transform = timm.data.create_transform(**data_config, is_training=False)\n"
        "```"
    )


def write_hub_folder(
    model: nn.Module,
    folder: PathLike,
    source: str,
    *,
    data_config: Optional[dict[str, Any]] = None,
    label_names: Optional[list[str]] = None,
    accuracy: Optional[str] = None,
    license: Optional[str] = None,
    overwrite: bool = False,
) -> Path:
    """Writes ``model`` (a timm classifier, on the CPU) as a hub folder with its model card.

    Args:
        model: The model, with its weights; its ``pretrained_cfg`` and the arguments it was created with (timm
            records them) go into ``config.json``.
        folder: The folder to write.
        source: Where the weights came from, for the card (e.g. the file and entry).
        data_config: Input size, interpolation, mean, std, crop settings (default: the model's pretrained config).
        label_names: Class names, in classifier order.
        accuracy: What a training run measured, for the card.
        license: The weights' licence tag (default: the pretrained config's).
        overwrite: Replace an existing ``folder``.

    Raises:
        OutputExistsError: ``folder`` exists (a link counts) and ``overwrite`` is false.
        OutputError: ``folder``'s parent is missing or not writable, or a file is in its place.
        OSError: the folder cannot be written (a full disk).
    """
    folder = check_output_folder(folder, overwrite, argument="folder")  # before the work
    model = model.eval()
    cfg = dict(model.pretrained_cfg)
    data = resolve_model_data_config(model, args=data_config)
    input_size = tuple(data["input_size"])
    with torch.no_grad():
        macs = count_macs(model, torch.zeros(1, *input_size))
    architecture = cfg.get("architecture") or type(model).__name__
    stats = {"Params (M)": _figure(sum(p.numel() for p in model.parameters()) / MILLION),
             "GMACs": _figure(macs / BILLION), "Image size": f"{input_size[1]} x {input_size[2]}"}
    details: dict[str, Any] = {"Model Type": "Image classification / feature backbone", "Architecture": architecture,
                               "Model Stats": stats}
    details.update({"Papers": _papers(cfg)} if _papers(cfg) else {})
    details.update({"Original": cfg["origin_url"]} if cfg.get("origin_url") else {})
    details["Preprocessing"] = {"mean": tuple(data["mean"]), "std": tuple(data["std"]),
                                "interpolation": data["interpolation"], "crop_pct": data["crop_pct"]}
    details["Weights"] = source
    if accuracy:
        details["Accuracy"] = accuracy
    card = dict(license=license or cfg.get("license") or UNKNOWN_LICENSE, details=details,
                description=f"A {architecture} image classifier ({model.num_classes} classes) for timm.",
                usage=_usage(architecture, f"ORG/{folder.name}"))
    if cfg.get("paper_ids") == BOAT_PAPER_CFG["paper_ids"]:
        card["citation"] = BOAT_CITATION

    def fill(new: Path) -> None:
        model_config = dict(pretrained_cfg=dict(notes=(f"Weights: {source}.",)))  # not the source config's notes
        if label_names:
            model_config["label_names"] = label_names
        save_for_hf(model, str(new), model_config=model_config, safe_serialization=True, data_config=data_config)
        write_text(new / CARD_FILE, generate_readme(card, folder.name))

    return atomic_folder(folder, fill)


def hub_folder_from_weights(
    src: PathLike,
    folder: PathLike,
    model_name: str,
    model_kwargs: Optional[dict[str, Any]] = None,
    *,
    key: Optional[str] = None,
    overwrite: bool = False,
) -> Path:
    """A hub folder of ``model_name`` with the weights of ``src`` (released BOAT weights as downloaded, or any
    file :func:`~boat_vit.weights.load_weights` reads), which must fit the model exactly
    (:func:`~boat_vit.weights.load_whole_model`, as ``boat-vit convert`` to a safetensors file).

    Args:
        src: The weights file.
        folder: The folder to write.
        model_name: The timm model the weights are for.
        model_kwargs: Its keyword arguments (e.g. another ``num_classes`` or size); recorded in ``config.json``.
        key: The entry of ``src`` holding the weights (default: EMA weights first).
        overwrite: Replace an existing ``folder``.

    Raises:
        OutputExistsError: ``folder`` exists (a link counts) and ``overwrite`` is false.
        OutputError: ``folder``'s parent is missing or not writable, or a file is in its place.
        WeightsMismatchError: the file does not fit the model exactly.
    """
    folder = check_output_folder(folder, overwrite, argument="folder")  # before the work
    model = create_model(model_name, **(model_kwargs or {}))
    used_key = load_whole_model(model, src, weights_filter(model), key=key)
    entry = f" (entry {used_key!r})" if used_key else ""
    return write_hub_folder(model, folder, f"{Path(src).name}{entry}", overwrite=overwrite)


def hub_folder_from_run(checkpoint: PathLike, folder: PathLike, *, use_ema: bool = False,
                        overwrite: bool = False) -> Path:
    """A hub folder of the classifier of a training run's checkpoint (``best.pth`` / ``last.pth``): the model
    rebuilt with every argument it was trained with, its class names, data settings and measured accuracy.

    Args:
        checkpoint: The run checkpoint (a run directory means its ``last.pth``).
        folder: The folder to write.
        use_ema: The run's EMA weights (and the EMA's accuracy).
        overwrite: Replace an existing ``folder``.

    Raises:
        OutputExistsError: ``folder`` exists (a link counts) and ``overwrite`` is false.
        OutputError: ``folder``'s parent is missing or not writable, or a file is in its place.
        CheckpointError: not a classification run checkpoint (or no EMA weights with ``use_ema``).
    """
    folder = check_output_folder(folder, overwrite, argument="folder")  # before the work
    run = RunCheckpoint.read(checkpoint, task="classification")
    model, class_names, data_config = classifier_from_run(run, use_ema)
    rows = run.state.get("metrics") or []
    accuracy = None
    if rows:  # the checkpoint's weights were evaluated in its last row
        prefix = "ema_" if use_ema else ""
        row, epochs = rows[-1], run.config.get("epochs")
        if row.get(f"{prefix}top1") is not None:
            accuracy = (f"top-1 {row[f'{prefix}top1']:.2f}%, top-5 {row[f'{prefix}top5']:.2f}% on the validation "
                        f"split of {run.config.get('data')} (epoch {row['epoch'] + 1} of {epochs})")
    source = f"{run.path.name} of the training run {run.path.parent.name}{' (EMA weights)' if use_ema else ''}"
    return write_hub_folder(model.cpu(), folder, source, data_config=data_config, label_names=class_names,
                            accuracy=accuracy, overwrite=overwrite)
