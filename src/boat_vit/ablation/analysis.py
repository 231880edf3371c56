"""The pre-stated analysis applied to the results: tests, corrections and the decisions they imply.

The rules (README, "Does FSLA help?", written before the results):

1. The confirmatory family on the long-range task (claim, the two content controls, the global-attention
   check) is tested with exact paired permutation tests, Holm-corrected at ``alpha``. Escape counts get
   Fisher's exact test, Holm-corrected as their own family (reported, not decisive).
2. If global attention does not significantly beat the FSLA-off model, the task at this budget does not
   show that long range helps: the headline is *inconclusive*, whatever FSLA did.
3. Else, a significant gain of FSLA over the FSLA-off model *supports* the claim; the content controls
   and the equivalence test with global attention (TOST, ``margin`` points) qualify it.
4. Else, if the upper bound of the 95% interval of FSLA's gain lies below ``effect`` points, the claim is
   *refuted* for this setting (a gain of that size is ruled out).
5. Else *inconclusive*.

The secondary comparisons form their own Holm family; a significant difference between the two logit scales
decides which one to recommend, otherwise neither is favoured.
"""
import math
from dataclasses import dataclass
from typing import Optional, Sequence

from .design import AnalysisPlan, Comparison
from .statistics import (
    CONFIDENCE,
    fisher_escape_test,
    holm,
    paired_differences,
    paired_permutation_test,
    t_confidence_interval,
    tost_paired,
    wilcoxon_test,
)

__all__ = ["ComparisonResult", "Analysis", "compare", "analyse"]

SUPPORTED, REFUTED, INCONCLUSIVE = "supported", "refuted", "inconclusive"
EQUIVALENCE_CONFIDENCE = 0.90  # the interval that TOST at level 0.05 checks against the margin


@dataclass
class ComparisonResult:
    """One paired comparison: the differences by seed, their tests and the escape counts."""

    comparison: Comparison
    differences: list[float]
    mean: float
    low: float
    high: float
    p: float
    wilcoxon_p: float
    escaped: tuple[int, int]
    baseline_escaped: tuple[int, int]
    fisher_p: float
    p_adjusted: float = math.nan
    fisher_adjusted: float = math.nan

    def significant(self, alpha: float) -> bool:
        """Holm-adjusted p below ``alpha``."""
        return self.p_adjusted < alpha

    @property
    def seeds(self) -> int:
        return len(self.differences)


@dataclass
class Analysis:
    """Everything the rules need and what they decide."""

    family: list[ComparisonResult]
    equivalence: Optional[dict]
    secondary: list[ComparisonResult]
    control: dict[str, tuple[int, int]]
    verdict: str
    headline: str
    qualifiers: list[str]
    recommendation: Optional[str]


def _escapes(rows: Sequence[dict], task: str, contender: str, escape: float) -> tuple[int, int]:
    values = [r["final_top1"] for r in rows if r["task"] == task and r["contender"] == contender]
    return sum(v >= escape for v in values), len(values)


def compare(rows: Sequence[dict], comparison: Comparison, escape: float) -> ComparisonResult:
    """The paired comparison's differences (seeds present in both), tests and escape counts."""
    differences = paired_differences(rows, comparison.task, comparison.contender, comparison.baseline)
    mean, low, high = t_confidence_interval(differences) if differences else (math.nan, math.nan, math.nan)
    escaped = _escapes(rows, comparison.task, comparison.contender, escape)
    baseline_escaped = _escapes(rows, comparison.task, comparison.baseline, escape)
    fisher = fisher_escape_test(*escaped, *baseline_escaped) if escaped[1] and baseline_escaped[1] else math.nan
    return ComparisonResult(comparison, differences, mean, low, high, paired_permutation_test(differences),
                            wilcoxon_test(differences), escaped, baseline_escaped, fisher)


def _holm_family(results: list[ComparisonResult]) -> None:
    for result, adjusted in zip(results, holm([r.p for r in results])):
        result.p_adjusted = adjusted
    for result, adjusted in zip(results, holm([r.fisher_p for r in results])):
        result.fisher_adjusted = adjusted


def _equivalence(rows: Sequence[dict], plan: AnalysisPlan) -> Optional[dict]:
    comparison = plan.rivals
    differences = paired_differences(rows, comparison.task, comparison.contender, comparison.baseline)
    if len(differences) < 2:
        return None
    p, p_lower, p_upper = tost_paired(differences, plan.margin)
    mean, low, high = t_confidence_interval(differences, EQUIVALENCE_CONFIDENCE)
    return dict(comparison=comparison, seeds=len(differences), mean=mean, low=low, high=high, p=p,
                p_lower=p_lower, p_upper=p_upper, equivalent=p < plan.alpha, margin=plan.margin)


def _verdict(plan: AnalysisPlan, claim: ComparisonResult, content: list[ComparisonResult],
             check: ComparisonResult, equivalence: Optional[dict]) -> tuple[str, str, list[str]]:
    alpha = plan.alpha
    if not (check.significant(alpha) and check.mean > 0):
        return INCONCLUSIVE, (
            "Inconclusive: global attention in the FSLA slot did not significantly beat the FSLA-off model on "
            "far pairs, so at this budget the task does not show that long range helps, and FSLA's result "
            "cannot be read as a test of range."), []
    qualifiers = []
    if claim.significant(alpha) and claim.mean > 0:
        verdict, headline = SUPPORTED, (
            f"Yes, here: FSLA gave the windowed Swin range it lacks (far pairs, {claim.mean:+.1f} points over "
            "FSLA off, significant after Holm's correction).")
        beaten = [r for r in content if r.significant(alpha) and r.mean > 0]
        if len(beaten) == len(content):
            qualifiers.append("Content groups beat both content-free controls (random, ink vs background).")
        else:
            missed = ", ".join(r.comparison.baseline for r in content if r not in beaten)
            qualifiers.append(f"Not shown that content matters: no significant gain over {missed}.")
    elif claim.high < plan.effect:
        verdict, headline = REFUTED, (
            f"No, here: FSLA did not give the windowed Swin the range it lacks (far pairs, {claim.mean:+.1f} "
            f"points over FSLA off, 95% CI up to {claim.high:+.1f}: a gain of {plan.effect:g} points or more is "
            "ruled out), while global attention in the same slot did learn the task.")
    else:
        verdict, headline = INCONCLUSIVE, (
            f"Inconclusive: FSLA's gain on far pairs ({claim.mean:+.1f} points, 95% CI {claim.low:+.1f} to "
            f"{claim.high:+.1f}) is neither significant nor ruled out at {plan.effect:g} points.")
    if equivalence is not None:
        if equivalence["equivalent"]:
            qualifiers.append(f"It rivals global attention: equivalent within ±{plan.margin:g} points (TOST).")
        elif equivalence["high"] < -plan.margin:
            qualifiers.append(f"It falls short of global attention by more than {plan.margin:g} points "
                              f"(90% CI {equivalence['low']:+.1f} to {equivalence['high']:+.1f}).")
        else:
            qualifiers.append(f"Not shown to rival global attention within ±{plan.margin:g} points (TOST).")
    return verdict, headline, qualifiers


def _recommendation(plan: AnalysisPlan, secondary: list[ComparisonResult]) -> Optional[str]:
    scales = next((r for r in secondary if r.comparison.baseline != "cswin"), None)
    if scales is None or not scales.differences:
        return None
    if scales.significant(plan.alpha):
        better = scales.comparison.contender if scales.mean > 0 else scales.comparison.baseline
        return (f"Train BOAT-CSWin from scratch with {'head_dim^-0.5' if better.endswith('scaled') else 'the released 1.0'}"
                f" as FSLA's logit scale ({scales.mean:+.1f} points for head_dim^-0.5, Holm-adjusted p "
                f"{scales.p_adjusted:.3g}).")
    return (f"The data do not favour either FSLA logit scale for BOAT-CSWin ({scales.mean:+.1f} points for "
            f"head_dim^-0.5, 95% CI {scales.low:+.1f} to {scales.high:+.1f}, Holm-adjusted p {scales.p_adjusted:.3g}).")


def analyse(rows: Sequence[dict], plan: AnalysisPlan) -> Analysis:
    """Applies ``plan`` (module docstring) to the result rows."""
    family = [compare(rows, c, plan.escape) for c in plan.family]
    _holm_family(family)
    claim, content, check = family[0], family[1:-1], family[-1]
    secondary = [compare(rows, c, plan.escape) for c in plan.secondary]
    secondary = [r for r in secondary if r.differences]
    _holm_family(secondary)
    equivalence = _equivalence(rows, plan)
    control = {name: _escapes(rows, plan.control_task, name, plan.escape)
               for name in dict.fromkeys(r["contender"] for r in rows if r["task"] == plan.control_task)}
    if all(r.differences for r in family):
        verdict, headline, qualifiers = _verdict(plan, claim, content, check, equivalence)
    else:
        verdict, headline, qualifiers = INCONCLUSIVE, "Incomplete: not every confirmatory comparison has runs yet.", []
    failed = [name for name, (escaped, runs) in control.items() if escaped < runs]
    if failed:
        qualifiers.append(f"Positive control: {', '.join(failed)} did not learn near pairs in every seed, so "
                          "their far results may reflect training, not range.")
    return Analysis(family, equivalence, secondary, control, verdict, headline, qualifiers,
                    _recommendation(plan, secondary))
