"""From an ablation's design to its runs: model arguments per contender, costs, paired initial weights, the
training configuration and the plan record that guards a run folder against other settings.

Runs are paired by seed: the same data order and, wherever the architectures allow, the same initial weights.
Every contender of a family starts from its FSLA-off baseline's seeded initial weights (``init/``), and its
FSLA layers from the same seeded initialisation, so the FSLA contenders differ only in how FSLA groups
tokens. A MAC-matched wider baseline cannot share weights (other shapes); it shares the seed.
"""
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..files import atomic_write
from ..classification import TrainConfig
from ..classification.tasks import TaskConfig, generate_split, parse_task
from ..engine import RUN_OPTIONS, seed_everything
from .cost import build_model, head_dim_scale, match_width, params_and_macs
from .design import BASELINES, CONTENDERS, FAMILY_MODELS, INPUT_SCALE, AblationConfig, AblationTask

__all__ = ["PLAN_FILE", "Run", "plan_runs", "train_config", "plan_record", "same_plan", "write_init",
           "write_examples"]

PLAN_FILE = "plan.json"
INIT_FOLDER = "init"
EXAMPLES_FOLDER = "examples"
NUM_EXAMPLES = 4  # held-out images written per task, for show-clusters


@dataclass(frozen=True)
class Run:
    """One training run; ``init_file`` (built from ``init_kwargs``) holds the baseline's initial weights."""

    task: AblationTask
    contender: str
    seed: int
    kwargs: dict
    folder: Path
    init_file: Optional[Path]
    init_kwargs: Optional[dict]

    @property
    def label(self) -> str:
        return f"{self.task.key}/{self.contender}/seed{self.seed}"


def model_kwargs(config: AblationConfig, task: TaskConfig, family: str) -> dict:
    """The family's configuration of ``config`` at the task's input size."""
    base = config.swin if family == "swin" else config.cswin
    return dict(base, img_size=task.canvas * INPUT_SCALE[family])


def contender_kwargs(config: AblationConfig, task: TaskConfig, name: str) -> dict:
    """Model keyword arguments of contender ``name`` on ``task`` (with its matched width or FSLA scale)."""
    contender = CONTENDERS[name]
    num_classes = len(task.classes)
    kwargs = dict(model_kwargs(config, task, contender.family), **contender.overrides)
    if contender.match_macs_of is not None:
        other = CONTENDERS[contender.match_macs_of]
        target = params_and_macs(other.family, dict(model_kwargs(config, task, other.family), **other.overrides),
                                 num_classes)[1]
        kwargs["embed_dim"] = match_width(contender.family, kwargs, num_classes, target)
    if contender.head_dim_fsla_scale:
        kwargs["fsla_qk_scale"] = head_dim_scale(kwargs)
    return kwargs


def plan_runs(config: AblationConfig) -> tuple[list[Run], dict]:
    """All runs and each contender's ``{embed_dim, params, macs}`` per task.

    Order: seed by seed across the tasks (all contenders of a task for one seed, then the next task), the
    secondary task after the others, so that a run stopped early has paired results for every contender.
    """
    output = Path(config.output)
    per_task, costs = {}, {}
    for task in config.tasks:
        runs = per_task[task.key] = []
        task_config = parse_task(task.spec)
        num_classes = len(task_config.classes)
        kwargs = {}
        for name in task.contenders:
            kwargs[name] = contender_kwargs(config, task_config, name)
            params, macs = params_and_macs(CONTENDERS[name].family, kwargs[name], num_classes)
            costs[task.key, name] = dict(embed_dim=kwargs[name]["embed_dim"], params=params, macs=macs)
        for seed in range(task.seeds):
            for name in task.contenders:
                contender = CONTENDERS[name]
                init, init_kwargs = None, None
                if contender.match_macs_of is None:  # same shapes as the baseline: share its initial weights
                    init = output / INIT_FOLDER / f"{task.key}-{contender.family}-seed{seed}.pth"
                    init_kwargs = dict(model_kwargs(config, task_config, contender.family),
                                       **CONTENDERS[BASELINES[contender.family]].overrides)
                folder = output / task.key / name / f"seed{seed}"
                runs.append(Run(task, name, seed, kwargs[name], folder, init, init_kwargs))
    ordered = []
    for group in ([t for t in config.tasks if t.key != config.secondary], [t for t in config.tasks if t.key == config.secondary]):
        for seed in range(max((t.seeds for t in group), default=0)):
            ordered += [run for task in group for run in per_task[task.key] if run.seed == seed]
    return ordered, costs


def train_config(config: AblationConfig, run: Run) -> TrainConfig:
    """The training run: the shared recipe, no augmentation, the run's seed and initial weights."""
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


def plan_record(training: TrainConfig, run: Run) -> dict:
    """What a run computes (its training settings without where and how it runs), as stored in ``plan.json``."""
    record = dataclasses.asdict(training)
    for key in RUN_OPTIONS:
        record.pop(key)
    return json.loads(json.dumps(dict(record, task=run.task.key, contender=run.contender)))


def _option_defaults() -> dict:
    """The training options' defaults, as a plan record stores them."""
    return json.loads(json.dumps({f.name: f.default for f in dataclasses.fields(TrainConfig)
                                  if f.default is not dataclasses.MISSING}))


def same_plan(stored: dict, record: dict) -> bool:
    """Whether a stored plan record and a new one describe the same run, wherever the ablation folder lies
    (initial weights are compared by file name: they always sit in the folder's ``init/``). An option added to
    the training options after the run was planned matches when it keeps its default (it changes nothing)."""
    def located(plan: dict) -> dict:
        weights = plan.get("pretrained_file")
        return dict(plan, pretrained_file=Path(weights).name if weights else weights)

    defaults = _option_defaults()
    added = {key for key in set(record) - set(stored) if key in defaults and record[key] == defaults[key]}
    return located(stored) == located({k: v for k, v in record.items() if k not in added})


def write_init(run: Run) -> None:
    """The baseline's seeded initial weights (written once per task, family and seed; a symbolic link in their
    place is replaced, never read or written through)."""
    if run.init_file is None or (run.init_file.exists() and not run.init_file.is_symlink()):
        return
    seed_everything(run.seed)
    model = build_model(CONTENDERS[run.contender].family, run.init_kwargs, len(parse_task(run.task.spec).classes))
    run.init_file.parent.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    atomic_write(run.init_file, lambda file: torch.save(state, file))


def write_examples(config: AblationConfig) -> None:
    """A few held-out images per task (``examples/TASK-INDEX-LABEL.png``), for ``boat-vit show-clusters``
    (written once; a symbolic link in a picture's place is replaced, never followed)."""
    from PIL import Image

    folder = Path(config.output) / EXAMPLES_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for task in config.tasks:
        task_config = parse_task(task.spec)
        held_out = generate_split(task_config, "val")
        for index in range(min(NUM_EXAMPLES, len(held_out.targets))):
            label = task_config.classes[held_out.targets[index]]
            path = folder / f"{task.key}-{index}-{label}.png"
            if path.is_symlink() or not path.exists():
                image = Image.fromarray(held_out.images[index])
                atomic_write(path, lambda file, image=image: image.save(file, format="PNG"))
