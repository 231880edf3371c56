"""The tests of the ablation, each a thin, tested layer over scipy: paired differences by seed, the exact
paired permutation test, Wilcoxon's signed-rank test, Holm's correction, Fisher's exact test on escape counts,
the two one-sided tests of equivalence (TOST), t-based confidence intervals and the power of a paired test."""
import math
import statistics
from typing import Sequence

import numpy as np
from scipy import stats

__all__ = [
    "CONFIDENCE",
    "paired_differences",
    "t_confidence_interval",
    "paired_permutation_test",
    "wilcoxon_test",
    "holm",
    "fisher_escape_test",
    "tost_paired",
    "paired_t_power",
    "seeds_for_power",
    "minimum_detectable_difference",
]

CONFIDENCE = 0.95
MAX_POWER_SEEDS = 1000  # search limit of seeds_for_power
MDD_TOLERANCE = 1e-4  # bisection stops within this many SDs
MDD_SEARCH_SDS = 8.0  # minimum_detectable_difference searches up to this many SDs (power 1 at any n >= 2)


def paired_differences(rows: Sequence[dict], task: str, contender: str, baseline: str,
                       metric: str = "final_top1") -> list[float]:
    """Per seed present in both (ascending): ``metric`` of ``contender`` minus ``baseline`` on ``task``."""
    by_seed = {(r["contender"], r["seed"]): r[metric] for r in rows if r["task"] == task}
    seeds = sorted(s for c, s in by_seed if c == contender and (baseline, s) in by_seed)
    return [by_seed[contender, s] - by_seed[baseline, s] for s in seeds]


def t_confidence_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Mean and the two-sided t-based confidence interval of the mean (NaN bounds for fewer than 2 values)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf((1 + confidence) / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def paired_permutation_test(differences: Sequence[float], alternative: str = "two-sided") -> float:
    """Exact p-value of the mean paired difference under random sign flips (every one of the ``2**n``).

    Under the null hypothesis the two runs of a pair are exchangeable, so each difference is as likely
    positive as negative. Differences of exactly zero carry no sign and never change the statistic.
    """
    values = np.asarray(differences, dtype=np.float64)
    if len(values) == 0:
        return math.nan
    if not values.any():
        return 1.0
    result = stats.permutation_test((values,), np.mean, permutation_type="samples", n_resamples=np.inf,
                                    alternative=alternative)
    return float(result.pvalue)


def wilcoxon_test(differences: Sequence[float]) -> float:
    """Two-sided p-value of Wilcoxon's signed-rank test (scipy's choice of exact or normal method; zero
    differences dropped as in Wilcoxon's original test); NaN without a non-zero difference."""
    values = np.asarray(differences, dtype=np.float64)
    if not values.any():
        return math.nan
    return float(stats.wilcoxon(values, zero_method="wilcox").pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given; NaN stays NaN and counts for nothing).

    The ``k``-th smallest of ``m`` p-values is multiplied by ``m - k + 1``, then made non-decreasing along
    that order and capped at 1; a hypothesis is rejected at level ``alpha`` when its adjusted p is below it.
    """
    indexed = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (len(indexed) - rank) * p))
        adjusted[i] = running
    return adjusted


def fisher_escape_test(escaped: int, runs: int, baseline_escaped: int, baseline_runs: int) -> float:
    """Two-sided p-value of Fisher's exact test on two escape counts (runs above the threshold)."""
    table = [[escaped, runs - escaped], [baseline_escaped, baseline_runs - baseline_escaped]]
    return float(stats.fisher_exact(table, alternative="two-sided").pvalue)


def tost_paired(differences: Sequence[float], margin: float) -> tuple[float, float, float]:
    """Two one-sided paired t tests of equivalence within ``±margin``.

    Returns:
        ``(p, p_lower, p_upper)``: ``p_lower`` tests ``mean <= -margin`` against ``mean > -margin``,
        ``p_upper`` tests ``mean >= margin`` against ``mean < margin``; equivalence is shown at level
        ``alpha`` when ``p = max(p_lower, p_upper) < alpha`` (the ``1 - 2 alpha`` interval lies within the
        margin). NaN for fewer than two differences or no spread.
    """
    values = np.asarray(differences, dtype=np.float64)
    if len(values) < 2 or values.std() == 0:
        return math.nan, math.nan, math.nan
    lower = float(stats.ttest_1samp(values, -margin, alternative="greater").pvalue)
    upper = float(stats.ttest_1samp(values, margin, alternative="less").pvalue)
    return max(lower, upper), lower, upper


def paired_t_power(seeds: int, difference: float, sd: float, alpha: float) -> float:
    """Power of the two-sided paired t test at level ``alpha`` for a true mean ``difference`` with standard
    deviation ``sd`` of the paired differences over ``seeds`` pairs (noncentral t)."""
    if seeds < 2:
        return 0.0
    df = seeds - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    shift = difference / sd * math.sqrt(seeds)
    power = float(stats.nct.sf(critical, df, shift) + stats.nct.cdf(-critical, df, shift))
    if math.isnan(power):  # scipy's noncentral t gives up far out in the tail, where the power is 1
        return 1.0
    return power


def seeds_for_power(difference: float, sd: float, alpha: float, power: float) -> int:
    """Fewest paired seeds whose paired t test reaches ``power`` (see :func:`paired_t_power`)."""
    for seeds in range(2, MAX_POWER_SEEDS + 1):
        if paired_t_power(seeds, difference, sd, alpha) >= power:
            return seeds
    raise ValueError(f"more than {MAX_POWER_SEEDS} seeds needed for a difference of {difference} at sd {sd}")


def minimum_detectable_difference(seeds: int, sd: float, alpha: float, power: float) -> float:
    """Smallest true mean difference that ``seeds`` paired seeds detect with ``power`` (to 1e-4 sd)."""
    low, high = 0.0, MDD_SEARCH_SDS * sd
    while high - low > MDD_TOLERANCE * sd:
        middle = (low + high) / 2
        low, high = (low, middle) if paired_t_power(seeds, middle, sd, alpha) >= power else (middle, high)
    return high
