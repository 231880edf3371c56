"""The ablation's report: ``results.csv`` (one row per run), ``results.md`` (the decisions of the pre-stated
analysis, the premise, the pilot, the summary, the tests and every run per seed), ``curves.png`` (held-out
top-1 against epochs, every seed) and ``cost.png`` (every run's final top-1 against MACs)."""
import json
import math
import statistics
from pathlib import Path
from typing import Optional, Sequence

from ..bench import environment, machine_line, markdown_table
from ..files import atomic_write
from ..classification.tasks import parse_task
from .analysis import Analysis, ComparisonResult, analyse
from .design import BASELINES, CONTENDERS, AblationConfig, PilotResult

__all__ = ["RESULT_FIELDS", "summarize", "premise_check", "write_report"]

RESULT_FIELDS = ("task", "contender", "family", "seed", "embed_dim", "params", "macs", "epochs", "final_top1",
                 "best_top1", "train_time_s", "images_per_s")
RESULTS_CSV, RESULTS_MD, CURVES_PNG, COST_PNG = "results.csv", "results.md", "curves.png", "cost.png"
PLOT_DPI = 100


def _fmt(value: float, digits: int = 1, sign: bool = False) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _p(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3g}"


def summarize(rows: Sequence[dict], escape: float) -> list[dict]:
    """One entry per task and contender: seeds, mean/std of final top-1, escapes, paired difference to the
    family's FSLA-off baseline with its t-based 95% interval."""
    from .statistics import paired_differences, t_confidence_interval

    out = []
    for task, name in dict.fromkeys((r["task"], r["contender"]) for r in rows):
        mine = [r for r in rows if r["task"] == task and r["contender"] == name]
        accuracies = [r["final_top1"] for r in mine]
        baseline = BASELINES[CONTENDERS[name].family]
        present = any(r["task"] == task and r["contender"] == baseline for r in rows)
        diffs = paired_differences(rows, task, name, baseline) if name != baseline and present else []
        mean_diff, low, high = t_confidence_interval(diffs) if diffs else (math.nan, math.nan, math.nan)
        description = CONTENDERS[name].description
        if CONTENDERS[name].match_macs_of is not None:
            description += f" (embed {mine[0]['embed_dim']})"
        out.append(dict(
            task=task, contender=name, description=description, baseline=baseline, seeds=len(mine),
            params=mine[0].get("params"), macs=mine[0].get("macs"), mean_top1=statistics.fmean(accuracies),
            std_top1=statistics.stdev(accuracies) if len(accuracies) > 1 else math.nan,
            escaped=sum(a >= escape for a in accuracies), diff=mean_diff, diff_low=low, diff_high=high,
            pairs=len(diffs), train_time_s=statistics.fmean(r["train_time_s"] for r in mine),
            images_per_s=statistics.fmean(r["images_per_s"] for r in mine),
        ))
    return out


def _summary_table(summary: Sequence[dict], escape: float) -> str:
    def difference(s: dict) -> str:
        if s["contender"] == s["baseline"]:
            return "baseline"
        if not s["pairs"]:
            return "n/a"
        return f"{_fmt(s['diff'], sign=True)} [{_fmt(s['diff_low'], sign=True)}, {_fmt(s['diff_high'], sign=True)}]"

    columns = [
        ("task", "task", "{}"), ("contender", "contender", "{}"), ("description", "what differs", "{}"),
        ("params", "params (M)", lambda v: f"{v / 1e6:.3f}"), ("macs", "MMACs", lambda v: f"{v / 1e6:.1f}"),
        ("top1", "final top-1 (%, mean ± sd)", "{}"), ("escapes", f"runs ≥ {escape:g}%", "{}"),
        ("difference", "Δ vs FSLA-off (points, mean [95% CI])", "{}"), ("seeds", "seeds", "{}"),
        ("train_time_s", "train time (s, as run)", "{:.0f}"),
    ]
    table = [dict(s, top1=f"{s['mean_top1']:.1f} ± {_fmt(s['std_top1'])}", escapes=f"{s['escaped']}/{s['seeds']}",
                  difference=difference(s)) for s in summary]
    return markdown_table(table, columns)


def _comparison_table(results: Sequence[ComparisonResult]) -> str:
    columns = [
        ("task", "task", "{}"), ("pair", "comparison", "{}"), ("question", "question", "{}"), ("seeds", "n", "{}"),
        ("difference", "Δ (points, mean [95% CI])", "{}"), ("p", "p (permutation)", _p),
        ("p_adjusted", "p (Holm)", _p), ("wilcoxon_p", "p (Wilcoxon)", _p), ("escapes", "learned", "{}"),
        ("fisher_p", "p (Fisher)", _p), ("fisher_adjusted", "p (Fisher, Holm)", _p),
    ]
    table = [dict(task=r.comparison.task, pair=f"{r.comparison.contender} − {r.comparison.baseline}",
                  question=r.comparison.question, seeds=r.seeds,
                  difference=f"{_fmt(r.mean, sign=True)} [{_fmt(r.low, sign=True)}, {_fmt(r.high, sign=True)}]",
                  p=r.p, p_adjusted=r.p_adjusted, wilcoxon_p=r.wilcoxon_p,
                  escapes=f"{r.escaped[0]}/{r.escaped[1]} vs {r.baseline_escaped[0]}/{r.baseline_escaped[1]}",
                  fisher_p=r.fisher_p, fisher_adjusted=r.fisher_adjusted) for r in results]
    return markdown_table(table, columns)


def _per_seed_tables(rows: Sequence[dict]) -> str:
    parts = []
    for task in dict.fromkeys(r["task"] for r in rows):
        names = list(dict.fromkeys(r["contender"] for r in rows if r["task"] == task))
        values = {(r["contender"], r["seed"]): r["final_top1"] for r in rows if r["task"] == task}
        seeds = sorted({s for _, s in values})
        table = [dict(seed=s, **{n: values.get((n, s)) for n in names}) for s in seeds]
        columns = [("seed", "seed", "{}")] + [(n, n, "{:.1f}") for n in names]
        parts.append(f"Task `{task}`, final held-out top-1 (%) per seed:\n\n{markdown_table(table, columns)}")
    return "\n\n".join(parts)


def premise_check(config: AblationConfig) -> Optional[dict]:
    """The receptive-field premise on the design's FSLA-off Swin: for each pair task, how many final tokens see
    both digits of each held-out image (``None`` unless the design has an analysis plan)."""
    from ..classification.tasks import generate_split
    from .cost import build_model
    from .planning import contender_kwargs
    from .receptive_field import pair_coverage, receptive_fields

    if config.analysis is None:
        return None
    plan = config.analysis
    baseline = plan.claim.baseline
    out = {}
    for task in config.tasks:
        if baseline not in task.contenders or task.key not in (plan.claim.task, plan.control_task):
            continue
        task_config = parse_task(task.spec)
        kwargs = contender_kwargs(config, task_config, baseline)
        fields = receptive_fields(build_model(CONTENDERS[baseline].family, kwargs, len(task_config.classes)),
                                  kwargs["img_size"])
        coverage = pair_coverage(fields, generate_split(task_config, "val").digit_boxes)
        out[task.key] = dict(images=len(coverage["touching"]), field_pixels=int(fields.sum(axis=(1, 2)).max()),
                             tokens=len(fields), most_touching=int(coverage["touching"].max()),
                             fewest_covering=int(coverage["covering"].min()),
                             with_covering=int((coverage["covering"] > 0).sum()))
    return out


def _premise_text(premise: dict) -> str:
    lines = []
    for key, check in premise.items():
        lines.append(
            f"- `{key}`: each of the FSLA-off Swin's {check['tokens']} final tokens sees at most "
            f"{check['field_pixels']} pixels (its input-gradient support); over the {check['images']} held-out "
            f"images at most {check['most_touching']} tokens see any pixel of both digits, and "
            f"{check['with_covering']} images have a token that sees both digits whole (fewest such tokens: "
            f"{check['fewest_covering']}).")
    return "\n".join(lines)


def _pilot_text(pilot: PilotResult, config: AblationConfig) -> str:
    rule = config.pilot
    lines = [f"Rule: `{rule.contender}` on `{rule.task}`, seeds 0-{rule.seeds - 1}; a budget passes when at least "
             f"{rule.required} runs reach {rule.threshold:g}% final held-out top-1; budgets tried in order: "
             f"{', '.join(str(e) for e in rule.ladder)} epochs.", ""]
    table = []
    for rung in pilot.rungs:
        for name, values in rung["top1"].items():
            table.append(dict(epochs=rung["epochs"], contender=name, top1=" / ".join(f"{v:.1f}" for v in values),
                              learned=f"{sum(v >= rule.threshold for v in values)}/{len(values)}",
                              passed=("passes" if rung["passed"] else "fails") if name == rule.contender else ""))
    columns = [("epochs", "epochs", "{}"), ("contender", "contender", "{}"), ("top1", "final top-1 per seed", "{}"),
               ("learned", f"≥ {rule.threshold:g}%", "{}"), ("passed", "rule", "{}")]
    lines.append(markdown_table(table, columns))
    if pilot.epochs is None and len(pilot.rungs) == len(rule.ladder):
        lines += ["", f"No budget passed: `{rule.contender}` did not learn `{rule.task}` at any budget of the ladder. "
                      "By the rule fixed before the results, the main run does not start: this design cannot say "
                      "whether FSLA supplies the long range that windows lack (inconclusive)."]
    if pilot.epochs is not None:
        lines += ["", f"Budget: {pilot.epochs} epochs for every task and contender."]
        if rule.secondary:
            where = f"`{rule.task}`" if pilot.secondary_learns else f"`{rule.fallback_spec}` (fallback)"
            lines.append(f"Secondary comparison on {where}: `{rule.secondary}` "
                         f"{'learned' if pilot.secondary_learns else 'did not learn'} `{rule.task}` in the pilot.")
        if pilot.seeds is not None:
            lines.append(
                f"Power: paired differences with the largest spread a learn-or-not contender gives, sd "
                f"{pilot.spread:.1f} points (half the distance from chance to the learned runs' mean), need "
                f"{pilot.seeds} paired seeds to detect {rule.effect:g} points with power {rule.power:g} at "
                f"level {rule.alpha:.4g} (two-sided paired t test).")
    return "\n".join(lines)


def _setup_text(config: AblationConfig) -> str:
    info = environment(config.device)
    lines = [f"- Task `{t.key}`: `{parse_task(t.spec).spec()}` ({t.epochs} epochs, seeds 0-{t.seeds - 1}; "
             f"contenders {', '.join(t.contenders)})" for t in config.tasks]
    lines += [
        f"- Recipe, the same for every run: AdamW lr {config.lr:g} (cosine to {config.min_lr:g}, "
        f"{config.warmup_epochs} warm-up epoch(s) stepped per update), weight decay {config.weight_decay:g}, "
        f"batch {config.batch_size}, gradient clipping {config.clip_grad:g}, no augmentation, no label "
        "smoothing, no drop path; held-out top-1 after the last epoch.",
        f"- Swin: `{json.dumps(config.swin)}` at the canvas size; CSWin: `{json.dumps(config.cswin)}` at twice "
        "the canvas size (its stem has stride 4).",
        "- Paired by seed: same data order; same initial weights wherever the shapes allow. Intervals: t-based "
        "95% CI of the mean paired difference.",
        f"- Report written on {machine_line(info)}, {info['cpu_count']} cores, torch {info['torch']}, {info['date']}. "
        "Training times are as run (one thread per run, on a machine that may have been shared): compare "
        "contenders by MACs, or by a throughput ratio measured interleaved (`benchmarks/ablation_cost.py`).",
    ]
    return "\n".join(lines)


def _analysis_text(analysis: Analysis, config: AblationConfig) -> str:
    plan = config.analysis
    parts = [f"**{analysis.headline}**"]
    parts += [f"- {q}" for q in analysis.qualifiers]
    if analysis.recommendation:
        parts.append(f"- Secondary: {analysis.recommendation}")
    parts += ["", f"Confirmatory family (exact paired permutation tests, Holm at {plan.alpha:g}; escapes: runs ≥ "
                  f"{plan.escape:g}%, Fisher's exact test):", "", _comparison_table(analysis.family)]
    eq = analysis.equivalence
    if eq is not None:
        parts += ["", f"Equivalence, `{eq['comparison'].contender}` − `{eq['comparison'].baseline}` within "
                      f"±{eq['margin']:g} points (two one-sided paired t tests): mean {_fmt(eq['mean'], sign=True)}, "
                      f"90% CI [{_fmt(eq['low'], sign=True)}, {_fmt(eq['high'], sign=True)}], p {_p(eq['p'])} "
                      f"({'equivalent' if eq['equivalent'] else 'equivalence not shown'}; n={eq['seeds']})."]
    if analysis.secondary:
        parts += ["", "Secondary family (Holm):", "", _comparison_table(analysis.secondary)]
    if analysis.control:
        learned = ", ".join(f"{name} {k}/{n}" for name, (k, n) in analysis.control.items())
        parts += ["", f"Positive control `{plan.control_task}` (runs ≥ {plan.escape:g}%): {learned}."]
    return "\n".join(parts)


def _colour(name: str):
    """A fixed colour per contender, the same in every plot."""
    import matplotlib

    return matplotlib.colormaps["tab10"](list(CONTENDERS).index(name) % 10)


def write_report(rows: Sequence[dict], config: AblationConfig, costs: dict,
                 pilot: Optional[PilotResult] = None, planned: Optional[int] = None) -> dict[str, Path]:
    """Writes ``results.csv``, ``results.md``, ``curves.png`` and ``cost.png`` into the ablation folder.

    Args:
        rows: The finished runs (:func:`~boat_vit.ablation.runner.collect`).
        config: The ablation as it ran (at the pilot's budget).
        costs: Parameters and MACs per task and contender.
        pilot: The pilot's result, if the design has one.
        planned: Runs the ablation plans; with fewer finished the decision is marked interim.
    """
    output = Path(config.output)
    paths = dict(csv=output / RESULTS_CSV, markdown=output / RESULTS_MD, curves=output / CURVES_PNG,
                 cost=output / COST_PNG)
    escape = config.analysis.escape if config.analysis else (config.pilot.threshold if config.pilot else 75.0)
    if rows:
        table = [{k: r.get(k) for k in RESULT_FIELDS} for r in rows]
        atomic_write(paths["csv"], lambda f: _write_rows(table, f), mode="w")
    sections = [f"# Does FSLA help? Design `{config.design}`"]
    if planned is not None and len(rows) < planned:
        sections.append(f"**Interim report: {len(rows)} of {planned} runs finished.** The decision below applies "
                        "the rules to the finished runs only; it stands when every run is in.")
    if config.analysis is not None and rows:
        sections += ["## Decision (rules fixed before the results)", _analysis_text(analyse(rows, config.analysis), config)]
    premise = premise_check(config)
    if premise:
        sections += ["## Premise: receptive fields of the FSLA-off Swin", _premise_text(premise)]
    if pilot is not None and pilot.rungs:
        sections += ["## Pilot", _pilot_text(pilot, config)]
    if rows:
        summary = summarize(rows, escape)
        sections += ["## Results", _summary_table(summary, escape), "## Every run", _per_seed_tables(rows)]
    sections += ["## Setup", _setup_text(config)]
    text = "\n\n".join(sections) + "\n"
    atomic_write(paths["markdown"], lambda f: f.write(text), mode="w")
    if rows:
        _plot_curves(rows, paths["curves"])
        _plot_cost(rows, paths["cost"])
    return paths


def _write_rows(rows: Sequence[dict], file) -> None:
    import csv

    writer = csv.DictWriter(file, fieldnames=RESULT_FIELDS)
    writer.writeheader()
    writer.writerows(rows)


def _figure_bytes(figure) -> bytes:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=PLOT_DPI, format="png")
    return buffer.getvalue()


def _plot_curves(rows: Sequence[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    width = max(len({r["contender"] for r in rows if r["task"] == t}) for t in tasks)
    fig, axes = plt.subplots(len(tasks), width, figsize=(3.2 * width, 2.8 * len(tasks)), squeeze=False,
                             sharey=True)
    for row, task in enumerate(tasks):
        names = list(dict.fromkeys(r["contender"] for r in rows if r["task"] == task))
        for col in range(width):
            ax = axes[row][col]
            if col >= len(names):
                ax.axis("off")
                continue
            name = names[col]
            curves = [r["curve"] for r in rows if r["task"] == task and r["contender"] == name]
            colour = _colour(name)
            for curve in curves:
                ax.plot(np.arange(1, len(curve) + 1), curve, color=colour, alpha=0.35, linewidth=0.8)
            length = min(len(c) for c in curves)
            ax.plot(np.arange(1, length + 1), np.mean([c[:length] for c in curves], axis=0), color=colour,
                    linewidth=2)
            ax.set_title(f"{task}: {name} (n={len(curves)})", fontsize=9)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel("held-out top-1 (%)")
            if row == len(tasks) - 1:
                ax.set_xlabel("epoch")
    fig.suptitle("every seed (thin) and the mean (thick)", fontsize=10)
    fig.tight_layout()
    data = _figure_bytes(fig)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(data))


def _plot_cost(rows: Sequence[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for name in dict.fromkeys(r["contender"] for r in rows if r["task"] == task):
            mine = [r for r in rows if r["task"] == task and r["contender"] == name and r.get("macs")]
            if mine:
                ax.scatter([r["macs"] / 1e6 for r in mine], [r["final_top1"] for r in mine], s=14, alpha=0.6,
                           color=_colour(name), label=name)
        ax.set_title(f"{task}: final top-1 of every run vs MACs", fontsize=10)
        ax.set_xlabel("MMACs per image")
        ax.set_ylabel("final held-out top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    data = _figure_bytes(fig)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(data))
