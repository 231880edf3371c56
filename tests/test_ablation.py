"""The FSLA ablation's machinery on the --quick setting: pairing, resume, the report. No accuracy is asserted."""
import csv
import json
import math

import pytest
import torch

from boat_vit import ablation
from boat_vit.ablation import (
    CONTENDERS,
    CONTROL_CONTENDERS,
    MAIN_CONTENDERS,
    AblationTask,
    ablation_config,
    paired_differences,
    quick_config,
    run_ablation,
    t_confidence_interval,
)

PAIRS = AblationTask("pairs", "digit-pairs:train_size=64,heldout_size=32", ("swin", "boat_swin", "swin_wide"), 1)
CONTROL = AblationTask("control", "digit-clutter:train_size=64,heldout_size=30", ("swin", "boat_swin"), 1)


def _config(output, **overrides):
    values = dict(tasks=(PAIRS, CONTROL), seeds=2, verbose=False)
    values.update(overrides)
    return quick_config(str(output), **values)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    output = tmp_path_factory.mktemp("ablation")
    return output, run_ablation(_config(output))


def test_one_run_per_task_contender_and_seed(finished):
    output, rows = finished
    expected = {(t.key, c, s) for t in (PAIRS, CONTROL) for c in t.contenders for s in range(2)}
    assert {(r["task"], r["contender"], r["seed"]) for r in rows} == expected
    for task, name, seed in expected:
        folder = output / task / name / f"seed{seed}"
        assert (folder / "summary.json").exists() and (folder / "last.pth").exists()
        assert json.loads((folder / "plan.json").read_text())["seed"] == seed
    with open(output / "results.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(expected)
    for picture in ("curves.png", "cost.png"):
        assert (output / picture).stat().st_size > 0
    assert sorted(p.name.split("-")[0] for p in (output / "examples").iterdir()) == ["control"] * 4 + ["pairs"] * 4


def test_table_has_a_row_per_task_and_contender(finished):
    output, _ = finished
    table = [line for line in (output / "results.md").read_text().splitlines() if line.startswith("| pairs")
             or line.startswith("| control")]
    assert [line.split(" | ")[:2] for line in table] == [
        ["| pairs", "swin"], ["| pairs", "boat_swin"], ["| pairs", "swin_wide"],
        ["| control", "swin"], ["| control", "boat_swin"],
    ]
    assert "baseline" in table[0] and "(n=2)" in table[1] and table[1].endswith("| 2 |")


def test_runs_are_paired_by_seed(finished):
    """Same data and seed; the contenders of a family start from the baseline's initial weights."""
    output, _ = finished
    plan = lambda name, seed: json.loads((output / "pairs" / name / f"seed{seed}" / "plan.json").read_text())
    for seed in range(2):
        swin, boat = plan("swin", seed), plan("boat_swin", seed)
        assert swin["pretrained_file"] == boat["pretrained_file"] is not None
        assert {k: v for k, v in swin.items() if k not in ("model_kwargs", "contender")} == \
               {k: v for k, v in boat.items() if k not in ("model_kwargs", "contender")}
        assert plan("swin_wide", seed)["pretrained_file"] is None  # other shapes: only the seed is shared
        assert plan("swin_wide", seed)["model_kwargs"]["embed_dim"] > swin["model_kwargs"]["embed_dim"]
    init = [torch.load(output / "init" / f"pairs-swin-seed{s}.pth", weights_only=True) for s in range(2)]
    assert not torch.equal(init[0]["patch_embed.proj.weight"], init[1]["patch_embed.proj.weight"])


def test_shared_initial_weights_reach_both_models(tmp_path):
    """Before training, BOAT-Swin holds exactly its baseline's weights wherever the two have a tensor."""
    config = _config(tmp_path, seeds=1)
    runs, _ = ablation._plan(config)
    swin_run, boat_run = (next(r for r in runs if r.task.key == "pairs" and r.contender == c) for c in ("swin", "boat_swin"))
    ablation._write_init(boat_run)
    from boat_vit.classification import create_classifier

    models = {}
    for run in (swin_run, boat_run):
        model, report = create_classifier(ablation.FAMILY_MODELS["swin"], 2, str(run.init_file), **run.kwargs)
        assert all(".fsla." in k or ".norm_fsla." in k for k in report.initial)
        models[run.contender] = model.state_dict()
    shared = set(models["swin"]) & set(models["boat_swin"])
    assert shared and all(torch.equal(models["swin"][k], models["boat_swin"][k]) for k in shared)


def test_resume_skips_finished_runs_and_continues_interrupted_ones(tmp_path, capsys):
    config = _config(tmp_path, tasks=(PAIRS,), seeds=1, verbose=True)
    run_ablation(config)
    finished = tmp_path / "pairs" / "swin" / "seed0" / "summary.json"
    stamp = finished.stat().st_mtime_ns
    interrupted = tmp_path / "pairs" / "boat_swin" / "seed0"
    (interrupted / "summary.json").unlink()  # as if killed after its last checkpoint
    capsys.readouterr()
    rows = run_ablation(config)
    out = capsys.readouterr().out
    assert "pairs/boat_swin/seed0: resuming" in out
    assert "pairs/swin/seed0: training" not in out and "swin_wide/seed0: training" not in out
    assert finished.stat().st_mtime_ns == stamp
    assert len(rows) == 3 and (interrupted / "summary.json").exists()


def test_other_settings_in_the_same_folder_are_refused(finished):
    output, _ = finished
    with pytest.raises(ValueError, match="was run with other settings"):
        run_ablation(_config(output, lr=1e-4), report_only=True)


def test_report_only_reads_finished_runs(finished, tmp_path):
    output, rows = finished
    (output / "results.md").unlink()
    again = run_ablation(_config(output), report_only=True)
    assert [r["final_top1"] for r in again] == [r["final_top1"] for r in rows]
    assert (output / "results.md").exists()


def test_paired_differences_match_seeds():
    rows = [dict(task="t", contender=c, seed=s, final_top1=a)
            for c, s, a in [("b", 1, 60.0), ("a", 0, 50.0), ("b", 0, 55.0), ("a", 1, 52.0), ("b", 2, 70.0)]]
    assert paired_differences(rows, "t", "b", "a") == [5.0, 8.0]  # seed 2 has no baseline


def test_t_confidence_interval():
    mean, low, high = t_confidence_interval([1.0, 2.0, 3.0])
    half = 4.302652729749464 / math.sqrt(3)  # t(0.975, df=2) * sd 1 / sqrt(3)
    assert mean == 2.0 and low == pytest.approx(2 - half) and high == pytest.approx(2 + half)
    assert math.isnan(t_confidence_interval([4.0])[1])


def test_scaled_cswin_investigation_really_changes_the_scale(tmp_path):
    task = AblationTask("pairs", PAIRS.spec, ("cswin", "boat_cswin_scaled"), 1)
    runs, _ = ablation._plan(_config(tmp_path, tasks=(task,), seeds=1))
    scaled = next(r for r in runs if r.contender == "boat_cswin_scaled")
    model = ablation._build("cswin", scaled.kwargs, 2)
    head_dim = ablation.CSWIN_QUICK["embed_dim"] // ablation.CSWIN_QUICK["num_heads"][0]
    assert {m.scale for m in model.modules() if hasattr(m, "grouping")} == {head_dim**-0.5}


def test_width_step_keeps_heads_dividing_every_stage():
    assert ablation._width_step((2, 4, 8)) == 2
    assert ablation._width_step((3, 6, 12, 24)) == 3
    assert ablation._width_step((4, 4)) == 4


def test_command_line_options(capsys):
    config = ablation_config(quick=True, tasks=["pairs"], contenders=["swin", "boat_swin"], seeds=4, output="x",
                             epochs=3)
    assert config.output == "x" and config.seeds == 4 and [t.key for t in config.tasks] == ["pairs"]
    assert config.tasks[0].epochs == 3
    assert config.tasks[0].contenders == ("swin", "boat_swin")
    default = ablation_config()
    assert default.seeds == 3 and [t.contenders for t in default.tasks] == [MAIN_CONTENDERS, CONTROL_CONTENDERS]
    assert set(MAIN_CONTENDERS) | set(CONTROL_CONTENDERS) < set(CONTENDERS)  # and the investigations
    investigation = ablation_config(contenders=["boat_cswin_scaled", "boat_swin_group16"])
    assert all(t.contenders == ("cswin", "swin", "boat_cswin_scaled", "boat_swin_group16") for t in investigation.tasks)
    for bad in (dict(tasks=["nope"]), dict(contenders=["vit"])):
        with pytest.raises(ValueError, match="unknown"):
            ablation_config(**bad)
    from boat_vit.cli import main

    assert main(["ablate", "--contenders", "vit"]) == 2
    assert "unknown contenders ['vit']" in capsys.readouterr().err
