"""Does FSLA help? A controlled, paired, powered ablation on generated digit tasks (``boat-vit ablate``).

One module per concept: :mod:`~boat_vit.ablation.design` (contenders, tasks, the designs and the pilot rule),
:mod:`~boat_vit.ablation.receptive_field` (the premise, measured on the model),
:mod:`~boat_vit.ablation.cost` (parameters, MACs, throughput), :mod:`~boat_vit.ablation.planning` (runs,
paired initial weights, plan records), :mod:`~boat_vit.ablation.runner` (pilot, runs ``jobs`` at a time,
resume), :mod:`~boat_vit.ablation.statistics` (the tests) and :mod:`~boat_vit.ablation.report` (the
pre-stated analysis, the tables and the plots).
"""
from .design import (
    BASELINES,
    CONTENDERS,
    DEFAULT_DESIGN,
    DESIGNS,
    ESCAPE_TOP1,
    AblationConfig,
    AblationTask,
    Contender,
    Pilot,
    PilotResult,
    design_config,
    narrow,
    quick_config,
)
from .runner import PilotFailed, apply_pilot, collect, pilot_passes, run_ablation, run_pilot

__all__ = [
    "BASELINES",
    "CONTENDERS",
    "DEFAULT_DESIGN",
    "DESIGNS",
    "ESCAPE_TOP1",
    "AblationConfig",
    "AblationTask",
    "Contender",
    "Pilot",
    "PilotFailed",
    "PilotResult",
    "apply_pilot",
    "collect",
    "design_config",
    "narrow",
    "pilot_passes",
    "quick_config",
    "run_ablation",
    "run_pilot",
]
