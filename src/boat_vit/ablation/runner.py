"""Running an ablation: the pilot that sets the budget, then every run, ``jobs`` at a time, resumable.

Each run is one :func:`boat_vit.classification.train_classifier` call in its own folder
(``TASK/CONTENDER/seedN/``, the usual run directory plus ``plan.json``). With ``jobs`` above 1 the runs train
in that many worker processes, each with ``threads`` torch threads; a run's result depends only on its own
settings (seeded data order, initial weights, single-threaded arithmetic), never on ``jobs`` or on which
run trains beside it.

Resuming: run the same command again. Finished runs (``summary.json``) are read, not redone; an interrupted
run continues from its ``last.pth`` (exactly, see :mod:`boat_vit.engine`). A run folder whose ``plan.json``
differs from the requested settings is refused.
"""
import csv
import dataclasses
import json
import multiprocessing
import statistics
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..errors import Argument, ConfigError, OutputError
from ..files import atomic_write
from ..classification import TrainConfig, train_classifier
from ..classification.tasks import parse_task
from ..engine.run_directory import LAST_CHECKPOINT, METRICS_FILE, SUMMARY_FILE
from .design import CONTENDERS, AblationConfig, AblationTask, Pilot, PilotResult
from .planning import PLAN_FILE, Run, plan_record, plan_runs, same_plan, train_config, write_examples, write_init
from .report import write_report
from .statistics import seeds_for_power

__all__ = ["PILOT_FILE", "PilotFailed", "pilot_passes", "run_pilot", "apply_pilot", "run_ablation",
           "collect"]

PILOT_FOLDER = "pilot"
PILOT_FILE = "pilot.json"


class PilotFailed(ValueError):
    """No budget of the pilot's ladder passed its rule: the main run does not start."""


def pilot_passes(top1: Sequence[float], threshold: float, required: int) -> bool:
    """The pilot's rule: at least ``required`` of the runs reach ``threshold`` final held-out top-1."""
    return sum(value >= threshold for value in top1) >= required


def _pilot_config(config: AblationConfig, epochs: int, contender: str) -> AblationConfig:
    pilot = config.pilot
    task = next(t for t in config.tasks if t.key == pilot.task)
    rung = AblationTask(task.key, task.spec, (contender,), epochs, pilot.seeds)
    output = Path(config.output) / PILOT_FOLDER / f"{epochs}ep"
    return dataclasses.replace(config, output=str(output), tasks=(rung,), pilot=None, secondary=None, analysis=None)


def _decided(top1: Sequence[float], pilot: Pilot) -> Optional[bool]:
    """The rule's outcome once the seeds still to run cannot change it (``None`` before)."""
    if pilot_passes(top1, pilot.threshold, pilot.required):
        return True
    learned = sum(value >= pilot.threshold for value in top1)
    if learned + pilot.seeds - len(top1) < pilot.required:
        return False
    return None


def _pilot_runs(config: AblationConfig, epochs: int, contender: str, report_only: bool) -> tuple[list[dict], bool]:
    """Trains ``contender``'s pilot seeds in order, ``jobs`` at a time, until the rule is decided; returns the
    finished runs' rows and whether every seed the rule needed was there."""
    rung_config = _pilot_config(config, epochs, contender)
    runs, _ = plan_runs(rung_config)
    rows: list[dict] = []
    for start in range(0, len(runs), config.jobs):
        if _decided([r["final_top1"] for r in rows], config.pilot) is not None:
            break
        batch = runs[start:start + config.jobs]
        if report_only and not all((run.folder / SUMMARY_FILE).exists() for run in batch):
            return rows, False
        _execute(rung_config, batch, report_only)
        rows += collect(rung_config, batch)
    return rows, True


def run_pilot(config: AblationConfig, report_only: bool = False) -> PilotResult:
    """Walks the pilot's ladder (resumable) until a rung passes; writes ``pilot.json`` into the ablation folder.

    At each rung the pilot contender's seeds train in order and stop as soon as the rule is decided; the
    secondary contender trains at the chosen rung only (where its result is used), likewise.

    Args:
        config: The ablation; ``config.pilot`` is the rule.
        report_only: Train nothing: read the rungs already finished.
    """
    pilot: Pilot = config.pilot
    rungs, chosen, secondary_learns, seeds, spread = [], None, False, None, None
    for epochs in pilot.ladder:
        if config.verbose and not report_only:
            print(f"pilot: {pilot.contender}, {epochs} epochs", flush=True)
        rows, complete = _pilot_runs(config, epochs, pilot.contender, report_only)
        if not complete:
            break
        top1 = {pilot.contender: [r["final_top1"] for r in rows]}
        curves = {f"{r['contender']}/seed{r['seed']}": r["curve"] for r in rows}
        passed = bool(_decided(top1[pilot.contender], pilot))
        rung = dict(epochs=epochs, passed=passed, top1=top1, curves=curves)
        rungs.append(rung)
        if not passed:
            continue
        if pilot.secondary:
            if config.verbose and not report_only:
                print(f"pilot: {pilot.secondary}, {epochs} epochs", flush=True)
            secondary_rows, complete = _pilot_runs(config, epochs, pilot.secondary, report_only)
            if not complete:
                break
            top1[pilot.secondary] = [r["final_top1"] for r in secondary_rows]
            curves.update({f"{r['contender']}/seed{r['seed']}": r["curve"] for r in secondary_rows})
            secondary_learns = bool(_decided(top1[pilot.secondary], pilot))
        chosen = epochs
        task = next(t for t in config.tasks if t.key == pilot.task)
        chance = 100.0 / len(parse_task(task.spec).classes)
        learned = [value for value in top1[pilot.contender] if value >= pilot.threshold]
        spread = (statistics.fmean(learned) - chance) / 2
        seeds = seeds_for_power(pilot.effect, spread, pilot.alpha, pilot.power) if pilot.effect else None
        break
    result = PilotResult(chosen, secondary_learns, tuple(rungs), seeds, spread)
    if rungs:
        document = dict(dataclasses.asdict(result), rule=dataclasses.asdict(pilot))
        atomic_write(Path(config.output) / PILOT_FILE, lambda f: f.write(json.dumps(document, indent=2)), mode="w")
    return result


def apply_pilot(config: AblationConfig, result: PilotResult) -> AblationConfig:
    """``config`` at the pilot's budget, with the seeds its power calculation asks for on the pilot's task, and
    its secondary task moved to the fallback if the secondary contender did not learn the pilot's task.

    Raises:
        PilotFailed: no rung passed.
    """
    pilot = config.pilot
    if result.epochs is None:
        tried = ", ".join(str(r["epochs"]) for r in result.rungs) or "none"
        raise PilotFailed(
            f"pilot: {pilot.contender} reached {pilot.threshold:g}% held-out top-1 on {pilot.task} in fewer than "
            f"{pilot.required} of {pilot.seeds} seeds at every budget tried (epochs: {tried}); the main run does not "
            f"start (see {Path(config.output) / PILOT_FILE})")
    tasks = []
    for task in config.tasks:
        task = dataclasses.replace(task, epochs=result.epochs)
        if task.key == pilot.task and result.seeds:
            task = dataclasses.replace(task, seeds=max(task.seeds, result.seeds))
        if task.key == config.secondary and not result.secondary_learns and pilot.fallback_spec:
            task = dataclasses.replace(task, spec=pilot.fallback_spec)
        tasks.append(task)
    return dataclasses.replace(config, tasks=tuple(tasks))


def run_ablation(config: AblationConfig, report_only: bool = False) -> tuple[list[dict], AblationConfig,
                                                                           Optional[PilotResult]]:
    """Runs (or resumes) the pilot, then every run of ``config``, then writes the report.

    Args:
        config: The ablation.
        report_only: Train nothing: rebuild the report from the runs already finished.

    Returns:
        One result row per finished run, the configuration that ran (at the pilot's budget) and the pilot.
    """
    config.check()
    output = Path(config.output)
    if output.exists() and not output.is_dir():
        raise OutputError(f"ablation output {output} is a file, not a folder")
    if report_only and not output.is_dir():
        raise ConfigError(f"no ablation in {output} to report; run it first (without ", Argument("report_only"), ")")
    torch.set_num_threads(config.threads)
    pilot = None
    if config.pilot is not None:
        output.mkdir(parents=True, exist_ok=True)
        pilot = run_pilot(config, report_only)
        try:
            config = apply_pilot(config, pilot)
        except PilotFailed:
            write_report([], config, {}, pilot)  # the pilot's rungs and the decision not to run
            raise
    runs, costs = plan_runs(config)
    if report_only and not any((run.folder / SUMMARY_FILE).exists() for run in runs):
        raise ConfigError(f"no finished runs of this ablation in {output} to report; run it first (without ",
                          Argument("report_only"), ")")
    output.mkdir(parents=True, exist_ok=True)
    write_examples(config)
    _execute(config, runs, report_only)
    rows = collect(config, runs, costs)
    write_report(rows, config, costs, pilot, planned=len(runs))
    return rows, config, pilot


def _prepare(config: AblationConfig, run: Run, report_only: bool) -> Optional[TrainConfig]:
    """Checks the run folder against the plan; the training to do (``None``: finished, or report only)."""
    training = train_config(config, run)
    record = plan_record(training, run)
    plan_path = run.folder / PLAN_FILE
    if plan_path.exists():
        try:
            stored = json.loads(plan_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(f"{plan_path} cannot be read as a run's plan ({error}); use another ",
                              Argument("output"), " or remove it") from None
        if not isinstance(stored, dict) or not same_plan(stored, record):
            raise ConfigError(f"{run.folder} was run with other settings; use another ", Argument("output"),
                              " or remove it")
    if (run.folder / SUMMARY_FILE).exists() or report_only:
        return None
    run.folder.mkdir(parents=True, exist_ok=True)
    atomic_write(plan_path, lambda f: f.write(json.dumps(record, indent=2)), mode="w")
    if (run.folder / LAST_CHECKPOINT).exists():  # an interrupted run: continue it (its initial weights are in)
        return dataclasses.replace(training, resume=str(run.folder), pretrained_file=None)
    write_init(run)
    return training


def _train(training: TrainConfig) -> dict:
    """One run (the worker processes' entry point)."""
    return train_classifier(training)


def _execute(config: AblationConfig, runs: Sequence[Run], report_only: bool = False) -> None:
    """Trains the unfinished runs of ``runs``, ``config.jobs`` at a time, in plan order."""
    todo = [(run, training) for run in runs if (training := _prepare(config, run, report_only)) is not None]
    started, total = time.time(), len(todo)

    def announce(number: int, run: Run, training: TrainConfig) -> None:
        if config.verbose:
            state = "resuming" if training.resume else "training"
            print(f"[{number}/{total}] {run.label}: {state} ({_elapsed(started)} elapsed)", flush=True)

    def report(run: Run, summary: dict) -> None:
        if config.verbose:
            print(f"{run.label}: held-out top-1 {summary['final_top1']:.1f}% (best {summary['best_top1']:.1f}%)",
                  flush=True)

    if config.jobs == 1:
        for number, (run, training) in enumerate(todo, 1):
            announce(number, run, training)
            report(run, _train(training))
        return
    context = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no state shared with the parent
    with ProcessPoolExecutor(max_workers=config.jobs, mp_context=context) as pool:
        pending, queue = {}, list(enumerate(todo, 1))
        try:
            while queue or pending:
                while queue and len(pending) < config.jobs:
                    number, (run, training) = queue.pop(0)
                    announce(number, run, training)
                    pending[pool.submit(_train, training)] = run
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    report(pending.pop(future), future.result())
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _elapsed(started: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(time.time() - started))


def collect(config: AblationConfig, runs: Sequence[Run], costs: Optional[dict] = None) -> list[dict]:
    """Result rows of the finished runs; ``curve`` holds the held-out top-1 of every epoch."""
    rows = []
    for run in runs:
        if not (run.folder / SUMMARY_FILE).exists():
            continue
        summary = json.loads((run.folder / SUMMARY_FILE).read_text())
        with open(run.folder / METRICS_FILE, newline="") as f:
            metrics = list(csv.DictReader(f))
        task_config = parse_task(run.task.spec)
        images_per_epoch = task_config.train_size // config.batch_size * config.batch_size
        rates = [float(m["images_per_s"]) for m in metrics]
        cost = (costs or {}).get((run.task.key, run.contender), {})
        rows.append(dict(
            task=run.task.key, contender=run.contender, family=CONTENDERS[run.contender].family, seed=run.seed,
            **cost, epochs=len(metrics), final_top1=float(summary["final_top1"]),
            best_top1=float(summary["best_top1"]), train_time_s=sum(images_per_epoch / r for r in rates),
            images_per_s=statistics.fmean(rates), curve=[float(m["top1"]) for m in metrics],
        ))
    return rows
