"""What the ablation compares: contenders, tasks, designs (the long-range design and the first one) and the pilot.

Two designs, each reproducible by one command (:data:`DESIGNS`):

``long-range`` (the default)
    A small Swin with no global stage at the task's size: canvas 32, patch 2, window 4, two stages of
    16x16 and 8x8 tokens with depths 2 and 1 (regular then shifted windows in stage 1, regular windows in
    stage 2). Its final tokens see at most 24 of the 32 pixels along each axis
    (:mod:`boat_vit.ablation.receptive_field` measures it), so two 8-pixel digits at opposite edges of
    the canvas (task ``far``) never meet in one token: without a longer path the pool-then-linear head
    cannot compare them. Task ``near`` puts both digits in one 16-pixel stage-2 window: the positive
    control. FSLA sits in stage 1's shifted block in the paper's sparse regime: 256 tokens in 16 groups
    of 16 plus 7 overlap tokens, so a query sees 23 tokens (9% of the map; BOAT-Swin-T's stage 1: 2%, its
    stage 2: 9%). A two-stage Swin with depths 2 and 2 would not do: stage 2's shifted windows over
    regular ones span its whole 8x8 map, so its central tokens see the whole canvas.
    Contenders (identical but for the attention in the FSLA slot, paired initial weights): FSLA off;
    BOAT (content groups); random balanced groups; groups ranked by query norm ("ink vs background");
    global attention. Secondary: BOAT-CSWin with the released FSLA logit scale 1.0 against
    ``head_dim ** -0.5`` against CSWin.
``first``
    The project's first ablation (canvas 32 with 16-pixel digits, a three-stage Swin whose last stage is
    global attention, FSLA in groups of 49 that are dense at this size, 3 seeds), kept reproducible.

The pilot (:class:`Pilot`) decides the long-range design's training budget before the main run.
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..classification.tasks import parse_task

__all__ = [
    "AblationConfig",
    "AblationTask",
    "AnalysisPlan",
    "Comparison",
    "BASELINES",
    "CONTENDERS",
    "Contender",
    "DEFAULT_DESIGN",
    "DESIGNS",
    "ESCAPE_TOP1",
    "FAMILY_MODELS",
    "INPUT_SCALE",
    "Pilot",
    "PilotResult",
    "design_config",
    "narrow",
    "quick_config",
]

SWIN_MODEL = "boat_swin_tiny_patch4_window7_224"
CSWIN_MODEL = "boat_cswin_tiny_224"
FAMILY_MODELS = {"swin": SWIN_MODEL, "cswin": CSWIN_MODEL}
INPUT_SCALE = {"swin": 1, "cswin": 2}  # model input side / canvas side (CSWin's stem has stride 4)
ESCAPE_TOP1 = 75.0  # a run "learns" a two-class task when its final held-out top-1 reaches this (chance: 50)


@dataclass(frozen=True)
class Contender:
    """One model of the ablation: a family's configuration with ``overrides``.

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
    "boat_swin_random": Contender("swin", "FSLA with random balanced groups", dict(fsla_grouping="random")),
    "boat_swin_norm": Contender("swin", "FSLA with groups ranked by query norm (ink vs background)",
                                dict(fsla_grouping="norm")),
    "swin_global": Contender("swin", "global attention in place of each FSLA layer", dict(fsla_grouping="global")),
    "swin_wide": Contender("swin", "FSLA off, wider: MACs of BOAT-Swin", dict(fsla_stages=False), "boat_swin"),
    "boat_swin_group16": Contender("swin", "BOAT, FSLA groups of 16 tokens (a window) instead of 49",
                                   dict(fsla_group_size=WINDOW_GROUP_SIZE, fsla_overlap=WINDOW_GROUP_OVERLAP)),
    "cswin": Contender("cswin", "FSLA off (baseline)", dict(fsla=False)),
    "boat_cswin": Contender("cswin", "BOAT: FSLA, content groups, released logit scale 1.0"),
    "boat_cswin_scaled": Contender("cswin", "BOAT, FSLA logits scaled by head_dim^-0.5 (released: 1.0)",
                                   head_dim_fsla_scale=True),
}
BASELINES = {"swin": "swin", "cswin": "cswin"}  # family -> its FSLA-off contender


@dataclass(frozen=True)
class AblationTask:
    """A task of the ablation: a folder name, a task spec, its contenders, epochs and seeds ``0 .. seeds - 1``."""

    key: str
    spec: str
    contenders: tuple[str, ...]
    epochs: int
    seeds: int


@dataclass(frozen=True)
class Pilot:
    """The rule that sets the training budget before the main run.

    At each rung of ``ladder`` (epochs, the same for every contender and task), ``contender`` trains on
    task ``task`` with seeds ``0 .. seeds - 1``; the first rung where at least ``required`` of them reach
    ``threshold`` held-out top-1 is the budget (seeds train in order and stop once the rule is decided). No
    rung passing means no main run. ``secondary`` then trains at the chosen rung: if at least ``required``
    of its seeds reach the threshold, the secondary comparison runs on ``task``, else on ``fallback_spec``
    (a task the family is known to learn).
    """

    task: str
    contender: str
    ladder: tuple[int, ...]
    seeds: int = 3
    required: int = 2
    threshold: float = ESCAPE_TOP1
    secondary: Optional[str] = None
    fallback_spec: Optional[str] = None
    effect: float = 0.0
    power: float = 0.8
    alpha: float = 0.05


@dataclass(frozen=True)
class PilotResult:
    """What the pilot decided.

    Attributes:
        epochs: The budget (``None``: no rung passed).
        secondary_learns: Whether the secondary contender learned the pilot's task at that budget.
        rungs: Per rung tried, ``{epochs, passed, top1: {contender: [final top-1 per seed]}, curves}``.
        seeds: Paired seeds the power calculation asks for on the pilot's task (:class:`Pilot`).
        spread: The standard deviation of paired differences that calculation assumed.
    """

    epochs: Optional[int]
    secondary_learns: bool
    rungs: tuple[dict, ...]
    seeds: Optional[int] = None
    spread: Optional[float] = None


@dataclass(frozen=True)
class Comparison:
    """``contender`` against ``baseline`` on ``task``, paired by seed; ``question`` says what it asks."""

    task: str
    contender: str
    baseline: str
    question: str


@dataclass(frozen=True)
class AnalysisPlan:
    """The analysis fixed before the results (README, "Does FSLA help?").

    Attributes:
        claim: Does FSLA beat the FSLA-off model on the long-range task?
        content: Do content groups beat the content-free controls (random, norm)?
        check: Does global attention beat the FSLA-off model (does long range pay at this budget)?
        rivals: The equivalence question (FSLA against global attention), tested within ``margin`` points.
        secondary: The secondary family's comparisons (their own Holm family).
        control_task: The positive control: every contender should learn it in every seed.
        alpha: Family-wise level of each Holm family, and the level of the equivalence test.
        margin: Equivalence margin in points of top-1.
        effect: The smallest gain of interest in points; ruling it out (upper 95% bound below it) refutes.
        escape: Final top-1 from which a run counts as having learned the task.
    """

    claim: Comparison
    content: tuple[Comparison, ...]
    check: Comparison
    rivals: Comparison
    secondary: tuple[Comparison, ...]
    control_task: str
    alpha: float
    margin: float
    effect: float
    escape: float = ESCAPE_TOP1

    @property
    def family(self) -> tuple[Comparison, ...]:
        """The confirmatory comparisons corrected together (Holm)."""
        return (self.claim, *self.content, self.check)


@dataclass
class AblationConfig:
    """Everything the ablation needs; the training recipe is shared by every run.

    Attributes:
        output: Folder of the ablation.
        design: Name of the design (:data:`DESIGNS`).
        tasks: The tasks with their contenders, epochs and seeds.
        swin: Swin configuration of the design (model keyword arguments).
        cswin: CSWin configuration of the design.
        pilot: The budget rule (``None``: the tasks' epochs stand).
        secondary: Key of the task the pilot may move to its ``fallback_spec``.
        analysis: The pre-stated analysis (``None``: a descriptive report only).
        batch_size, lr, weight_decay, warmup_epochs, min_lr, clip_grad: The recipe (AdamW, cosine schedule
            with linear warm-up per update, gradient clipping; no augmentation, no label smoothing, no drop
            path).
        threads: torch CPU threads per run (1: the machine may be shared).
        jobs: Runs trained at once, each in its own process; results do not depend on it.
        device: ``cpu`` or ``cuda``.
        verbose: Print a line per run.
    """

    output: str = "runs/ablation"
    design: str = "long-range"
    tasks: tuple[AblationTask, ...] = ()
    swin: dict = field(default_factory=dict)
    cswin: dict = field(default_factory=dict)
    pilot: Optional[Pilot] = None
    secondary: Optional[str] = None
    analysis: Optional[AnalysisPlan] = None
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    min_lr: float = 1e-5
    clip_grad: float = 5.0
    threads: int = 1
    jobs: int = 1
    device: str = "cpu"
    verbose: bool = True

    def check(self) -> None:
        """Raises a ValueError naming the first setting that cannot run."""
        if self.design not in DESIGNS:
            raise ValueError(f"unknown design {self.design!r}; choose from {list(DESIGNS)}")
        if self.jobs < 1 or self.threads < 1:
            raise ValueError(f"jobs and threads must be >= 1, got jobs={self.jobs}, threads={self.threads}")
        if not self.tasks:
            raise ValueError("the ablation has no tasks")
        for task in self.tasks:
            parse_task(task.spec)
            unknown = [c for c in task.contenders if c not in CONTENDERS]
            if unknown:
                raise ValueError(f"unknown contenders {unknown}; choose from {list(CONTENDERS)}")
            if task.epochs < 1 or task.seeds < 1:
                raise ValueError(f"epochs and seeds must be >= 1 (task {task.key})")
        keys = [task.key for task in self.tasks]
        if len(set(keys)) != len(keys):
            raise ValueError(f"task keys must differ, got {keys}")


# ---- the long-range design -----------------------------------------------------------------------------
LOCAL_SWIN = dict(patch_size=2, window_size=4, embed_dim=32, depths=(2, 1), num_heads=(2, 4),
                  fsla_group_size=WINDOW_GROUP_SIZE, fsla_overlap=WINDOW_GROUP_OVERLAP)
# CSWin at twice the canvas size (16x16, 8x8, 4x4 tokens); its FSLA keeps the released groups of 49 (the model
# takes no other), so the secondary comparison is about the logit scale, not the sparse regime
LOCAL_CSWIN = dict(embed_dim=32, depths=(2, 2, 2), num_heads=(2, 4, 8), split_size=(1, 2, 4))
STAGE2_WINDOW_PIXELS = 16  # LOCAL_SWIN's stage-2 window: 4 tokens of 4 pixels
FAR_SPEC = "digit-pairs:digit_scale=1,placement=opposite"
NEAR_SPEC = f"digit-pairs:digit_scale=1,placement=block,block={STAGE2_WINDOW_PIXELS}"
FIRST_PAIRS_SPEC = "digit-pairs"  # the first design's long-range task, where CSWin learns
LONG_RANGE_CONTENDERS = ("swin", "boat_swin", "boat_swin_random", "boat_swin_norm", "swin_global")
SECONDARY_CONTENDERS = ("cswin", "boat_cswin", "boat_cswin_scaled")
PRIMARY_SEEDS = 10
NEAR_SEEDS = 3
SECONDARY_SEEDS = 10
BUDGET_LADDER = (12, 24, 48)  # epochs of 3,200 images, 50 updates each
EFFECT_OF_INTEREST = 20.0  # points of final top-1: about half of what learning the far task is worth
CONFIRMATORY_COMPARISONS = 4  # the Holm family on the far task (README); the power uses its first threshold
ALPHA = 0.05
EQUIVALENCE_MARGIN = 5.0  # points of top-1 within which FSLA "rivals" global attention
LONG_RANGE_ANALYSIS = AnalysisPlan(
    claim=Comparison("far", "boat_swin", "swin", "does FSLA give the windowed Swin the range it lacks?"),
    content=(Comparison("far", "boat_swin", "boat_swin_random", "do content groups beat random groups?"),
             Comparison("far", "boat_swin", "boat_swin_norm", "do content groups beat ink-vs-background groups?")),
    check=Comparison("far", "swin_global", "swin", "does global attention in the FSLA slot learn far pairs?"),
    rivals=Comparison("far", "boat_swin", "swin_global", "does FSLA rival global attention?"),
    secondary=(Comparison("cswin", "boat_cswin", "cswin", "BOAT-CSWin (released scale 1.0) against CSWin"),
               Comparison("cswin", "boat_cswin_scaled", "cswin", "BOAT-CSWin (head_dim^-0.5) against CSWin"),
               Comparison("cswin", "boat_cswin_scaled", "boat_cswin", "head_dim^-0.5 against the released 1.0")),
    control_task="near", alpha=ALPHA, margin=EQUIVALENCE_MARGIN, effect=EFFECT_OF_INTEREST,
)
LONG_RANGE_PILOT = Pilot(task="far", contender="swin_global", ladder=BUDGET_LADDER, secondary="cswin",
                         fallback_spec=FIRST_PAIRS_SPEC, effect=EFFECT_OF_INTEREST,
                         alpha=ALPHA / CONFIRMATORY_COMPARISONS)


def _long_range(output: str) -> AblationConfig:
    epochs = BUDGET_LADDER[0]  # until the pilot says otherwise
    tasks = (
        AblationTask("far", FAR_SPEC, LONG_RANGE_CONTENDERS, epochs, PRIMARY_SEEDS),
        AblationTask("near", NEAR_SPEC, LONG_RANGE_CONTENDERS, epochs, NEAR_SEEDS),
        AblationTask("cswin", FAR_SPEC, SECONDARY_CONTENDERS, epochs, SECONDARY_SEEDS),
    )
    return AblationConfig(output=output, design="long-range", tasks=tasks, swin=dict(LOCAL_SWIN),
                          cswin=dict(LOCAL_CSWIN), pilot=LONG_RANGE_PILOT, secondary="cswin",
                          analysis=LONG_RANGE_ANALYSIS)


# ---- the first design ----------------------------------------------------------------------------------
# Swin at the canvas size, patch 2, window 4: maps 16x16, 8x8, 4x4 (stage 3 global); FSLA groups of 49 in the
# shifted blocks of stages 1 (4 groups of 64) and 2 (one group). CSWin at twice the canvas size.
FIRST_SWIN = dict(patch_size=2, window_size=4, embed_dim=32, depths=(2, 2, 2), num_heads=(2, 4, 8))
FIRST_CSWIN = dict(embed_dim=32, depths=(2, 2, 2), num_heads=(2, 4, 8), split_size=(1, 2, 4))
FIRST_MAIN = ("swin", "boat_swin", "swin_global", "boat_swin_random", "swin_wide", "cswin", "boat_cswin")
FIRST_CONTROL = ("swin", "boat_swin", "cswin", "boat_cswin")
FIRST_SEEDS = 3


def _first(output: str) -> AblationConfig:
    tasks = (
        AblationTask("pairs", FIRST_PAIRS_SPEC, FIRST_MAIN, 8, FIRST_SEEDS),
        AblationTask("control", "digit-clutter", FIRST_CONTROL, 5, FIRST_SEEDS),
    )
    return AblationConfig(output=output, design="first", tasks=tasks, swin=dict(FIRST_SWIN), cswin=dict(FIRST_CSWIN))


DESIGNS = {"long-range": _long_range, "first": _first}
DEFAULT_DESIGN = "long-range"
DEFAULT_OUTPUTS = {"long-range": "runs/ablation-long-range", "first": "runs/ablation"}


def design_config(design: str = DEFAULT_DESIGN, output: Optional[str] = None) -> AblationConfig:
    """The ablation of a design (:data:`DESIGNS`), written to ``output`` (default: the design's folder)."""
    if design not in DESIGNS:
        raise ValueError(f"unknown design {design!r}; choose from {list(DESIGNS)}")
    return DESIGNS[design](output or DEFAULT_OUTPUTS[design])


# ---- the quick check -----------------------------------------------------------------------------------
QUICK_SPLITS = "train_size=128,heldout_size=64"
QUICK_SWIN = dict(LOCAL_SWIN, embed_dim=16)
QUICK_CSWIN = dict(embed_dim=16, depths=(2, 2), num_heads=(2, 4), split_size=(1, 2))
QUICK_SEEDS = 2


def quick_config(output: str = "runs/ablation-quick", **overrides) -> AblationConfig:
    """The long-range design on tiny splits and models, one epoch, two seeds on ``far`` and one elsewhere: a
    check of the machinery (its pilot passes at any accuracy, so the main runs follow; the accuracies mean
    nothing)."""
    tasks = (
        AblationTask("far", f"{FAR_SPEC},{QUICK_SPLITS}", LONG_RANGE_CONTENDERS, 1, QUICK_SEEDS),
        AblationTask("near", f"{NEAR_SPEC},{QUICK_SPLITS}", LONG_RANGE_CONTENDERS, 1, 1),
        AblationTask("cswin", f"{FAR_SPEC},{QUICK_SPLITS}", SECONDARY_CONTENDERS, 1, 1),
    )
    pilot = Pilot(task="far", contender="swin_global", ladder=(1,), seeds=1, required=1, threshold=0.0,
                  secondary="cswin", fallback_spec=f"{FIRST_PAIRS_SPEC}:{QUICK_SPLITS}")
    values = dict(output=output, design="long-range", tasks=tasks, swin=dict(QUICK_SWIN), cswin=dict(QUICK_CSWIN),
                  pilot=pilot, secondary="cswin", analysis=LONG_RANGE_ANALYSIS, batch_size=32)
    values.update(overrides)
    return AblationConfig(**values)


def narrow(config: AblationConfig, tasks: Optional[Sequence[str]] = None,
           contenders: Optional[Sequence[str]] = None, epochs: Optional[int] = None,
           seeds: Optional[int] = None) -> AblationConfig:
    """A copy of ``config`` with only ``tasks``, only ``contenders`` (plus their families' FSLA-off
    baselines, which the paired differences need), and ``epochs`` (no pilot then) or ``seeds`` for every task.

    Raises:
        ValueError: unknown tasks or contenders.
    """
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
    if seeds is not None:
        selected = tuple(dataclasses.replace(t, seeds=seeds) for t in selected)
    return dataclasses.replace(config, tasks=selected, pilot=None if epochs is not None else config.pilot)
