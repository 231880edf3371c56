"""Exports image models to ONNX, TorchScript or a ``torch.export`` program, each checked against eager PyTorch
before it is published.

The library behind ``boat-vit export``; it works for BOAT models and any other timm image model.

:func:`export_model` runs six steps, timing each (``on_step`` receives one line per step):

1. eager: the model's own outputs on the check inputs (a model that cannot run them fails here, in one line), and
   those of a float64 copy of it, the measure of its sensitivity to rounding;
2. trace: ``torch.export.export`` (TorchScript: ``torch.jit.script``);
3. convert, ONNX only: PyTorch's exporter turns the exported program into ONNX (opset :data:`DEFAULT_OPSET`).
   Its pattern-rewriting optimiser is left out: on the thousands of small nodes of FSLA's clustering it took
   minutes, most of an export's time. Constants are folded and dead nodes removed instead
   (:func:`_simplify_onnx`); onnxruntime applies its own graph optimisations when it loads the file;
4. save: into a private staging folder beside the output;
5. reload: from the staged file, as a user would (:func:`load_exported`);
6. check: the reloaded export against the eager outputs (:func:`check_export`).

Only then are the files moved into place; a failure or an interrupt at any step leaves nothing behind, and an
existing output is replaced only with ``overwrite``. An export killed outright leaves its staging folder; the
next export into that folder removes it (a live export holds a lock on its own).

Formats and what stays dynamic:

* ``torchscript`` (``torch.jit.script``, saved with ``ScriptModule.save``): the model's code is compiled,
  control flow included, so the saved module runs at any batch size and any image size the model accepts.
  Scripted FSLA gives exactly the eager results (its clustering sorts row-wise, in the same order).
* ``exported-program`` (``torch.export``, saved with ``torch.export.save`` as ``.pt2``) and ``onnx`` (from the
  same exported program, run with onnxruntime): traced graphs. The batch dimension is dynamic with
  ``dynamic_batch=True``; height and width are those of the example. They cannot be dynamic: FSLA's group
  layout (levels, group size, padding, sibling masks; :func:`boat_vit.clustering.plan_groups`) and CSWin's
  stripe padding are Python decisions on the token count and the map size, so one graph holds one image size.

Agreement with eager PyTorch (:class:`Agreement`, judged by :func:`judge_agreement`). TorchScript runs the model's
own code and agrees exactly. Exported programs (torch.export's decomposition) and onnxruntime round float32
differently in the last bits, and FSLA's clustering is discrete: it sorts split scores, and where two scores tie
(the identical tokens of a flat image region tie exactly) the other rounding can put a token in the other group;
that image's outputs then move by more than rounding (1e-4 to 3e-2 on the logits of the six models). Eager
PyTorch does the same against itself: run in float64, the model moves the same kind of images by as much
(``docs/check_exports.md``). Making the runtimes agree is not possible: any rounding of the scores inside the
graph has boundaries of its own, where the same flip happens, and it would change the released models' grouping.

So the check measures the model's own sensitivity to rounding first: the eager model in float64 against float32
on the check images (:func:`float64_outputs`). The images float64 leaves within ``tolerance`` are free of near
ties; on them the export must agree to float rounding (the median such image within ``tolerance``; the median of
all images where float64 moves every one). Every image must agree within ``near_tie_tolerance`` or within
:data:`NEAR_TIE_SPREAD` times the largest move float64 makes, whichever is larger. A wrong weight or a wrong
operation moves the images free of near ties too, and fails.
"""
import copy
import io
import math
import os
import shutil
import statistics
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from .errors import Argument, ConfigError, ExportMismatchError, OutputExistsError, first_line
from .files import check_output

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; staging folders of killed exports stay until removed by hand
    fcntl = None

__all__ = [
    "DEFAULT_NEAR_TIE_TOLERANCE",
    "DEFAULT_OPSET",
    "DEFAULT_TOLERANCE",
    "FORMATS",
    "MAX_OPSET",
    "MIN_OPSET",
    "NEAR_TIE_SPREAD",
    "ONNX_PACKAGES",
    "Agreement",
    "ExportMismatchError",
    "ExportResult",
    "check_export",
    "check_opset",
    "compare_outputs",
    "export_model",
    "float64_outputs",
    "judge_agreement",
    "load_exported",
    "max_difference",
    "remove_stale_staging",
    "require_format",
]

FORMATS = ("onnx", "torchscript", "exported-program")
DEFAULT_OPSET = 18
# PyTorch's exporter writes opset 18 and converts to others: below 18 it cannot (the file stays 18); from 23 on
# scaled_dot_product_attention becomes ONNX Attention, which onnxruntime 1.32 fails to run with FSLA's masks
MIN_OPSET = 18
MAX_OPSET = 22
# What ONNX export needs besides PyTorch (`pip install boat-vit[export]`): the exporter's packages, the runtime
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
# largest difference between an export and eager PyTorch that counts as float rounding (float32 outputs)
DEFAULT_TOLERANCE = 1e-4
# largest difference accepted on any image, at least: where tied clustering scores put tokens in other groups
DEFAULT_NEAR_TIE_TOLERANCE = 1e-2
# an image may move this many times as far as float64 moves any check image (eager float64 against float32): the
# size of a flipped near tie varies widely (an export's largest was 2.3 times float64's on BOAT-Swin-S)
NEAR_TIE_SPREAD = 10
TOP_K = 5
# protobuf's limit on one ONNX file; larger models keep their weights in an external data file
ONNX_FILE_LIMIT_BYTES = 2**31 - 1
# an example batch of 1 would be specialised by torch.export (0/1 specialisation): trace a batch of 2
MIN_DYNAMIC_EXAMPLE_BATCH = 2
BATCH_DIM_NAME = "batch"
INPUT_NAME = "images"
STAGING_SUFFIX = ".export-staging"  # hidden staging folders: .OUTPUT.RANDOM.export-staging

Outputs = Union[torch.Tensor, Sequence[torch.Tensor]]
PathLike = Union[str, "os.PathLike[str]"]
Inputs = Union[torch.Tensor, Sequence[torch.Tensor], Mapping[str, torch.Tensor]]


# ---- formats and their packages ------------------------------------------------------------------------


def require_format(fmt: str) -> None:
    """Raises :class:`~boat_vit.errors.ConfigError` for an unknown format or one whose packages are not installed."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        import importlib.util

        missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
        if missing:
            raise ConfigError(f"ONNX export needs {', '.join(ONNX_PACKAGES)}; missing: {', '.join(missing)} "
                             "(pip install 'boat-vit[export]')")


def check_opset(opset: int) -> None:
    """Raises :class:`~boat_vit.errors.ConfigError` unless ``MIN_OPSET <= opset <= MAX_OPSET``."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"ONNX opset must be between {MIN_OPSET} and {MAX_OPSET}, got {opset}")


# ---- comparing an export with eager PyTorch --------------------------------------------------------------


def _as_list(outputs: Outputs) -> List[torch.Tensor]:
    return [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)


def _check_shapes(expected: List[torch.Tensor], actual: List[torch.Tensor]) -> None:
    if len(expected) != len(actual):
        raise ExportMismatchError(f"expected {len(expected)} outputs, got {len(actual)}")
    for e, a in zip(expected, actual):
        if e.shape != a.shape:
            raise ExportMismatchError(f"output shape {tuple(a.shape)} != expected {tuple(e.shape)}")


def max_difference(expected: Outputs, actual: Outputs) -> float:
    """Largest absolute difference between two outputs (tensors or sequences of tensors of equal shapes).

    NaN if either output has a NaN: a NaN never matches.

    Raises:
        ExportMismatchError: The outputs differ in number or shape.
    """
    expected, actual = _as_list(expected), _as_list(actual)
    _check_shapes(expected, actual)
    differences = [0.0]
    for e, a in zip(expected, actual):
        if e.numel():
            differences.append((e.detach().cpu().double() - a.detach().cpu().double()).abs().max().item())
    return math.nan if any(math.isnan(d) for d in differences) else max(differences)


@dataclass(frozen=True)
class Agreement:
    """How an export's outputs compare with eager PyTorch's on a batch of check images.

    Attributes:
        differences: Per image, the largest ``|exported - eager|`` over its outputs (NaN where either has one).
        top1: Images whose top-1 class is the same (outputs of shape ``(batch, classes)``; else ``None``).
        top5: Images whose set of top-5 classes is the same (``None`` as ``top1``, or with fewer classes).
        rounding: Per image, the largest ``|eager float64 - eager float32|``: how far rounding alone moves it
            (``None`` where not measured).
    """

    differences: tuple
    top1: Optional[int] = None
    top5: Optional[int] = None
    rounding: Optional[tuple] = None

    @property
    def images(self) -> int:
        return len(self.differences)

    @property
    def largest(self) -> float:
        return math.nan if any(math.isnan(d) for d in self.differences) else max(self.differences, default=0.0)

    @property
    def median(self) -> float:
        return _median(self.differences)

    def within(self, tolerance: float) -> int:
        """Images whose largest difference is at most ``tolerance``."""
        return sum(d <= tolerance for d in self.differences)

    def free_of_near_ties(self, tolerance: float) -> tuple:
        """Differences of the images that float64 moves by at most ``tolerance`` (all images if not measured)."""
        if self.rounding is None:
            return self.differences
        return tuple(d for d, r in zip(self.differences, self.rounding) if r <= tolerance)

    def near_tie_limit(self, near_tie_tolerance: float) -> float:
        """The largest difference accepted on any image: ``near_tie_tolerance``, or :data:`NEAR_TIE_SPREAD` times
        the largest move of float64, whichever is larger."""
        return max([near_tie_tolerance] + [NEAR_TIE_SPREAD * r for r in self.rounding or ()])

    def summary(self, tolerance: float) -> str:
        """One line: images within ``tolerance``, median and largest difference, top-1 and top-5 agreement, and how
        many images float64 moves beyond ``tolerance``."""
        text = (f"{self.within(tolerance)}/{self.images} images within {tolerance:g}, |exported - eager| median "
                f"{self.median:.2e}, max {self.largest:.2e}")
        for name, count in (("top-1", self.top1), ("top-5", self.top5)):
            if count is not None:
                text += f", {name} {count}/{self.images}"
        if self.rounding is not None:
            free = self.free_of_near_ties(tolerance)
            text += (f"; float64 moves {self.images - len(free)}/{self.images} beyond {tolerance:g} (max "
                     f"{max(self.rounding, default=0.0):.2e})")
            if free:
                text += f", the other {len(free)} differ by median {_median(free):.2e}"
        return text


def _median(values: Sequence[float]) -> float:
    if any(math.isnan(v) for v in values):
        return math.nan
    return statistics.median(values) if values else 0.0


def _per_image(expected: List[torch.Tensor], actual: List[torch.Tensor], batch: int) -> List[float]:
    """Per image, the largest absolute difference over all outputs (NaN kept)."""
    per_image = torch.zeros(batch, dtype=torch.float64)
    for e, a in zip(expected, actual):
        if e.numel():
            difference = (e.detach().cpu().double() - a.detach().cpu().double()).abs().reshape(batch, -1)
            per_image = torch.maximum(per_image, difference.amax(dim=1))  # maximum keeps NaN
    return per_image.tolist()


def compare_outputs(expected: Outputs, actual: Outputs, exact: Optional[Outputs] = None) -> Agreement:
    """Per-image differences and top-1/top-5 agreement of two outputs whose first dimension is the batch.

    Args:
        expected: The eager model's outputs.
        actual: The export's outputs.
        exact: The eager model's outputs in float64 (:func:`float64_outputs`), for :attr:`Agreement.rounding`.

    Raises:
        ExportMismatchError: The outputs differ in number or shape.
    """
    expected, actual = _as_list(expected), _as_list(actual)
    _check_shapes(expected, actual)
    batch = expected[0].shape[0] if expected and expected[0].ndim else 1
    rounding = None
    if exact is not None:
        exact = _as_list(exact)
        _check_shapes(expected, exact)
        rounding = tuple(_per_image(exact, expected, batch))
    top1 = top5 = None
    logits = expected[0] if len(expected) == 1 and expected[0].ndim == 2 else None
    if logits is not None and logits.shape[1] > 0:
        exported = actual[0]
        top1 = int((logits.argmax(-1) == exported.argmax(-1)).sum())
        if logits.shape[1] >= TOP_K:
            top5 = int((logits.topk(TOP_K).indices.sort().values == exported.topk(TOP_K).indices.sort().values)
                       .all(dim=1).sum())
    return Agreement(tuple(_per_image(expected, actual, batch)), top1, top5, rounding)


def judge_agreement(
    agreement: Agreement,
    tolerance: float = DEFAULT_TOLERANCE,
    near_tie_tolerance: float = DEFAULT_NEAR_TIE_TOLERANCE,
) -> None:
    """Accepts an export's agreement the way FSLA's discrete grouping allows (module docstring).

    No value may be NaN; the median image free of near ties (float64 moves it by at most ``tolerance``) must agree
    within ``tolerance``, and every image within :meth:`Agreement.near_tie_limit`. Where float64 was not measured,
    or moves every image beyond ``tolerance``, the median is taken over all images.

    Raises:
        ExportMismatchError: naming the rule that failed, with the agreement's summary.
    """
    free = agreement.free_of_near_ties(tolerance)
    judged = free or agreement.differences
    limit = agreement.near_tie_limit(near_tie_tolerance)
    if math.isnan(agreement.largest):
        problem = "NaN outputs"
    elif _median(judged) > tolerance:
        if agreement.rounding is None or len(free) == agreement.images:
            problem = f"the median image differs by {_median(judged):.3g} > tolerance {tolerance:g}"
        elif free:
            problem = (f"the median image free of near ties ({len(free)} of {agreement.images}) differs by "
                       f"{_median(judged):.3g} > tolerance {tolerance:g}")
        else:
            problem = (f"the median image differs by {_median(judged):.3g} > tolerance {tolerance:g}, and float64 "
                       f"moves every image beyond it: no check image is free of near ties")
    elif agreement.largest > limit:
        problem = f"an image differs by {agreement.largest:.3g} > near-tie limit {limit:.3g}"
    else:
        return
    raise ExportMismatchError(f"the exported model disagrees with eager PyTorch: {problem} "
                              f"({agreement.summary(tolerance)})")


def float64_outputs(model: nn.Module, inputs: Inputs) -> Dict[str, Outputs]:
    """The outputs of a float64 copy of ``model`` on each named batch of ``inputs`` (the model is left as it is).

    Raises:
        ConfigError: The model does not run in float64.
    """
    exact = copy.deepcopy(model).double()
    try:
        with torch.no_grad():
            return {name: exact(images.double()) for name, images in _named_inputs(inputs).items()}
    except Exception as error:  # what the model raises for float64 inputs
        raise ConfigError(f"the model does not run in float64: {first_line(error)}") from error


def _named_inputs(inputs: Inputs) -> Dict[str, torch.Tensor]:
    if isinstance(inputs, Mapping):
        return dict(inputs)
    return {f"batch {i}": batch for i, batch in enumerate(_as_list(inputs))}


def _run_exported(exported: Callable[[torch.Tensor], Outputs], images: torch.Tensor) -> Outputs:
    try:
        return exported(images)
    except Exception as error:  # whatever the runtime raises: the export does not take the check input
        raise ExportMismatchError(f"the exported model fails on input {tuple(images.shape)}: "
                                  f"{first_line(error)}") from error


def _pooled(agreements: Sequence[Agreement]) -> Agreement:
    """One agreement over the images of several batches."""
    def total(counts: List[Optional[int]]) -> Optional[int]:
        return None if any(c is None for c in counts) else sum(counts)

    rounding = [a.rounding for a in agreements]
    return Agreement(sum((a.differences for a in agreements), ()), total([a.top1 for a in agreements]),
                     total([a.top5 for a in agreements]),
                     None if any(r is None for r in rounding) else sum(rounding, ()))


def check_export(
    expected: Union[nn.Module, Mapping[str, Outputs]],
    exported: Callable[[torch.Tensor], Outputs],
    inputs: Inputs,
    tolerance: float = DEFAULT_TOLERANCE,
    near_tie_tolerance: float = DEFAULT_NEAR_TIE_TOLERANCE,
    exact: Optional[Mapping[str, Outputs]] = None,
) -> Agreement:
    """Runs ``exported`` on every input batch and judges it against eager PyTorch over all their images
    (:func:`judge_agreement`).

    Args:
        expected: The eager model, or its outputs already computed for each batch of ``inputs`` (by name).
        exported: The reloaded export (:func:`load_exported`).
        inputs: A batch, a sequence of batches or named batches ``{name: batch}``.
        tolerance: See :func:`judge_agreement`.
        near_tie_tolerance: See :func:`judge_agreement`.
        exact: The eager model's float64 outputs for each batch (:func:`float64_outputs`); computed here when
            ``expected`` is the model and it runs in float64, else the check goes without them.

    Returns:
        The agreement over all images of all batches.

    Raises:
        ExportMismatchError: The images fail the judgement, the export fails on a batch, or shapes differ.
    """
    named = _named_inputs(inputs)
    if not named:
        raise ConfigError("no check inputs: give at least one batch")
    if exact is None and isinstance(expected, nn.Module):
        exact = _float64_if_possible(expected, named)
    agreements = []
    with torch.no_grad():
        for name, images in named.items():
            reference = expected(images) if isinstance(expected, nn.Module) else expected[name]
            agreements.append(compare_outputs(reference, _run_exported(exported, images),
                                              None if exact is None else exact[name]))
    agreement = _pooled(agreements)
    judge_agreement(agreement, tolerance, near_tie_tolerance)
    return agreement


def _float64_if_possible(model: nn.Module, inputs: Dict[str, torch.Tensor]) -> Optional[Dict[str, Outputs]]:
    try:
        return float64_outputs(model, inputs)
    except ConfigError:
        return None


# ---- writing -------------------------------------------------------------------------------------------


def _lock(folder: Path) -> Optional[int]:
    """An open descriptor holding an exclusive lock on ``folder``, or ``None`` if another process holds it."""
    try:
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:  # gone, a link, or not a folder
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        return None
    return descriptor


def remove_stale_staging(folder: Path) -> List[Path]:
    """Removes the staging folders of killed exports in ``folder`` (their lock is free); returns them."""
    if fcntl is None:
        return []
    removed = []
    for candidate in sorted(folder.glob(f".*{STAGING_SUFFIX}")):
        descriptor = _lock(candidate)
        if descriptor is not None:
            try:
                shutil.rmtree(candidate, ignore_errors=True)
                removed.append(candidate)
            finally:
                os.close(descriptor)
    return removed


@contextmanager
def _staging_folder(output: Path) -> Iterator[Path]:
    """A new private folder beside ``output``, locked while in use and removed afterwards with its contents."""
    remove_stale_staging(output.parent)
    while True:
        folder = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.", suffix=STAGING_SUFFIX))
        if fcntl is None:
            descriptor = None
            break
        descriptor = _lock(folder)
        # another export's clean-up may have taken the folder between its creation and the lock: start again
        if descriptor is not None and os.path.samestat(os.fstat(descriptor), os.lstat(folder)):
            break
        if descriptor is not None:
            os.close(descriptor)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if descriptor is not None:
            os.close(descriptor)


@contextmanager
def _errors_naming(path: Path) -> Iterator[None]:
    """An operating-system error (a full disk) names ``path``, never a file of the staging folder."""
    try:
        yield
    except OSError as error:
        if error.errno is None:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from None


def _publish(staged: Path, path: Path, overwrite: bool) -> None:
    """Moves the files of ``staged`` beside ``path`` (the main file last), flushed to disk first.

    Raises:
        OutputExistsError: One of them exists and ``overwrite`` is false; nothing is moved.
    """
    files = sorted(staged.iterdir(), key=lambda file: file.name == path.name)
    targets = [path.parent / file.name for file in files]
    if not overwrite:
        for target in targets:
            if os.path.lexists(target):
                raise OutputExistsError(str(target), " exists; pass ", Argument("overwrite", True), " to replace it")
    for file, target in zip(files, targets):
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(file, target)  # replaces a link at target, never what it points to


# ---- the formats ---------------------------------------------------------------------------------------


_TRACERS = {"torchscript": "torch.jit.script", "exported-program": "torch.export", "onnx": "torch.export"}


def _failing_as_value_error(what: str, run: Callable[[], Any]) -> Any:
    """``run()``; a failure (a model the tracer or converter cannot handle) as a one-line ``ConfigError``."""
    try:
        return run()
    except Exception as error:  # tracers and converters raise many kinds; all mean "this model cannot go this way"
        raise ConfigError(f"{what}: {first_line(error)}") from error


def _trace(model: nn.Module, fmt: str, example: torch.Tensor, dynamic_batch: bool):
    if fmt == "torchscript":
        with warnings.catch_warnings():  # TorchScript is deprecated in PyTorch, and still how many deployments ship
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.script(model)
    dynamic_shapes = None
    if dynamic_batch:
        if example.shape[0] < MIN_DYNAMIC_EXAMPLE_BATCH:
            example = example.expand(MIN_DYNAMIC_EXAMPLE_BATCH, *example.shape[1:]).contiguous()
        dynamic_shapes = ({0: torch.export.Dim(BATCH_DIM_NAME)},)
    with torch.no_grad():
        return torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)


def _simplify_onnx(model) -> None:
    """Folds constants, removes unused nodes and duplicate initialisers of an ``onnx_ir`` model, in place.

    The cheap part of the exporter's optimiser; its pattern rewriter is left out (module docstring).
    """
    import onnx_ir
    import onnx_ir.passes.common as passes
    import onnxscript.optimizer

    onnxscript.optimizer.fold_constants(model)
    onnx_ir.passes.Sequential(
        passes.RemoveUnusedNodesPass(),
        passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        passes.DeduplicateInitializersPass(),
        passes.CommonSubexpressionEliminationPass(),
        passes.RemoveUnusedNodesPass(),
    )(model)


def _convert_onnx(program: torch.export.ExportedProgram, opset: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter warns about every op it translates by decomposition
        onnx_program = torch.onnx.export(program, f=None, opset_version=opset, dynamo=True, optimize=False,
                                         input_names=[INPUT_NAME], verbose=False)
    _simplify_onnx(onnx_program.model)
    return onnx_program


def _save(artifact, fmt: str, path: Path) -> None:
    """Writes ``artifact`` to ``path``. TorchScript and exported programs are serialised in memory first: PyTorch's
    archive writer ends the process (``std::terminate``) when a write to a file fails (a full disk); Python's
    write raises an ``OSError`` instead."""
    if fmt == "onnx":
        weight_bytes = sum(t.const_value.nbytes for t in artifact.model.graph.initializers.values()
                           if t.const_value is not None)
        artifact.save(path, external_data=weight_bytes > ONNX_FILE_LIMIT_BYTES)
        return
    buffer = io.BytesIO()
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(artifact, buffer)
    else:
        torch.export.save(artifact, buffer)
    with open(path, "xb") as file:  # a new file in the private staging folder
        file.write(buffer.getbuffer())


def load_exported(path: PathLike, fmt: str, threads: Optional[int] = None) -> Callable[[torch.Tensor], Outputs]:
    """Loads an exported model as a callable from an input batch to the model's outputs (on CPU).

    ONNX runs in onnxruntime (CPU; ``threads`` intra-op threads, default onnxruntime's), the others in PyTorch.
    """
    require_format(fmt)
    path = Path(path)
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location="cpu")
    if fmt == "exported-program":
        return torch.export.load(path).module()
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = ONNXRUNTIME_ERRORS_ONLY
    if threads is not None:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(images: torch.Tensor) -> Outputs:
        outputs = [torch.from_numpy(o) for o in session.run(None, {input_name: images.detach().cpu().numpy()})]
        return outputs[0] if len(outputs) == 1 else outputs

    return run


ONNXRUNTIME_ERRORS_ONLY = 3  # onnxruntime's log severity: 0 verbose ... 3 error


# ---- the whole export ----------------------------------------------------------------------------------


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and measured.

    Attributes:
        path: The published file.
        agreement: Over all images of the check inputs.
        seconds: Time of each step, in order (``eager``, ``trace``, ``convert`` for ONNX, ``save``, ``reload``,
            ``check``).
    """

    path: Path
    agreement: Agreement
    seconds: Dict[str, float] = field(default_factory=dict)


class _Steps:
    """Times the steps of an export and reports each as it ends."""

    def __init__(self, on_step: Optional[Callable[[str], None]]):
        self.on_step, self.seconds = on_step, {}

    @contextmanager
    def __call__(self, name: str, detail: Callable[[], str] = lambda: "") -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start
        if self.on_step is not None:
            extra = detail()
            self.on_step(f"{name}: {self.seconds[name]:.1f} s" + (f"; {extra}" if extra else ""))


def export_model(
    model: nn.Module,
    fmt: str,
    path: PathLike,
    example: torch.Tensor,
    check_inputs: Optional[Inputs] = None,
    dynamic_batch: bool = False,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    near_tie_tolerance: float = DEFAULT_NEAR_TIE_TOLERANCE,
    on_step: Optional[Callable[[str], None]] = None,
) -> ExportResult:
    """Exports an eval-mode model, reloads and checks the export, and only then writes it to ``path``.

    Steps and guarantees are in the module docstring: nothing is left behind by a failure or an interrupt, and
    an existing ``path`` is replaced only with ``overwrite`` (a link there is replaced, never followed).

    Args:
        model: The model, in eval mode (``model.eval()``).
        fmt: One of :data:`FORMATS`.
        path: Output file (``.onnx``, ``.pt`` for TorchScript, ``.pt2`` for an exported program by convention).
        example: An input batch ``(B, C, H, W)``; traced formats are built for its image size.
        check_inputs: Batches the export is checked on (:func:`check_export`); default ``example``.
        dynamic_batch: Traced formats accept any batch size (TorchScript always does).
        opset: ONNX opset, from :data:`MIN_OPSET` to :data:`MAX_OPSET`.
        overwrite: Replace an existing ``path``.
        tolerance: See :func:`judge_agreement`.
        near_tie_tolerance: See :func:`judge_agreement`.
        on_step: Receives a line with the name and time of each step as it ends.

    Returns:
        The published path, the agreement on each batch of check inputs, the time of each step.

    Raises:
        ConfigError: Unknown or unavailable format, a model in training mode, an opset out of range, a model
            that fails on the check inputs or that torch.export, TorchScript or the ONNX exporter cannot handle.
        OutputError: The output folder is missing or not writable, or ``path`` is a folder.
        OutputExistsError: ``path`` exists and ``overwrite`` is false.
        ExportMismatchError: The reloaded export fails the check; nothing is written.
    """
    require_format(fmt)
    if model.training:
        raise ConfigError("export an eval-mode model: call model.eval() first")
    if fmt == "onnx":
        check_opset(opset)
    path = check_output(path, overwrite, argument="path")
    inputs = _named_inputs(example if check_inputs is None else check_inputs)
    if not inputs:
        raise ConfigError("no check inputs: give at least one batch")
    step = _Steps(on_step)
    exact: Optional[Dict[str, Outputs]] = None
    with step("eager", lambda: "and in float64" if exact else "float32 only: the model does not run in float64"):
        with torch.no_grad():
            try:
                expected = {name: model(images) for name, images in inputs.items()}
            except Exception as error:  # what the model raises for an input it cannot take
                sizes = ", ".join(sorted({f"{images.shape[-2]}x{images.shape[-1]}" for images in inputs.values()}))
                shapes = ", ".join(str(tuple(images.shape)) for images in inputs.values())
                raise ConfigError(f"the model does not run on {sizes} images (check inputs {shapes}): "
                                  f"{first_line(error)}") from error
        exact = _float64_if_possible(model, inputs)
    with _staging_folder(path) as staging:
        staged = staging / path.name
        with step("trace"):
            artifact = _failing_as_value_error(f"{_TRACERS[fmt]} cannot compile the model",
                                               lambda: _trace(model, fmt, example, dynamic_batch))
        if fmt == "onnx":
            with step("convert"):
                artifact = _failing_as_value_error(f"the ONNX exporter (opset {opset}) cannot convert the model",
                                                   lambda: _convert_onnx(artifact, opset))
        with step("save", lambda: f"{sum(f.stat().st_size for f in staging.iterdir()) / 2**20:.1f} MiB"):
            with _errors_naming(path):
                _save(artifact, fmt, staged)
        del artifact
        with step("reload"):
            exported = load_exported(staged, fmt, threads=torch.get_num_threads())
        agreements: List[Agreement] = []
        with step("check", lambda: agreements[0].summary(tolerance)):
            agreements.append(check_export(expected, exported, inputs, tolerance, near_tie_tolerance, exact))
        with _errors_naming(path):
            _publish(staging, path, overwrite)
    return ExportResult(path, agreements[0], step.seconds)
