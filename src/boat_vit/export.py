"""Exports image models to ONNX, TorchScript or a ``torch.export`` program, reloads and checks them.

The library behind ``boat-vit export``; it works for BOAT models and any other timm image model.

Formats and what stays dynamic:

* ``torchscript`` (``torch.jit.script``, saved with ``ScriptModule.save``): the model's code is compiled,
  control flow included, so the saved module runs at any batch size and any image size the model accepts.
  Scripted FSLA gives exactly the eager results (its clustering sorts row-wise, in the same order).
* ``exported-program`` (``torch.export.export``, saved with ``torch.export.save`` as ``.pt2``) and ``onnx``
  (opset :data:`DEFAULT_OPSET`, from the same exported program, run with onnxruntime): traced graphs.
  The batch dimension is dynamic with ``dynamic_batch=True``; height and width are those of the example.
  They cannot be dynamic: FSLA's group layout (levels, group size, padding, sibling masks; see
  :func:`boat_vit.clustering.plan_groups`) and CSWin's stripe padding are Python decisions on the token
  count and the map size, so one traced graph holds for one image size.

Agreement with eager PyTorch (:func:`check_export` measures it): TorchScript is bit-identical, and so were the
exported programs we checked (small models, the clustering at 3136 tokens): they run PyTorch's kernels, and
their row-wise sort breaks only exact ties differently.
ONNX runs onnxruntime's kernels, which round float32 differently. FSLA's clustering is discrete: where that
rounding flips two nearly tied split scores at a split or overlap boundary, tokens change group and outputs
move by more than rounding (BOAT-Swin-T at 224, random images: up to about 1e-3 on logits; clustering alone at
3136 tokens: 0 to 2 of 12 sequences ordered differently). Small models and most images stay within
:data:`DEFAULT_TOLERANCE`; pass a larger ``tolerance`` to :func:`check_export` for full-size ONNX models.
"""
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

import torch
import torch.nn as nn

__all__ = [
    "DEFAULT_OPSET",
    "DEFAULT_TOLERANCE",
    "FORMATS",
    "MIN_OPSET",
    "ExportMismatchError",
    "check_export",
    "check_output",
    "export_model",
    "load_exported",
    "max_difference",
]

FORMATS = ("onnx", "torchscript", "exported-program")
DEFAULT_OPSET = 18
MIN_OPSET = 17  # the first with LayerNormalization
# largest absolute difference accepted between an export and eager PyTorch (float32 logits)
DEFAULT_TOLERANCE = 1e-4
# protobuf's limit on one ONNX file; larger models keep their weights in an external data file
ONNX_FILE_LIMIT_BYTES = 2**31 - 1
# an example batch of 1 would be specialised by torch.export (0/1 specialisation): trace a batch of 2
MIN_DYNAMIC_EXAMPLE_BATCH = 2
BATCH_DIM_NAME = "batch"
INPUT_NAME = "images"

Outputs = Union[torch.Tensor, Sequence[torch.Tensor]]
PathLike = Union[str, "os.PathLike[str]"]


class ExportMismatchError(RuntimeError):
    """An exported model's outputs differ from eager PyTorch by more than the tolerance."""


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _exported_program(model: nn.Module, example: torch.Tensor, dynamic_batch: bool) -> torch.export.ExportedProgram:
    dynamic_shapes = None
    if dynamic_batch:
        if example.shape[0] < MIN_DYNAMIC_EXAMPLE_BATCH:
            example = example.expand(MIN_DYNAMIC_EXAMPLE_BATCH, *example.shape[1:]).contiguous()
        dynamic_shapes = ({0: torch.export.Dim(BATCH_DIM_NAME)},)
    with torch.no_grad():
        return torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)


def export_model(
    model: nn.Module,
    fmt: str,
    path: PathLike,
    example: torch.Tensor,
    dynamic_batch: bool = False,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
) -> Path:
    """Exports an eval-mode model and writes it to ``path`` all at once (a failed export leaves nothing).

    Args:
        model: The model, in eval mode (``model.eval()``).
        fmt: One of :data:`FORMATS`.
        path: Output file (``.onnx``, ``.pt`` for TorchScript, ``.pt2`` for an exported program by convention).
        example: An input batch ``(B, C, H, W)``; traced formats are built for its image size.
        dynamic_batch: Traced formats accept any batch size (TorchScript always does).
        opset: ONNX opset (>= :data:`MIN_OPSET`).
        overwrite: Replace an existing ``path``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: Unknown format, a model in training mode, an opset below :data:`MIN_OPSET`, or an output
            that exists (without ``overwrite``) or has no folder (:func:`check_output`).
    """
    _check_format(fmt)
    if model.training:
        raise ValueError("export an eval-mode model: call model.eval() first")
    if fmt == "onnx" and opset < MIN_OPSET:
        raise ValueError(f"ONNX export needs opset >= {MIN_OPSET}, got {opset}")
    path = check_output(path, overwrite)
    # written in a private folder beside the output, then moved in (with ONNX's external weights file, if any)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as staging:
        _write(model, fmt, Path(staging) / path.name, example, dynamic_batch, opset)
        for written in Path(staging).iterdir():
            os.replace(written, path.parent / written.name)
    return path


def check_output(path: PathLike, overwrite: bool = False) -> Path:
    """``path`` as a :class:`~pathlib.Path` if an export may write it: its folder exists and, unless
    ``overwrite``, the file does not.

    Raises:
        ValueError: naming the output and what is wrong with it.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"output folder {path.parent} does not exist or is not a folder")
    if path.is_dir():
        raise ValueError(f"output {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise ValueError(f"output {path} exists; pass --overwrite to replace it")
    return path


def _write(model: nn.Module, fmt: str, path: Path, example: torch.Tensor, dynamic_batch: bool, opset: int) -> None:
    """Exports ``model`` to ``path`` in format ``fmt`` (see :func:`export_model`)."""
    if fmt == "torchscript":
        with warnings.catch_warnings():  # TorchScript is deprecated in PyTorch, and still how many deployments ship
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.script(model).save(str(path))
        return
    program = _exported_program(model, example, dynamic_batch)
    if fmt == "exported-program":
        torch.export.save(program, path)
        return
    weight_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    torch.onnx.export(
        program,
        f=path,
        opset_version=opset,
        dynamo=True,
        input_names=[INPUT_NAME],
        external_data=weight_bytes > ONNX_FILE_LIMIT_BYTES,
        verbose=False,
    )


def load_exported(path: PathLike, fmt: str, threads: Optional[int] = None) -> Callable[[torch.Tensor], Outputs]:
    """Loads an exported model as a callable from an input batch to the model's outputs (on CPU).

    ONNX runs in onnxruntime (CPU; ``threads`` intra-op threads, default onnxruntime's), the others in PyTorch.
    """
    _check_format(fmt)
    path = Path(path)
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location="cpu")
    if fmt == "exported-program":
        return torch.export.load(path).module()
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(images: torch.Tensor) -> Outputs:
        outputs = [torch.from_numpy(o) for o in session.run(None, {input_name: images.detach().cpu().numpy()})]
        return outputs[0] if len(outputs) == 1 else outputs

    return run


def _as_list(outputs: Outputs) -> List[torch.Tensor]:
    return [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)


def max_difference(expected: Outputs, actual: Outputs) -> float:
    """Largest absolute difference between two outputs (tensors or sequences of tensors of equal shapes).

    NaN if either output has a NaN: a NaN never matches.

    Raises:
        ExportMismatchError: The outputs differ in number or shape.
    """
    expected, actual = _as_list(expected), _as_list(actual)
    if len(expected) != len(actual):
        raise ExportMismatchError(f"expected {len(expected)} outputs, got {len(actual)}")
    differences = [0.0]
    for e, a in zip(expected, actual):
        if e.shape != a.shape:
            raise ExportMismatchError(f"output shape {tuple(a.shape)} != expected {tuple(e.shape)}")
        if e.numel():
            differences.append((e.detach().cpu().double() - a.detach().cpu().double()).abs().max().item())
    return math.nan if any(math.isnan(d) for d in differences) else max(differences)


def check_export(
    model: nn.Module,
    exported: Callable[[torch.Tensor], Outputs],
    inputs: Union[torch.Tensor, Sequence[torch.Tensor]],
    tolerance: float = DEFAULT_TOLERANCE,
) -> float:
    """Runs eager ``model`` and ``exported`` on every input batch and compares them.

    Returns:
        The largest absolute difference over all batches.

    Raises:
        ExportMismatchError: A difference is above ``tolerance`` (or is NaN), or shapes differ.
    """
    difference = 0.0
    with torch.no_grad():
        for images in _as_list(inputs):
            batch = max_difference(model(images), exported(images))
            if not batch <= tolerance:
                raise ExportMismatchError(
                    f"exported outputs differ from eager PyTorch by {batch:.3g} > tolerance {tolerance:g} "
                    f"(input {tuple(images.shape)})"
                )
            difference = max(difference, batch)
    return difference
