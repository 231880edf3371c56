"""The FSLA ablation's machinery on tiny settings: pairing, the pilot rule, jobs-independence, resume, the
premise, the statistics against known values, the decision rules and the report. No accuracy is asserted."""
import csv
import dataclasses
import itertools
import json
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from boat_vit.ablation import (
    CONTENDERS,
    AblationTask,
    Pilot,
    PilotFailed,
    PilotResult,
    apply_pilot,
    design_config,
    narrow,
    pilot_passes,
    quick_config,
    run_ablation,
    run_pilot,
)
from boat_vit.ablation import analysis, cost, design, planning, receptive_field, statistics
from boat_vit.classification import TrainConfig
from boat_vit.classification.tasks import generate_split, parse_task
from boat_vit.errors import ConfigError
from boat_vit.clustering import plan_groups

SPLITS = "train_size=64,heldout_size=32"
FAR = AblationTask("far", f"{design.FAR_SPEC},{SPLITS}", ("swin", "boat_swin", "boat_swin_norm"), 1, 2)
NEAR = AblationTask("near", f"{design.NEAR_SPEC},{SPLITS}", ("swin", "boat_swin"), 1, 1)
SECONDARY = AblationTask("cswin", f"{design.FAR_SPEC},{SPLITS}", ("cswin", "boat_cswin_scaled"), 1, 1)
PASSING_PILOT = Pilot(task="far", contender="swin_global", ladder=(1,), seeds=1, required=1, threshold=0.0,
                      secondary="cswin", fallback_spec=f"digit-pairs:{SPLITS}")


def _config(output, **overrides):
    values = dict(tasks=(FAR, NEAR, SECONDARY), pilot=PASSING_PILOT, verbose=False)
    values.update(overrides)
    return quick_config(str(output), **values)


def _metrics(folder):
    with open(folder / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "images_per_s"} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    output = tmp_path_factory.mktemp("ablation")
    rows, config, pilot = run_ablation(_config(output, jobs=2))
    return output, rows, config, pilot


# ---- runs, pairing, pilot, jobs, resume ----------------------------------------------------------------


def test_one_run_per_task_contender_and_seed(finished):
    output, rows, config, _ = finished
    expected = {(t.key, c, s) for t in (FAR, NEAR, SECONDARY) for c in t.contenders for s in range(t.seeds)}
    assert {(r["task"], r["contender"], r["seed"]) for r in rows} == expected
    for task, name, seed in expected:
        folder = output / task / name / f"seed{seed}"
        assert (folder / "summary.json").exists() and (folder / "last.pth").exists()
        assert json.loads((folder / "plan.json").read_text())["seed"] == seed
    with open(output / "results.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(expected)
    for picture in ("curves.png", "cost.png"):
        assert (output / picture).stat().st_size > 0
    assert sorted(p.name.split("-")[0] for p in (output / "examples").iterdir()) == ["cswin"] * 4 + ["far"] * 4 + ["near"] * 4


def test_runs_are_paired_by_seed(finished):
    """Same data, seed and initial weights; only the model arguments and the contender's name differ."""
    output = finished[0]
    plan = lambda name, seed: json.loads((output / "far" / name / f"seed{seed}" / "plan.json").read_text())
    for seed in range(2):
        swin, boat, norm = plan("swin", seed), plan("boat_swin", seed), plan("boat_swin_norm", seed)
        assert swin["pretrained_file"] == boat["pretrained_file"] == norm["pretrained_file"] is not None
        same = lambda record: {k: v for k, v in record.items() if k not in ("model_kwargs", "contender")}
        assert same(swin) == same(boat) == same(norm)
        assert norm["model_kwargs"] == dict(boat["model_kwargs"], fsla_grouping="norm")
    init = [torch.load(output / "init" / f"far-swin-seed{s}.pth", weights_only=True) for s in range(2)]
    assert not torch.equal(init[0]["patch_embed.proj.weight"], init[1]["patch_embed.proj.weight"])


def test_fsla_contenders_start_identical(tmp_path):
    """Before training, every Swin contender holds the baseline's weights, and the FSLA contenders also the
    same FSLA weights (built after seeding, as training builds them): they differ only in how FSLA groups."""
    from boat_vit.classification import create_classifier
    from boat_vit.engine import seed_everything

    task = AblationTask("far", FAR.spec, design.LONG_RANGE_CONTENDERS, 1, 1)
    runs, _ = planning.plan_runs(_config(tmp_path, tasks=(task,)))
    planning.write_init(runs[0])
    states = {}
    for run in runs:
        seed_everything(run.seed)
        model, report = create_classifier(design.SWIN_MODEL, 2, str(run.init_file), **run.kwargs)
        assert all(".fsla." in k or ".norm_fsla." in k for k in report.initial)
        states[run.contender] = model.state_dict()
    fsla = [states[name] for name in design.LONG_RANGE_CONTENDERS if name != "swin"]
    assert all(state.keys() == fsla[0].keys() and all(torch.equal(state[k], fsla[0][k]) for k in state)
               for state in fsla)
    shared = set(states["swin"]) & set(fsla[0])
    assert shared and all(torch.equal(states["swin"][k], fsla[0][k]) for k in shared)


def test_results_do_not_depend_on_jobs(finished, tmp_path):
    """The module's ablation ran two jobs at a time; one at a time gives every run's metrics bit for bit."""
    output = finished[0]
    run_ablation(_config(tmp_path, tasks=(FAR,), pilot=None, jobs=1))
    for name, seed in itertools.product(FAR.contenders, range(FAR.seeds)):
        folder = f"far/{name}/seed{seed}"
        assert _metrics(tmp_path / folder) == _metrics(output / folder)


def test_pilot_sets_the_budget_and_is_recorded(finished):
    output, _, config, pilot = finished
    assert pilot.epochs == 1 and all(task.epochs == 1 for task in config.tasks)
    recorded = json.loads((output / "pilot.json").read_text())
    assert recorded["epochs"] == 1 and recorded["rule"]["contender"] == "swin_global"
    assert (output / "pilot" / "1ep" / "far" / "swin_global" / "seed0" / "summary.json").exists()
    assert "## Pilot" in (output / "results.md").read_text()


def test_pilot_rule():
    assert pilot_passes([80.0, 60.0, 75.0], 75.0, 2)
    assert not pilot_passes([80.0, 74.9, 50.0], 75.0, 2)
    assert pilot_passes([50.0], 0.0, 1)


def test_a_pilot_that_never_passes_climbs_the_ladder_and_stops_the_main_run(tmp_path):
    failing = dataclasses.replace(PASSING_PILOT, ladder=(1, 2), threshold=100.1, secondary=None)
    config = _config(tmp_path, tasks=(FAR,), pilot=failing)
    result = run_pilot(config)
    assert result.epochs is None and [r["epochs"] for r in result.rungs] == [1, 2]
    assert (tmp_path / "pilot" / "2ep" / "far" / "swin_global" / "seed0" / "summary.json").exists()
    with pytest.raises(PilotFailed, match=r"fewer than 1 of 1 seeds at every budget tried \(epochs: 1, 2\)"):
        run_ablation(config)
    assert not (tmp_path / "far").exists()  # no main run
    report = (tmp_path / "results.md").read_text()  # the pilot and the decision not to run are reported
    assert "## Pilot" in report and "No budget passed" in report and "inconclusive" in report


def test_applying_the_pilot_sets_epochs_seeds_and_the_secondary_task():
    config = design_config()
    learned = PilotResult(24, True, (), seeds=17, spread=22.0)
    applied = apply_pilot(config, learned)
    assert {t.key: (t.epochs, t.seeds) for t in applied.tasks} == {"far": (24, 17), "near": (24, 3), "cswin": (24, 10)}
    assert applied.tasks[2].spec == design.FAR_SPEC
    few = apply_pilot(config, PilotResult(12, False, (), seeds=4, spread=5.0))
    assert few.tasks[0].seeds == design.PRIMARY_SEEDS  # never fewer than the design's
    assert few.tasks[2].spec == design.FIRST_PAIRS_SPEC  # CSWin did not learn far: the fallback


def test_resume_skips_finished_runs_and_continues_interrupted_ones(tmp_path, capsys):
    task = AblationTask("far", FAR.spec, ("swin", "boat_swin"), 2, 1)
    config = _config(tmp_path, tasks=(task,), pilot=None, verbose=True)
    run_ablation(config)
    finished = tmp_path / "far" / "swin" / "seed0" / "summary.json"
    stamp = finished.stat().st_mtime_ns
    interrupted = tmp_path / "far" / "boat_swin" / "seed0"
    before = _metrics(interrupted)
    (interrupted / "summary.json").unlink()  # as if killed after its last checkpoint
    capsys.readouterr()
    rows, _, _ = run_ablation(config)
    out = capsys.readouterr().out
    assert "far/boat_swin/seed0: resuming" in out and "far/swin/seed0: training" not in out
    assert finished.stat().st_mtime_ns == stamp
    assert len(rows) == 2 and (interrupted / "summary.json").exists() and _metrics(interrupted) == before


def test_other_settings_in_the_same_folder_are_refused(finished):
    output = finished[0]
    with pytest.raises(ValueError, match="was run with other settings"):
        run_ablation(_config(output, lr=1e-4), report_only=True)


def test_report_only_reads_finished_runs(finished):
    output, rows, _, _ = finished
    (output / "results.md").unlink()
    again, _, _ = run_ablation(_config(output), report_only=True)
    assert [r["final_top1"] for r in again] == [r["final_top1"] for r in rows]
    text = (output / "results.md").read_text()
    for section in ("## Decision", "## Premise", "## Pilot", "## Results", "## Every run", "## Setup"):
        assert section in text
    assert "| far | boat_swin − swin | does FSLA give the windowed Swin the range it lacks? | 2 |" in text


def test_a_report_of_unfinished_runs_says_it_is_interim(finished, tmp_path):
    import shutil

    output = finished[0]
    copy = tmp_path / "copy"
    shutil.copytree(output, copy)
    (copy / "far" / "boat_swin" / "seed1" / "summary.json").unlink()
    rows, _, _ = run_ablation(_config(copy), report_only=True)
    planned = len(finished[1])
    assert len(rows) == planned - 1
    assert f"**Interim report: {planned - 1} of {planned} runs finished.**" in (copy / "results.md").read_text()
    assert "Interim" not in (output / "results.md").read_text()


def test_report_only_without_runs_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"no ablation in .*none to report; run it first \(without report_only\)"):
        run_ablation(_config(tmp_path / "none"), report_only=True)


def _plant_link(path, elsewhere):
    """A symbolic link at ``path`` to a new file in ``elsewhere``; returns that file."""
    target = elsewhere / f"{path.parent.name}-{path.name}"
    target.write_bytes(b"someone else's file")
    path.unlink(missing_ok=True)
    path.symlink_to(target)
    return target


def test_planted_links_at_the_reports_pilot_and_examples_are_replaced(finished, tmp_path):
    """Every file the report writes (results, plots, pilot.json, example pictures) replaces a link in its
    place, dangling or not; the file a link points to is left as it was."""
    import shutil

    copy, elsewhere = tmp_path / "copy", tmp_path / "elsewhere"
    shutil.copytree(finished[0], copy)
    elsewhere.mkdir()
    examples = sorted((copy / "examples").iterdir())[:2]
    planted = [copy / name for name in ("results.csv", "results.md", "curves.png", "cost.png", "pilot.json")]
    targets = [_plant_link(path, elsewhere) for path in (*planted, examples[0])]
    examples[1].unlink()
    examples[1].symlink_to(elsewhere / "nowhere.png")
    run_ablation(_config(copy), report_only=True)
    assert all(target.read_bytes() == b"someone else's file" for target in targets)
    assert not (elsewhere / "nowhere.png").exists()
    for path in (*planted, *examples):
        assert not path.is_symlink() and path.stat().st_size > 0, path
    for path in (copy / "results.csv", *examples):
        assert path.read_bytes() == (finished[0] / path.relative_to(copy)).read_bytes(), path


def test_planted_links_at_a_runs_plan_and_initial_weights_are_replaced(tmp_path):
    """A run's plan.json and its initial weights replace a link in their place; a link to another plan is
    refused in one line; the files the links point to are left as they were."""
    task = AblationTask("far", FAR.spec, ("swin",), 1, 1)
    config = _config(tmp_path / "ablation", tasks=(task,), pilot=None)
    (run,), _ = planning.plan_runs(config)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run.folder.mkdir(parents=True)
    other_plan = _plant_link(run.folder / "plan.json", elsewhere)
    with pytest.raises(ConfigError, match="plan.json cannot be read as a run's plan .*; use another output or remove"):
        run_ablation(config)
    other_plan.write_text('{"seed": 99}')
    with pytest.raises(ConfigError, match="was run with other settings; use another output or remove it"):
        run_ablation(config)
    assert other_plan.read_text() == '{"seed": 99}'
    same_plan = elsewhere / "same-plan.json"
    same_plan.write_text(json.dumps(planning.plan_record(planning.train_config(config, run), run)))
    (run.folder / "plan.json").unlink()
    (run.folder / "plan.json").symlink_to(same_plan)
    run.init_file.parent.mkdir(parents=True)
    init_target = _plant_link(run.init_file, elsewhere)
    plan_text = same_plan.read_text()
    rows, _, _ = run_ablation(config)
    assert len(rows) == 1
    assert same_plan.read_text() == plan_text and init_target.read_bytes() == b"someone else's file"
    assert not (run.folder / "plan.json").is_symlink() and not run.init_file.is_symlink()
    assert "patch_embed.proj.weight" in torch.load(run.init_file, weights_only=True)


# ---- the design ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fields():
    config = design_config()
    task = parse_task(design.FAR_SPEC)
    kwargs = planning.contender_kwargs(config, task, "swin")
    torch.manual_seed(0)
    model = cost.build_model("swin", kwargs, 2)
    return receptive_field.field_strengths(model, kwargs["img_size"])


def test_premise_far_pairs_never_meet_in_a_final_token(fields):
    """The FSLA-off Swin of the long-range design: no final token sees any pixel of both far digits, while
    near digits share tokens that see both whole. Holds for every held-out image of both tasks."""
    seen = fields > receptive_field.RF_TOLERANCE
    far = receptive_field.pair_coverage(seen, generate_split(parse_task(design.FAR_SPEC), "val").digit_boxes)
    near = receptive_field.pair_coverage(seen, generate_split(parse_task(design.NEAR_SPEC), "val").digit_boxes)
    assert far["touching"].max() == 0
    assert near["covering"].min() > 0
    assert seen.sum(axis=(1, 2)).max() < seen.shape[1] * seen.shape[2]  # no token sees the whole canvas


def test_premise_does_not_hang_on_the_tolerance(fields):
    """Between timm's masked-window leakage (e**-100) and real paths lies a wide gap: the tolerance sits in it."""
    assert not ((fields > 1e-35) & (fields < 1e-15)).any()
    assert 1e-35 < receptive_field.RF_TOLERANCE < 1e-15


def test_receptive_field_of_a_lone_window_layer():
    """Patch 2, window 4, one stage of one block (no shift): a token sees exactly its 8x8-pixel window."""
    torch.manual_seed(0)
    model = cost.build_model("swin", dict(img_size=16, patch_size=2, window_size=4, embed_dim=8, depths=(1,),
                                          num_heads=(2,), fsla_stages=False), 2)
    seen = receptive_field.receptive_fields(model, 16)
    assert seen.shape == (64, 16, 16)
    expected = np.zeros((16, 16), dtype=bool)
    expected[8:16, 0:8] = True
    assert np.array_equal(seen[4 * 8 + 1], expected)  # token (4, 1): the window of rows 4-7, columns 0-3


def test_fsla_is_sparse_in_the_long_range_design():
    """A query sees its group plus the sibling overlap: at most about 10% of stage 1's tokens."""
    swin = design.LOCAL_SWIN
    tokens = (32 // swin["patch_size"]) ** 2
    plan = plan_groups(tokens, swin["fsla_group_size"])
    assert (plan.group_size + swin["fsla_overlap"]) / tokens <= 0.1
    model = cost.build_model("swin", dict(swin, img_size=32), 2)
    assert [name for name, m in model.named_modules() if type(m).__name__ == "FeatureSpaceLocalAttention"] == [
        "layers.0.blocks.1.fsla"]  # stage 2 (one regular block) has none


def test_first_design_is_the_first_experiment():
    first = design_config("first")
    assert first.output == "runs/ablation" and first.pilot is None and first.analysis is None
    assert [(t.key, t.spec, t.epochs, t.seeds) for t in first.tasks] == [("pairs", "digit-pairs", 8, 3),
                                                                         ("control", "digit-clutter", 5, 3)]
    assert first.tasks[0].contenders == ("swin", "boat_swin", "swin_global", "boat_swin_random", "swin_wide",
                                         "cswin", "boat_cswin")
    assert first.swin == dict(patch_size=2, window_size=4, embed_dim=32, depths=(2, 2, 2), num_heads=(2, 4, 8))


def test_narrowing_tasks_contenders_epochs_and_seeds():
    config = narrow(design_config(), tasks=["far"], contenders=["boat_swin_norm"], epochs=3, seeds=4)
    assert [(t.key, t.contenders, t.epochs, t.seeds) for t in config.tasks] == [
        ("far", ("swin", "boat_swin_norm"), 3, 4)]
    assert config.pilot is None  # an explicit budget replaces the pilot
    assert narrow(design_config(), seeds=2).pilot is not None
    for bad in (dict(tasks=["nope"]), dict(contenders=["vit"])):
        with pytest.raises(ValueError, match="unknown"):
            narrow(design_config(), **bad)


def test_scaled_cswin_really_changes_the_scale(tmp_path):
    task = AblationTask("cswin", SECONDARY.spec, ("cswin", "boat_cswin_scaled"), 1, 1)
    runs, _ = planning.plan_runs(_config(tmp_path, tasks=(task,)))
    scaled = next(r for r in runs if r.contender == "boat_cswin_scaled")
    model = cost.build_model("cswin", scaled.kwargs, 2)
    head_dim = design.QUICK_CSWIN["embed_dim"] // design.QUICK_CSWIN["num_heads"][0]
    assert {m.scale for m in model.modules() if hasattr(m, "grouping")} == {head_dim**-0.5}


def test_width_step_keeps_heads_dividing_every_stage():
    assert cost.width_step((2, 4, 8)) == 2
    assert cost.width_step((3, 6, 12, 24)) == 3
    assert cost.width_step((4, 4)) == 4


def test_training_throughput_is_measured_for_every_model():
    models = {name: ("swin", dict(design.QUICK_SWIN, img_size=32, **CONTENDERS[name].overrides))
              for name in ("swin", "boat_swin")}
    measured = cost.training_throughput(models, 2, batch_size=4, repeats=2, warmup=0)
    assert list(measured) == ["swin", "boat_swin"]
    assert measured["swin"][1] == 1.0 and all(rate > 0 and ratio > 0 for rate, ratio in measured.values())


# ---- statistics against known values -------------------------------------------------------------------


def _sign_flip_p(differences):
    """Reference: the two-sided sign-flip p-value by enumerating every sign pattern."""
    observed = abs(np.mean(differences))
    means = [abs(np.mean(np.array(signs) * differences)) for signs in itertools.product((1, -1), repeat=len(differences))]
    return np.mean([m >= observed - 1e-12 for m in means])


@pytest.mark.parametrize("differences", [[1.0, 2, 3, 4, 5], [3.0, -1, 4, 1, -5, 9, 2, 6], [40.0, 0.5, -0.5, 45, 0]])
def test_paired_permutation_test_is_exact(differences):
    assert statistics.paired_permutation_test(differences) == pytest.approx(_sign_flip_p(np.array(differences)))


def test_paired_permutation_test_known_values():
    assert statistics.paired_permutation_test([1.0, 2, 3, 4, 5]) == pytest.approx(2 / 32)
    assert statistics.paired_permutation_test([0.0, 0.0]) == 1.0
    assert math.isnan(statistics.paired_permutation_test([]))


def test_wilcoxon_known_value():
    assert statistics.wilcoxon_test([1.0, 2, 3, 4, 5]) == pytest.approx(0.0625)  # exact: 2 of 32 rank-sign sets
    assert math.isnan(statistics.wilcoxon_test([0.0, 0.0, 0.0]))


def test_holm_known_values():
    # R: p.adjust(c(0.01, 0.04, 0.03, 0.005), "holm") = 0.03 0.06 0.06 0.02
    assert statistics.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert statistics.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1, monotone
    adjusted = statistics.holm([0.02, math.nan, 0.01])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)


def test_fisher_known_value():
    # Fisher's tea-tasting table [[3, 1], [1, 3]]: two-sided p = 34/70
    assert statistics.fisher_escape_test(3, 4, 1, 4) == pytest.approx(34 / 70)
    assert statistics.fisher_escape_test(10, 10, 0, 10) == pytest.approx(2 / math.comb(20, 10))


def test_tost_is_two_one_sided_t_tests():
    differences = [1.0, -2.0, 0.5, 1.5, -0.5, 0.0]
    p, lower, upper = statistics.tost_paired(differences, margin=3.0)
    mean, sd, n = np.mean(differences), np.std(differences, ddof=1), len(differences)
    t_lower, t_upper = (mean + 3.0) / (sd / math.sqrt(n)), (mean - 3.0) / (sd / math.sqrt(n))
    assert lower == pytest.approx(stats.t.sf(t_lower, n - 1)) and upper == pytest.approx(stats.t.cdf(t_upper, n - 1))
    assert p == max(lower, upper) < 0.05
    assert statistics.tost_paired([10.0, 12.0, 9.0], margin=3.0)[0] > 0.5
    assert math.isnan(statistics.tost_paired([1.0], margin=3.0)[0])


def test_t_confidence_interval():
    mean, low, high = statistics.t_confidence_interval([1.0, 2.0, 3.0])
    half = 4.302652729749464 / math.sqrt(3)  # t(0.975, df=2) * sd 1 / sqrt(3)
    assert mean == 2.0 and low == pytest.approx(2 - half) and high == pytest.approx(2 + half)
    assert math.isnan(statistics.t_confidence_interval([4.0])[1])


def test_power_of_the_paired_t_test_against_an_integral():
    """Power = P(|T| > t_crit) with T = (Z + d sqrt(n)) / sqrt(V / df), integrated over V ~ chi2(df)."""
    n, difference, sd, alpha = 10, 1.0, 1.0, 0.05
    df, shift = n - 1, difference / sd * math.sqrt(n)
    critical = stats.t.ppf(1 - alpha / 2, df)

    def given_v(v):
        scale = math.sqrt(v / df)
        return (stats.norm.sf(critical * scale - shift) + stats.norm.cdf(-critical * scale - shift)) * stats.chi2.pdf(v, df)

    reference, _ = integrate.quad(given_v, 0, np.inf)
    assert statistics.paired_t_power(n, difference, sd, alpha) == pytest.approx(reference, abs=1e-7)
    assert statistics.paired_t_power(n, difference, sd, alpha) == pytest.approx(0.803, abs=5e-4)


def test_seeds_for_power_and_minimum_detectable_difference():
    assert statistics.seeds_for_power(1.0, 1.0, 0.05, 0.8) == 10  # 9 pairs give 0.76
    assert statistics.paired_t_power(9, 1.0, 1.0, 0.05) < 0.8 <= statistics.paired_t_power(10, 1.0, 1.0, 0.05)
    detectable = statistics.minimum_detectable_difference(10, 1.0, 0.05, 0.8)
    assert statistics.paired_t_power(10, detectable, 1.0, 0.05) == pytest.approx(0.8, abs=2e-3)
    assert statistics.paired_t_power(2, 1000.0, 1.0, 0.05) == 1.0  # far in the tail


def test_paired_differences_match_seeds():
    rows = [dict(task="t", contender=c, seed=s, final_top1=a)
            for c, s, a in [("b", 1, 60.0), ("a", 0, 50.0), ("b", 0, 55.0), ("a", 1, 52.0), ("b", 2, 70.0)]]
    assert statistics.paired_differences(rows, "t", "b", "a") == [5.0, 8.0]  # seed 2 has no baseline


# ---- the decision rules --------------------------------------------------------------------------------


def _rows(far: dict, near: float = 95.0, seeds: int = 10) -> list[dict]:
    rows = []
    for name, values in far.items():
        rows += [dict(task="far", contender=name, seed=s, final_top1=v) for s, v in enumerate(values)]
        rows += [dict(task="near", contender=name, seed=s, final_top1=near) for s in range(3)]
    return rows


CHANCE = [50.0, 49.8, 50.2, 50.1, 49.9, 50.0, 50.3, 49.7, 50.0, 50.1]
LEARNED = [96.0, 94.5, 97.1, 95.0, 93.8, 96.4, 95.5, 94.9, 96.8, 95.2]
LEARNED_TOO = [v + e for v, e in zip(LEARNED, [0.3, -0.2, 0.1, -0.4, 0.2, 0.0, -0.1, 0.3, -0.3, 0.1])]
PLAN = design.LONG_RANGE_ANALYSIS


def test_global_not_learning_makes_everything_inconclusive():
    result = analysis.analyse(_rows(dict(swin=CHANCE, boat_swin=LEARNED, boat_swin_random=CHANCE,
                                         boat_swin_norm=CHANCE, swin_global=CHANCE)), PLAN)
    assert result.verdict == analysis.INCONCLUSIVE and result.headline.startswith("Inconclusive: global attention")


def test_fsla_learning_far_pairs_supports_the_claim():
    result = analysis.analyse(_rows(dict(swin=CHANCE, boat_swin=LEARNED, boat_swin_random=CHANCE,
                                         boat_swin_norm=CHANCE, swin_global=LEARNED_TOO)), PLAN)
    assert result.verdict == analysis.SUPPORTED
    assert all(r.significant(PLAN.alpha) for r in result.family)
    assert result.family[0].p == pytest.approx(2 / 1024) and result.family[0].p_adjusted == pytest.approx(8 / 1024)
    assert any("Content groups beat both" in q for q in result.qualifiers)
    assert result.equivalence["equivalent"]


def test_fsla_at_chance_while_global_learns_refutes_the_claim():
    result = analysis.analyse(_rows(dict(swin=CHANCE, boat_swin=CHANCE[::-1], boat_swin_random=CHANCE,
                                         boat_swin_norm=CHANCE, swin_global=LEARNED)), PLAN)
    assert result.verdict == analysis.REFUTED and result.family[0].high < PLAN.effect
    assert any("falls short of global attention" in q for q in result.qualifiers)


def test_fsla_learning_half_the_time_is_inconclusive():
    """Five of ten seeds learn: the sign-flip p is about 2/32 (only the five large differences matter)."""
    half = [96.0, 50.1, 95.0, 49.8, 94.0, 50.3, 95.5, 49.9, 96.2, 50.0]
    result = analysis.analyse(_rows(dict(swin=CHANCE, boat_swin=half, boat_swin_random=CHANCE,
                                         boat_swin_norm=CHANCE, swin_global=LEARNED)), PLAN)
    assert result.family[-1].significant(PLAN.alpha) and not result.family[0].significant(PLAN.alpha)
    assert result.verdict == analysis.INCONCLUSIVE and "neither significant nor ruled out" in result.headline


def test_few_seeds_cannot_pass_the_check():
    """With five pairs the smallest exact two-sided p is 2/32: global attention's check cannot succeed."""
    result = analysis.analyse(_rows(dict(swin=CHANCE[:5], boat_swin=LEARNED[:5], boat_swin_random=CHANCE[:5],
                                         boat_swin_norm=CHANCE[:5], swin_global=LEARNED[:5])), PLAN)
    assert result.family[-1].p == pytest.approx(2 / 32) and result.verdict == analysis.INCONCLUSIVE


def test_a_contender_failing_the_positive_control_is_flagged():
    rows = _rows(dict(swin=CHANCE, boat_swin=LEARNED, boat_swin_random=CHANCE, boat_swin_norm=CHANCE,
                      swin_global=LEARNED))
    for row in rows:
        if row["task"] == "near" and row["contender"] == "boat_swin_norm" and row["seed"] == 1:
            row["final_top1"] = 50.0
    result = analysis.analyse(rows, PLAN)
    assert result.control["boat_swin_norm"] == (2, 3)
    assert any(q.startswith("Positive control: boat_swin_norm did not learn") for q in result.qualifiers)


# ---- the command line ----------------------------------------------------------------------------------


def test_command_line_options(capsys, tmp_path):
    from boat_vit.cli import main

    assert main(["ablate", "--contenders", "vit"]) == 2
    assert "unknown contenders ['vit']" in capsys.readouterr().err
    assert main(["ablate", "--design", "first", "--tasks", "far"]) == 2
    assert "unknown tasks ['far']; choose from ['pairs', 'control']" in capsys.readouterr().err
    assert main(["ablate", "--output", str(tmp_path / "none"), "--report-only"]) == 2
    assert "to report; run it first (without --report-only)" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_runs_end_to_end(tmp_path, capsys):
    from boat_vit.cli import main

    assert main(["ablate", "--quick", "--jobs", "2", "--output", str(tmp_path)]) == 0
    assert "results in" in capsys.readouterr().out
    assert (tmp_path / "results.md").exists() and (tmp_path / "pilot.json").exists()


OPTIONS_ADDED_SINCE_THE_FIRST_EXPERIMENT = ("pretrained",)


def test_first_design_plans_every_run_as_the_first_experiment_did():
    """The plan records (what each run computes) of ``--design first`` are those the first experiment's code
    wrote, so its 33 runs reproduce, and its folders resume. The digest was taken from that code."""
    import hashlib

    config = design_config("first")
    runs, _ = planning.plan_runs(config)
    records = {run.label: planning.plan_record(planning.train_config(config, run), run) for run in runs}
    for record in records.values():  # options added since, at their defaults, change nothing the run computes
        for key in OPTIONS_ADDED_SINCE_THE_FIRST_EXPERIMENT:
            assert record.pop(key) == getattr(TrainConfig, key)
    text = json.dumps(records, indent=1, sort_keys=True)
    assert len(records) == 33
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == "9307fc3649e822ec"


def test_a_plan_record_from_before_a_new_training_option_still_matches():
    record = {"epochs": 12, "pretrained": False, "pretrained_file": "/a/init/far-swin-seed0.pth", "task": "far"}
    stored = {"epochs": 12, "pretrained_file": "runs/x/init/far-swin-seed0.pth", "task": "far"}
    assert planning.same_plan(stored, record)  # the new option at its default changes nothing
    assert not planning.same_plan(stored, dict(record, pretrained=True))
    assert not planning.same_plan(stored, dict(record, epochs=24))
    assert not planning.same_plan(dict(stored, epochs=24), record)
