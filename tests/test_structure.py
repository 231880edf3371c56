"""The package's import rules: no circles, the command line on top, tasks side by side, the model library below.

The imports are read from the source (every ``import`` statement, module level or not), so a rule broken in
a function body counts too.
"""
import ast
import re
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "src" / "boat_vit"
PACKAGE = "boat_vit"
MODEL_LIBRARY = ("boat_vit.errors", "boat_vit.files", "boat_vit.weights", "boat_vit.clustering", "boat_vit.layers",
                 "boat_vit.models", "boat_vit.checkpoint")
TASKS = ("boat_vit.classification", "boat_vit.seg", "boat_vit.det")
ABOVE_THE_LIBRARY = ("boat_vit.engine", *TASKS, "boat_vit.bench", "boat_vit.visualize", "boat_vit.cli")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE_ROOT.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str:
    """The module ``name`` refers to: itself, or its nearest enclosing module of the package."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``module`` imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        found.update(_resolve(name, modules) for name in names if name.split(".")[0] == PACKAGE)
    found.discard(module)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {module: _imports(module, path, modules) for module, path in modules.items()}


def _within(module: str, prefixes) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def test_no_import_circles(graph):
    visiting, done, circles = [], set(), []

    def visit(module: str) -> None:
        visiting.append(module)
        for target in sorted(graph[module]):
            if target in visiting:
                circles.append(visiting[visiting.index(target):] + [target])
            elif target not in done:
                visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module)
    assert not circles, f"import circles: {circles}"


def test_the_command_line_is_imported_by_nothing(graph):
    users = sorted(m for m, targets in graph.items() if not _within(m, ["boat_vit.cli", "boat_vit.__main__"])
                   and any(_within(t, ["boat_vit.cli"]) for t in targets))
    assert not users, f"these import the command line: {users}"


def test_segmentation_does_not_lean_on_classification(graph):
    leaning = sorted(m for m, targets in graph.items() if _within(m, ["boat_vit.seg"])
                     and any(_within(t, ["boat_vit.classification"]) for t in targets))
    assert not leaning, f"segmentation modules importing classification: {leaning}"
    leaning = sorted(m for m, targets in graph.items() if _within(m, ["boat_vit.classification"])
                     and any(_within(t, ["boat_vit.seg"]) for t in targets))
    assert not leaning, f"classification modules importing segmentation: {leaning}"


def test_detection_does_not_lean_on_the_other_tasks(graph):
    leaning = sorted((m, t) for m, targets in graph.items() if _within(m, ["boat_vit.det"])
                     for t in targets if _within(t, ["boat_vit.classification", "boat_vit.seg"]))
    assert not leaning, f"detection modules importing another task: {leaning}"
    leaning = sorted((m, t) for m, targets in graph.items() if _within(m, ["boat_vit.classification", "boat_vit.seg"])
                     for t in targets if _within(t, ["boat_vit.det"]))
    assert not leaning, f"task modules importing detection: {leaning}"


def test_the_model_library_stands_below_the_tasks_and_tools(graph):
    upward = sorted((m, t) for m, targets in graph.items() if _within(m, MODEL_LIBRARY)
                    for t in targets if _within(t, ABOVE_THE_LIBRARY))
    assert not upward, f"the model library imports tasks or tools: {upward}"


def test_the_engine_knows_no_task(graph):
    upward = sorted((m, t) for m, targets in graph.items() if _within(m, ["boat_vit.engine"])
                    for t in targets if _within(t, [*TASKS, "boat_vit.bench", "boat_vit.visualize", "boat_vit.cli"]))
    assert not upward, f"the engine imports a task or tool: {upward}"


def test_the_reader_sees_relative_and_absolute_imports():
    modules = _modules()
    imports = _imports("boat_vit.cli", modules["boat_vit.cli"], modules)
    assert {"boat_vit.engine", "boat_vit.cli.classification", "boat_vit.cli.segmentation", "boat_vit.cli.tools"} <= imports


def _library_sources():
    """Every library module's source tree (the command line aside)."""
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        if "cli" not in path.relative_to(PACKAGE_ROOT).parts:
            yield path, ast.parse(path.read_text())


def test_no_module_imports_another_modules_private_names():
    private = [f"{path.relative_to(PACKAGE_ROOT)}:{node.lineno} {alias.name}"
               for path in sorted(PACKAGE_ROOT.rglob("*.py")) for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(PACKAGE))
               for alias in node.names if alias.name.startswith("_")]
    assert not private, f"private names imported across modules: {private}"


FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
MESSAGE_CALLS = ("warn", "warning", "error", "print")


def test_library_messages_name_arguments_not_command_line_flags():
    """The library speaks Python (``Argument("reset_head", True)``); only ``boat_vit.cli`` names flags."""
    offenders = []
    for path, tree in _library_sources():
        for node in ast.walk(tree):
            messages = [node.exc] if isinstance(node, ast.Raise) and node.exc is not None else []
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in MESSAGE_CALLS:
                messages.append(node)
            offenders += [f"{path.relative_to(PACKAGE_ROOT)}:{text.lineno} {text.value!r}"
                          for message in messages for text in ast.walk(message)
                          if isinstance(text, ast.Constant) and isinstance(text.value, str) and FLAG.search(text.value)]
    assert not offenders, f"library messages naming command-line flags: {offenders}"


TRAINING_STATE = ("optimizer", "scheduler", "scaler", "ema")  # restored with their own load_state_dict


def test_weights_enter_a_model_only_through_the_weights_module():
    """``model.load_state_dict`` is called in ``boat_vit/weights.py`` only (training state aside)."""
    calls = [f"{path.relative_to(PACKAGE_ROOT)}:{node.lineno}" for path, tree in _library_sources()
             if path.name != "weights.py" for node in ast.walk(tree)
             if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "load_state_dict"
             and not (isinstance(node.func.value, ast.Name) and node.func.value.id in TRAINING_STATE)]
    assert not calls, f"weights loaded outside boat_vit.weights: {calls}"


def test_the_training_loop_lives_in_the_engine_only():
    """Tasks define data, model, loss and metrics; backward passes and optimizer steps are the skeleton's."""
    loops = [f"{path.relative_to(PACKAGE_ROOT)}:{node.lineno}" for path, tree in _library_sources()
             if _within(_module_name(path), TASKS) for node in ast.walk(tree)
             if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("backward", "step_update")]
    assert not loops, f"training steps outside the engine's skeleton: {loops}"
