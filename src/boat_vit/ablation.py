"""Does FSLA help? A reproducible ablation on generated digit tasks (``boat-vit ablate``).

Contenders differ only in the attention, within a family (:data:`CONTENDERS`):

* ``swin``: the small Swin with FSLA off, the baseline of the Swin family;
* ``boat_swin``: BOAT-Swin, FSLA with content groups in the shifted-window blocks;
* ``swin_global``: global attention in place of each FSLA layer (same projections: the upper bound);
* ``boat_swin_random``: FSLA with random balanced groups (same layout and cost, no content);
* ``swin_wide``: FSLA off, embedding width raised until its MACs are closest to BOAT-Swin's;
* ``cswin`` / ``boat_cswin``: the small CSWin with FSLA off / on;
* investigations, run on request (``--contenders``): ``boat_swin_group16`` (FSLA groups of a window's size)
  and ``boat_cswin_scaled`` (FSLA logits scaled by ``head_dim ** -0.5`` instead of the released 1.0).

Each runs on each task (:mod:`boat_vit.classification.tasks`: ``digit-pairs``, where the two digits must be compared across
the image, and the control ``digit-clutter``) once per seed, all with the same training budget and recipe
(:class:`AblationConfig`). Runs are paired by seed: the same data order and, wherever the architectures
allow, the same initial weights: every contender of a family starts from its FSLA-off baseline's initial
weights (seeded), and its FSLA layers from the same seeded initialisation, so ``boat_swin``,
``swin_global`` and ``boat_swin_random`` differ only in how FSLA groups tokens. ``swin_wide`` cannot share
weights (other shapes); it shares the seed.

The output folder holds one training run per task, contender and seed (``TASK/CONTENDER/seedN/``, the
usual run directory of :func:`boat_vit.classification.train_classifier` plus ``plan.json``), the initial weights
(``init/``), example held-out images (``examples/``), and the report: ``results.csv`` (one row per run),
``results.md`` (the table: mean and standard deviation over seeds of the final held-out top-1, the mean
paired difference to the family's FSLA-off baseline with a t-based 95% confidence interval, training
time, training images/s, parameters and MACs), ``curves.png`` (held-out top-1 against epochs, mean and the
range over seeds) and ``cost.png`` (accuracy against MACs and against training time).

Resuming: run the same command again. Finished runs (``summary.json``) are read, not redone; an
interrupted run continues from its ``last.pth`` through the training API's ``resume`` (exactly, see
:mod:`boat_vit.engine`). A run folder whose ``plan.json`` differs from the requested settings is refused.
"""
import csv
import dataclasses
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from scipy import stats
import torch

from .bench import count_macs, environment, machine_line
from .checkpoint import atomic_write
from .classification import TrainConfig, train_classifier
from .classification.tasks import TaskConfig, generate_split, parse_task
from .engine import RUN_OPTIONS, seed_everything
from .models import create_model

__all__ = [
    "AblationConfig",
    "AblationTask",
    "Contender",
    "CONTENDERS",
    "DEFAULT_TASKS",
    "quick_config",
    "run_ablation",
    "summarize",
    "paired_differences",
    "t_confidence_interval",
    "write_report",
    "ablation_config",
]

SWIN_MODEL = "boat_swin_tiny_patch4_window7_224"
CSWIN_MODEL = "boat_cswin_tiny_224"
# The small configurations: the smallest that keep BOAT's placement with more than one FSLA group in stage 1
# and train a run of the default budget in about two minutes on one CPU thread. Swin at the canvas size,
# patch 2, window 4: maps 16x16, 8x8, 4x4 at 32x32; FSLA (group size 49) in the shifted blocks of stages 1
# (4 groups of 64) and 2 (64 tokens: one group, i.e. global attention, by BOAT's rule).
SWIN_SMALL = dict(patch_size=2, window_size=4, embed_dim=32, depths=(2, 2, 2), num_heads=(2, 4, 8))
# CSWin (stride-4 stem) at twice the canvas size has the same token maps; FSLA in block 0 of every stage.
CSWIN_SMALL = dict(embed_dim=32, depths=(2, 2, 2), num_heads=(2, 4, 8), split_size=(1, 2, 4))
SWIN_QUICK = dict(patch_size=2, window_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4))
CSWIN_QUICK = dict(embed_dim=16, depths=(2, 2), num_heads=(2, 4), split_size=(1, 2))
FAMILY_MODELS = {"swin": SWIN_MODEL, "cswin": CSWIN_MODEL}
INPUT_SCALE = {"swin": 1, "cswin": 2}  # model input side / canvas side
CONFIDENCE = 0.95
NUM_EXAMPLES = 4  # held-out images written per task, for show-clusters
PLAN_FILE = "plan.json"
SUMMARY_FILE = "summary.json"
RESULT_FIELDS = ("task", "contender", "family", "seed", "embed_dim", "params", "macs", "epochs", "final_top1",
                 "best_top1", "train_time_s", "images_per_s")


@dataclass(frozen=True)
class Contender:
    """One model of the ablation: a family's small configuration with ``overrides``.

    Attributes:
        family: ``'swin'`` or ``'cswin'``; the family's FSLA-off contender is the baseline.
        description: What differs from the baseline.
        overrides: Model keyword arguments on top of the family configuration.
        match_macs_of: Widen the embedding until the MACs are closest to this contender's (FSLA off only).
        head_dim_fsla_scale: Give FSLA the logit scale ``head_dim ** -0.5`` as a number (timm's
            ``create_model`` drops ``None`` keyword arguments, so ``fsla_qk_scale=None`` cannot say it).
    """

    family: str
    description: str
    overrides: dict = field(default_factory=dict)
    match_macs_of: Optional[str] = None
    head_dim_fsla_scale: bool = False


WINDOW_GROUP_SIZE = 16  # FSLA groups the size of a 4x4 window (BOAT: 49 = a 7x7 window)
WINDOW_GROUP_OVERLAP = 7  # BOAT's overlap share, 20 of 49, for groups of 16
CONTENDERS: dict[str, Contender] = {
    "swin": Contender("swin", "FSLA off (baseline)", dict(fsla_stages=False)),
    "boat_swin": Contender("swin", "BOAT: FSLA, content groups"),
    "swin_global": Contender("swin", "global attention in place of each FSLA layer", dict(fsla_grouping="global")),
    "boat_swin_random": Contender("swin", "FSLA with random balanced groups", dict(fsla_grouping="random")),
    "swin_wide": Contender("swin", "FSLA off, wider: MACs of BOAT-Swin", dict(fsla_stages=False), "boat_swin"),
    "cswin": Contender("cswin", "FSLA off (baseline)", dict(fsla=False)),
    "boat_cswin": Contender("cswin", "BOAT: FSLA, content groups"),
    # investigations, not in the default run (--contenders)
    "boat_swin_group16": Contender("swin", "BOAT, FSLA groups of 16 tokens (a window) instead of 49",
                                   dict(fsla_group_size=WINDOW_GROUP_SIZE, fsla_overlap=WINDOW_GROUP_OVERLAP)),
    "boat_cswin_scaled": Contender("cswin", "BOAT, FSLA logits scaled by head_dim^-0.5 (released: 1.0)",
                                   head_dim_fsla_scale=True),
}
BASELINES = {"swin": "swin", "cswin": "cswin"}  # family -> its FSLA-off contender
MAIN_CONTENDERS = ("swin", "boat_swin", "swin_global", "boat_swin_random", "swin_wide", "cswin", "boat_cswin")
CONTROL_CONTENDERS = ("swin", "boat_swin", "cswin", "boat_cswin")


@dataclass(frozen=True)
class AblationTask:
    """A task of the ablation: a folder name, a task spec, its contenders and its epochs."""

    key: str
    spec: str
    contenders: tuple[str, ...]
    epochs: int


DEFAULT_TASKS = (
    AblationTask("pairs", "digit-pairs", MAIN_CONTENDERS, 8),
    AblationTask("control", "digit-clutter", CONTROL_CONTENDERS, 5),
)


@dataclass
class AblationConfig:
    """Everything the ablation needs; the training recipe is shared by every run.

    Attributes:
        output: Folder of the ablation.
        seeds: Seeds ``0 .. seeds - 1`` per task and contender.
        tasks: The tasks with their contenders and epochs.
        swin: Small Swin configuration (model keyword arguments).
        cswin: Small CSWin configuration.
        batch_size, lr, weight_decay, warmup_epochs, min_lr, clip_grad: The recipe (AdamW, cosine schedule
            with linear warm-up per update, gradient clipping; no augmentation, no label smoothing, no drop
            path).
        threads: torch CPU threads (1: the machine may be shared).
        device: ``cpu`` or ``cuda``.
        verbose: Print a line per run.
    """

    output: str = "runs/ablation"
    seeds: int = 3
    tasks: tuple[AblationTask, ...] = DEFAULT_TASKS
    swin: dict = field(default_factory=lambda: dict(SWIN_SMALL))
    cswin: dict = field(default_factory=lambda: dict(CSWIN_SMALL))
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    min_lr: float = 1e-5
    clip_grad: float = 5.0
    threads: int = 1
    device: str = "cpu"
    verbose: bool = True


def quick_config(output: str = "runs/ablation-quick", **overrides: Any) -> AblationConfig:
    """A few-minute version: every contender on tiny splits and models, one epoch (tests use it)."""
    tasks = (
        AblationTask("pairs", "digit-pairs:train_size=128,heldout_size=64", MAIN_CONTENDERS, 1),
        AblationTask("control", "digit-clutter:train_size=128,heldout_size=64", CONTROL_CONTENDERS, 1),
    )
    values = dict(output=output, tasks=tasks, swin=dict(SWIN_QUICK), cswin=dict(CSWIN_QUICK), batch_size=32)
    values.update(overrides)
    return AblationConfig(**values)


# ---- planning ------------------------------------------------------------------------------------------


def _check(config: AblationConfig) -> None:
    if config.seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {config.seeds}")
    for task in config.tasks:
        parse_task(task.spec)
        unknown = [c for c in task.contenders if c not in CONTENDERS]
        if unknown:
            raise ValueError(f"unknown contenders {unknown}; choose from {list(CONTENDERS)}")
        if task.epochs < 1:
            raise ValueError(f"epochs must be >= 1 (task {task.key})")
    keys = [task.key for task in config.tasks]
    if len(set(keys)) != len(keys):
        raise ValueError(f"task keys must differ, got {keys}")


def _model_kwargs(config: AblationConfig, task: TaskConfig, family: str) -> dict:
    base = config.swin if family == "swin" else config.cswin
    side = task.canvas * INPUT_SCALE[family]
    return dict(base, img_size=side)


def _build(family: str, kwargs: dict, num_classes: int) -> torch.nn.Module:
    return create_model(FAMILY_MODELS[family], num_classes=num_classes, drop_path_rate=0.0, **kwargs)


def _cost(family: str, kwargs: dict, num_classes: int) -> tuple[int, int]:
    """Parameters and MACs of one forward pass of one image."""
    model = _build(family, kwargs, num_classes).eval()
    side = kwargs["img_size"]
    return sum(p.numel() for p in model.parameters()), count_macs(model, torch.zeros(1, 3, side, side))


def _width_step(num_heads: Sequence[int]) -> int:
    """Smallest embedding step keeping every stage's width (``embed * 2**i``) divisible by its heads."""
    step = 1
    for i, heads in enumerate(num_heads):
        need = heads // math.gcd(heads, 2**i)
        step = step * need // math.gcd(step, need)
    return step


def _head_dim_scale(kwargs: dict) -> float:
    """``head_dim ** -0.5`` of a configuration whose head dimension is the same in every stage."""
    head_dims = {kwargs["embed_dim"] * 2**i // heads for i, heads in enumerate(kwargs["num_heads"])}
    if len(head_dims) != 1:
        raise ValueError(f"head dimensions differ between stages ({sorted(head_dims)}): no single FSLA scale")
    return head_dims.pop() ** -0.5


def _match_width(family: str, kwargs: dict, num_classes: int, target_macs: int) -> int:
    """The embedding width whose MACs are closest to ``target_macs`` (searching upward from ``kwargs``)."""
    step = _width_step(kwargs["num_heads"])
    width = kwargs["embed_dim"]
    best = (abs(_cost(family, kwargs, num_classes)[1] - target_macs), width)
    while True:
        width += step
        macs = _cost(family, dict(kwargs, embed_dim=width), num_classes)[1]
        best = min(best, (abs(macs - target_macs), width))
        if macs >= target_macs:
            return best[1]


@dataclass(frozen=True)
class _Run:
    """One training run; ``init_file`` (built from ``init_kwargs``) holds the baseline's initial weights."""

    task: AblationTask
    contender: str
    seed: int
    kwargs: dict
    folder: Path
    init_file: Optional[Path]
    init_kwargs: Optional[dict]


def _plan(config: AblationConfig) -> tuple[list[_Run], dict]:
    """All runs (seed-major within a task, so partial results cover every contender) and their costs."""
    output = Path(config.output)
    runs, costs = [], {}
    for task in config.tasks:
        task_config = parse_task(task.spec)
        num_classes = len(task_config.classes)
        kwargs = {}
        for name in task.contenders:
            contender = CONTENDERS[name]
            args = dict(_model_kwargs(config, task_config, contender.family), **contender.overrides)
            if contender.match_macs_of is not None:
                other = CONTENDERS[contender.match_macs_of]
                target = _cost(other.family, dict(_model_kwargs(config, task_config, other.family),
                                                  **other.overrides), num_classes)[1]
                args["embed_dim"] = _match_width(contender.family, args, num_classes, target)
            if contender.head_dim_fsla_scale:
                args["fsla_qk_scale"] = _head_dim_scale(args)
            kwargs[name] = args
            params, macs = _cost(contender.family, args, num_classes)
            costs[task.key, name] = dict(embed_dim=args["embed_dim"], params=params, macs=macs)
        for seed in range(config.seeds):
            for name in task.contenders:
                contender = CONTENDERS[name]
                init, init_kwargs = None, None
                if contender.match_macs_of is None:  # same shapes as the baseline: share its initial weights
                    init = output / "init" / f"{task.key}-{contender.family}-seed{seed}.pth"
                    init_kwargs = dict(_model_kwargs(config, task_config, contender.family),
                                       **CONTENDERS[BASELINES[contender.family]].overrides)
                folder = output / task.key / name / f"seed{seed}"
                runs.append(_Run(task, name, seed, kwargs[name], folder, init, init_kwargs))
    return runs, costs


def _train_config(config: AblationConfig, run: _Run) -> TrainConfig:
    task_config = parse_task(run.task.spec)
    family = CONTENDERS[run.contender].family
    return TrainConfig(
        model=FAMILY_MODELS[family], data=run.task.spec, output=str(run.folder), model_kwargs=run.kwargs,
        img_size=task_config.canvas * INPUT_SCALE[family], epochs=run.task.epochs, batch_size=config.batch_size,
        lr=config.lr, weight_decay=config.weight_decay, warmup_epochs=config.warmup_epochs, min_lr=config.min_lr,
        clip_grad=config.clip_grad, label_smoothing=0.0, mixup=0.0, cutmix=0.0, auto_augment=None,
        color_jitter=None, hflip=0.0, scale=(1.0, 1.0), reprob=0.0, crop_pct=1.0, drop_path=0.0,
        device=config.device, seed=run.seed, workers=0, threads=config.threads, progress=False,
        pretrained_file=str(run.init_file) if run.init_file else None,
    )


def _plan_record(train_config: TrainConfig, run: _Run) -> dict:
    record = dataclasses.asdict(train_config)
    for key in RUN_OPTIONS:
        record.pop(key)
    return json.loads(json.dumps(dict(record, task=run.task.key, contender=run.contender)))


def _write_init(run: _Run) -> None:
    """The baseline's seeded initial weights (written once per task, family and seed)."""
    if run.init_file is None or run.init_file.exists():
        return
    seed_everything(run.seed)
    model = _build(CONTENDERS[run.contender].family, run.init_kwargs, len(parse_task(run.task.spec).classes))
    run.init_file.parent.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    atomic_write(run.init_file, lambda file: torch.save(state, file))


def _write_examples(config: AblationConfig) -> None:
    folder = Path(config.output) / "examples"
    folder.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    for task in config.tasks:
        task_config = parse_task(task.spec)
        held_out = generate_split(task_config, "val")
        for index in range(min(NUM_EXAMPLES, len(held_out.targets))):
            label = task_config.classes[held_out.targets[index]]
            path = folder / f"{task.key}-{index}-{label}.png"
            if not path.exists():
                Image.fromarray(held_out.images[index]).save(path)


# ---- running -------------------------------------------------------------------------------------------


def run_ablation(config: AblationConfig, report_only: bool = False) -> list[dict]:
    """Runs (or resumes) every run of ``config`` one after another, then writes the report.

    Args:
        config: The ablation.
        report_only: Only rebuild the report from the runs already finished.

    Returns:
        One result row per finished run (:data:`RESULT_FIELDS`).
    """
    _check(config)
    torch.set_num_threads(config.threads)
    output = Path(config.output)
    if output.exists() and not output.is_dir():
        raise ValueError(f"ablation output {output} is a file, not a folder")
    runs, costs = _plan(config)
    if report_only and not any((run.folder / SUMMARY_FILE).exists() for run in runs):
        raise ValueError(f"no finished runs of this ablation in {output} to report; run it first (without --report-only)")
    output.mkdir(parents=True, exist_ok=True)
    _write_examples(config)
    started = time.time()
    for number, run in enumerate(runs, 1):
        train_config = _train_config(config, run)
        record = _plan_record(train_config, run)
        plan_path = run.folder / PLAN_FILE
        if plan_path.exists() and json.loads(plan_path.read_text()) != record:
            raise ValueError(f"{run.folder} was run with other settings; use another --output or remove it")
        label = f"[{number}/{len(runs)}] {run.task.key}/{run.contender}/seed{run.seed}"
        if (run.folder / SUMMARY_FILE).exists() or report_only:
            continue
        run.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(plan_path, lambda f: f.write(json.dumps(record, indent=2)), mode="w")
        if (run.folder / "last.pth").exists():  # an interrupted run: continue it (its initial weights are in)
            train_config = dataclasses.replace(train_config, resume=str(run.folder), pretrained_file=None)
        _write_init(run)
        if config.verbose:
            state = "resuming" if train_config.resume else "training"
            print(f"{label}: {state} ({_elapsed(started)} elapsed)", flush=True)
        summary = train_classifier(train_config)
        if config.verbose:
            print(f"{label}: held-out top-1 {summary['final_top1']:.1f}% (best {summary['best_top1']:.1f}%)",
                  flush=True)
    rows = _collect(config, runs, costs)
    write_report(rows, config)
    return rows


def _elapsed(started: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(time.time() - started))


def _collect(config: AblationConfig, runs: Sequence[_Run], costs: dict) -> list[dict]:
    """Result rows of the finished runs; ``curve`` holds the held-out top-1 of every epoch."""
    rows = []
    for run in runs:
        if not (run.folder / SUMMARY_FILE).exists():
            continue
        summary = json.loads((run.folder / SUMMARY_FILE).read_text())
        with open(run.folder / "metrics.csv", newline="") as f:
            metrics = list(csv.DictReader(f))
        task_config = parse_task(run.task.spec)
        images_per_epoch = task_config.train_size // config.batch_size * config.batch_size
        rates = [float(m["images_per_s"]) for m in metrics]
        rows.append(dict(
            task=run.task.key, contender=run.contender, family=CONTENDERS[run.contender].family, seed=run.seed,
            **costs[run.task.key, run.contender], epochs=len(metrics), final_top1=float(summary["final_top1"]),
            best_top1=float(summary["best_top1"]), train_time_s=sum(images_per_epoch / r for r in rates),
            images_per_s=statistics.fmean(rates), curve=[float(m["top1"]) for m in metrics],
        ))
    return rows


# ---- statistics ----------------------------------------------------------------------------------------


def t_confidence_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Mean and the two-sided t-based confidence interval of the mean (NaN bounds for fewer than 2 values)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf((1 + confidence) / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def paired_differences(rows: Sequence[dict], task: str, contender: str, baseline: str) -> list[float]:
    """Per seed present in both: final top-1 of ``contender`` minus ``baseline`` on ``task``."""
    by_seed = {(r["contender"], r["seed"]): r["final_top1"] for r in rows if r["task"] == task}
    seeds = sorted(s for c, s in by_seed if c == contender and (baseline, s) in by_seed)
    return [by_seed[contender, s] - by_seed[baseline, s] for s in seeds]


def summarize(rows: Sequence[dict]) -> list[dict]:
    """One entry per task and contender: seeds, mean/std of final top-1, paired difference to the baseline."""
    out = []
    keys = list(dict.fromkeys((r["task"], r["contender"]) for r in rows))
    for task, name in keys:
        mine = [r for r in rows if r["task"] == task and r["contender"] == name]
        accuracies = [r["final_top1"] for r in mine]
        baseline = BASELINES[CONTENDERS[name].family]
        diffs = paired_differences(rows, task, name, baseline) if name != baseline else []
        mean_diff, low, high = t_confidence_interval(diffs) if diffs else (math.nan, math.nan, math.nan)
        description = CONTENDERS[name].description
        if CONTENDERS[name].match_macs_of is not None:
            description += f" (embed {mine[0]['embed_dim']})"
        out.append(dict(
            task=task, contender=name, description=description, baseline=baseline,
            seeds=len(mine), params=mine[0]["params"], macs=mine[0]["macs"],
            mean_top1=statistics.fmean(accuracies),
            std_top1=statistics.stdev(accuracies) if len(accuracies) > 1 else math.nan,
            diff=mean_diff, diff_low=low, diff_high=high, pairs=len(diffs),
            train_time_s=statistics.fmean(r["train_time_s"] for r in mine),
            images_per_s=statistics.fmean(r["images_per_s"] for r in mine),
        ))
    return out


# ---- report --------------------------------------------------------------------------------------------


def _fmt(value: float, digits: int = 1) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def markdown_table(summary: Sequence[dict]) -> str:
    """The results table (one row per task and contender)."""
    lines = [
        "| task | contender | what differs | params (M) | MMACs | train img/s | train time (s) | held-out top-1 "
        "(%, mean ± std) | Δ vs FSLA-off (points, mean [95% CI]) | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        if s["contender"] == s["baseline"]:
            diff = "baseline"
        else:
            diff = f"{s['diff']:+.1f} [{_fmt(s['diff_low'])}, {_fmt(s['diff_high'])}] (n={s['pairs']})"
        lines.append(
            f"| {s['task']} | {s['contender']} | {s['description']} | {s['params'] / 1e6:.3f} | {s['macs'] / 1e6:.1f} "
            f"| {s['images_per_s']:.0f} | {s['train_time_s']:.0f} | {s['mean_top1']:.1f} ± {_fmt(s['std_top1'])} "
            f"| {diff} | {s['seeds']} |"
        )
    return "\n".join(lines)


def _setup_text(config: AblationConfig) -> str:
    info = environment(config.device)  # run_ablation set the threads
    lines = [f"- Task `{t.key}`: `{parse_task(t.spec).spec()}` ({t.epochs} epochs; contenders "
             f"{', '.join(t.contenders)})" for t in config.tasks]
    lines += [
        f"- Recipe, the same for every run: AdamW lr {config.lr:g} (cosine to {config.min_lr:g}, "
        f"{config.warmup_epochs} warm-up epoch(s) stepped per update), weight decay {config.weight_decay:g}, "
        f"batch {config.batch_size}, gradient clipping {config.clip_grad:g}, no augmentation, no label "
        "smoothing, no drop path; held-out top-1 after the last epoch.",
        f"- Swin: `{json.dumps(config.swin)}` at the canvas size; CSWin: `{json.dumps(config.cswin)}` at twice "
        "the canvas size (its stem has stride 4).",
        f"- Seeds 0-{config.seeds - 1}; differences are paired by seed (same data order; same initial "
        "weights wherever the shapes allow); 95% CI of the mean difference from the t distribution.",
        f"- Machine: {machine_line(info)}, {info['cpu_count']} cores, torch {info['torch']}, {info['date']}. "
        "Training time and images/s are training epochs only (no evaluation) and depend on the machine's load.",
    ]
    return "\n".join(lines)


def _colour(name: str):
    """A fixed colour per contender, the same in every plot."""
    import matplotlib

    return matplotlib.colormaps["tab10"](list(CONTENDERS).index(name) % 10)


def write_report(rows: Sequence[dict], config: AblationConfig) -> dict[str, Path]:
    """Writes ``results.csv``, ``results.md``, ``curves.png`` and ``cost.png`` into the ablation folder."""
    output = Path(config.output)
    paths = dict(csv=output / "results.csv", markdown=output / "results.md", curves=output / "curves.png",
                 cost=output / "cost.png")
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    summary = summarize(rows)
    paths["markdown"].write_text(
        "# Does FSLA help?\n\n" + markdown_table(summary) + "\n\n" + _setup_text(config) + "\n")
    if rows:
        _plot_curves(rows, paths["curves"])
        _plot_cost(summary, paths["cost"])
    return paths


def _plot_curves(rows: Sequence[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for name in dict.fromkeys(r["contender"] for r in rows if r["task"] == task):
            curves = [r["curve"] for r in rows if r["task"] == task and r["contender"] == name]
            length = min(len(c) for c in curves)
            values = np.array([c[:length] for c in curves])
            epochs = np.arange(1, length + 1)
            colour = _colour(name)
            ax.plot(epochs, values.mean(axis=0), marker="o", markersize=3, color=colour, label=f"{name} (n={len(curves)})")
            ax.fill_between(epochs, values.min(axis=0), values.max(axis=0), color=colour, alpha=0.15)
        ax.set_title(f"{task}: held-out top-1 (mean, band: range over seeds)")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_cost(summary: Sequence[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(s["task"] for s in summary))
    costs = (("macs", 1e-6, "MMACs per image"), ("train_time_s", 1.0, "training time per run (s)"))
    fig, axes = plt.subplots(len(tasks), len(costs), figsize=(11, 4 * len(tasks)), squeeze=False)
    for row, task in enumerate(tasks):
        for col, (key, scale, label) in enumerate(costs):
            ax = axes[row][col]
            for s in (s for s in summary if s["task"] == task):
                std = 0.0 if math.isnan(s["std_top1"]) else s["std_top1"]
                ax.errorbar(s[key] * scale, s["mean_top1"], yerr=std, fmt="o", capsize=3, color=_colour(s["contender"]),
                            label=s["contender"])
            ax.set_title(f"{task}: held-out top-1 (mean ± std) vs cost")
            ax.set_xlabel(label)
            ax.set_ylabel("top-1 (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- options of ``boat-vit ablate`` -------------------------------------------------------------------


def ablation_config(
    quick: bool = False,
    output: Optional[str] = None,
    seeds: Optional[int] = None,
    tasks: Optional[Sequence[str]] = None,
    contenders: Optional[Sequence[str]] = None,
    epochs: Optional[int] = None,
    threads: Optional[int] = None,
    device: Optional[str] = None,
) -> AblationConfig:
    """The ablation for the options of ``boat-vit ablate`` (``None``: the default).

    Args:
        quick: Start from :func:`quick_config` instead of the full ablation.
        output: The ablation folder.
        seeds: Seeds ``0 .. seeds - 1``.
        tasks: Only these task keys (``pairs``, ``control``).
        contenders: These contenders on every selected task instead of its own list; their families'
            FSLA-off baselines come too (the paired differences need them).
        epochs: Training epochs of every task.
        threads: torch CPU threads.
        device: ``cpu`` or ``cuda``.

    Raises:
        ValueError: unknown tasks or contenders.
    """
    config = quick_config() if quick else AblationConfig()
    for key, value in dict(output=output, seeds=seeds, threads=threads, device=device).items():
        if value is not None:
            setattr(config, key, value)
    selected = config.tasks
    if tasks:
        unknown = sorted(set(tasks) - {t.key for t in selected})
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; choose from {[t.key for t in selected]}")
        selected = tuple(t for t in selected if t.key in tasks)
    if contenders:
        unknown = sorted(set(contenders) - set(CONTENDERS))
        if unknown:
            raise ValueError(f"unknown contenders {unknown}; choose from {list(CONTENDERS)}")
        chosen = [BASELINES[CONTENDERS[c].family] for c in contenders] + list(contenders)
        chosen = sorted(dict.fromkeys(chosen), key=lambda c: [BASELINES[CONTENDERS[c].family] != c, chosen.index(c)])
        selected = tuple(dataclasses.replace(t, contenders=tuple(chosen)) for t in selected)
    if epochs is not None:
        selected = tuple(dataclasses.replace(t, epochs=epochs) for t in selected)
    config.tasks = selected
    return config
