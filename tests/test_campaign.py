"""Campaigns: the spec, the runner (resume, failures), executors, results.csv and the report.

Every campaign here trains a tiny random Llama (conftest ``tiny_model_dir``) for two steps, so a run
takes a second or two; what is checked is the bookkeeping, never the numbers' meaning.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from aletheia.campaign import (
    CampaignSpec,
    campaign_status,
    load_spec,
    plan_jobs,
    run_campaign,
    run_one,
)
from aletheia.campaign.report import write_report
from aletheia.campaign.results import build_rows, read_results_csv
from aletheia.errors import AletheiaError, ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY = {"data": {"bootstrap_size": 30, "max_length": 48, "max_eval_examples": 4},
        "probe": {"batches": 1, "batch_size": 2},
        "train": {"steps": 2, "batch_size": 2, "grad_accum": 1, "warmup_steps": 1}}


def tiny_spec(models, seeds=(42,), recipes=("standard", "aletheia"), **extra) -> CampaignSpec:
    return CampaignSpec.from_dict({"name": "tiny", "models": [str(m) for m in models], "seeds": list(seeds),
                                   "recipes": list(recipes), **TINY, **extra}).validate()


def keys(rows):
    return sorted((r["model"], r["seed"], r["recipe"], r["budget"] or 0.0) for r in rows)


@pytest.fixture
def broken_model_dir(nan_model_dir) -> Path:
    return nan_model_dir


# --- the spec ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["smoke.yaml", "paper.yaml"])
def test_shipped_campaigns_load_validate_and_round_trip(name):
    spec = load_spec(ROOT / "campaigns" / name)
    again = CampaignSpec.from_dict(yaml.safe_load(spec.to_yaml()))
    assert again.to_dict() == spec.to_dict()
    assert {r.name for r in spec.recipes} == {"standard", "aletheia", "compute_matched", "budget_sweep"}
    assert spec.seeds == [42, 123, 999]
    jobs = plan_jobs(spec, "/tmp/x")
    assert len({j.key for j in jobs}) == len(jobs) and {j.recipe for j in jobs} == {
        "standard", "aletheia", "compute_matched", "budget_sweep"}


def test_smoke_campaign_runs_all_recipes_on_every_model():
    spec = load_spec(ROOT / "campaigns" / "smoke.yaml")
    assert len(plan_jobs(spec, "/tmp/x")) == len(spec.models) * 3 * 5
    assert spec.models[0].id == "default" and all(m.id.startswith("random:") for m in spec.models[1:])


def test_paper_campaign_uses_the_papers_settings():
    spec = load_spec(ROOT / "campaigns" / "paper.yaml")
    assert spec.train.steps == 200 and spec.train.grad_accum == 2
    cm = [j for j in plan_jobs(spec, "/tmp/x") if j.recipe == "compute_matched"]
    assert {j.config["train"]["steps"] for j in cm} == {250}
    assert {j.model for j in cm} == {"Qwen2.5-7B", "Llama-3.1-8B", "Qwen2.5-3B"}
    assert {j.model for j in plan_jobs(spec, "/tmp/x") if j.recipe == "budget_sweep"} == {"Qwen2.5-3B"}
    assert len([m for m in spec.models if m.id != "EleutherAI/pythia-1.4b"]) == 14


def test_spec_reports_every_problem_at_once():
    bad = {"models": ["random:llama:x", "a/b", "c/b"], "seeds": [1, 1],
           "recipes": ["aletheia", {"name": "compute_matched", "match": "wallclock", "budget": 0.25},
                       {"name": "budget_sweep", "budgets": [0.5, 2.0]}, "fancy"]}
    with pytest.raises(ConfigError) as err:
        CampaignSpec.from_dict(bad).validate()
    msg = str(err.value)
    for expected in ("random:FAMILY", "appear twice", "lists a seed twice", "must include standard",
                     "must use the aletheia recipe's budget", "distinct shares", "'fancy' is not a recipe"):
        assert expected in msg, expected
    with pytest.raises(ConfigError, match="mmlu_size"):
        CampaignSpec.from_dict({"eval": {"benchmarks": ["mmlu"], "options": {"mmlu_size": 3}}}).validate()
    with pytest.raises(ConfigError, match="did you mean 'seeds'"):
        CampaignSpec.from_dict({"sedes": [1]})
    with pytest.raises(ConfigError, match="repeats the aletheia run"):
        CampaignSpec.from_dict({"recipes": ["standard", "aletheia",
                                            {"name": "budget_sweep", "budgets": [0.5]}]}).validate()


def test_plan_one_job_per_model_seed_recipe_budget():
    spec = tiny_spec(["random:llama:4"], seeds=[1, 2], recipes=[
        "standard", "aletheia", {"name": "compute_matched", "factor": 1.5},
        {"name": "budget_sweep", "budgets": [0.25, 0.75]}])
    jobs = plan_jobs(spec, "/tmp/c")
    assert len(jobs) == 2 * 5 and len({j.key for j in jobs}) == 10
    assert {j.config["train"]["steps"] for j in jobs if j.recipe == "compute_matched"} == {3}  # 2 × 1.5
    assert sorted(j.config["probe"]["fraction"] for j in jobs if j.seed == 1 and j.recipe != "standard") == [
        0.25, 0.5, 0.5, 0.75]
    assert jobs[0].run_id == "random-llama-4L__seed1__standard"


def test_cost_aware_recipe_plans_the_cost_aware_selector_at_standard_parameters():
    spec = tiny_spec(["random:llama:4"], recipes=["standard", "aletheia", {"name": "cost_aware", "time_budget": 0.7}])
    job = next(j for j in plan_jobs(spec, "/tmp/c") if j.recipe == "cost_aware")
    assert job.run_id == "random-llama-4L__seed42__cost_aware" and job.budget is None
    assert job.config["method"] == "aletheia" and job.config["probe"]["selector"] == "cost-aware"
    assert job.config["probe"]["time_budget"] == 0.7 and job.config["adapter"]["match_parameters"] is True
    assert not job.reuse_probe  # its layers come from the cost model, not the shared top-k probe
    with pytest.raises(ConfigError, match="'time_budget' only applies to cost_aware"):
        tiny_spec(["random:llama:4"], recipes=["standard", {"name": "aletheia", "time_budget": 0.5}])


# --- results.csv arithmetic -----------------------------------------------------------------------

def test_rows_pair_each_run_with_its_standard_run():
    std = {"model": "m", "seed": 1, "recipe": "standard", "budget": None, "status": "completed",
           "train_seconds": 10.0, "eval_loss": 1.0, "mmlu_base": 40.0, "mmlu_ft": 38.0, "selected_layers": [0, 1]}
    ale = {**std, "recipe": "aletheia", "budget": 0.5, "train_seconds": 8.0, "eval_loss": 1.1, "mmlu_ft": 39.5,
           "selected_layers": [1]}
    bad = {**std, "seed": 2, "recipe": "aletheia", "status": "failed", "reason": "non-finite loss"}
    rows = {(r["seed"], r["recipe"]): r for r in build_rows([ale, std, bad])}
    a = rows[(1, "aletheia")]
    assert a["speedup_pct"] == pytest.approx(20.0) and a["time_ratio"] == pytest.approx(1.25)
    assert a["mmlu_delta"] == pytest.approx(-0.5) and rows[(1, "standard")]["mmlu_delta"] == pytest.approx(-2.0)
    assert a["extra_forgetting"] == pytest.approx(1.5)  # Aletheia forgot 1.5 pp less
    assert a["eval_loss_vs_standard"] == pytest.approx(0.1)
    assert a["selected_layers"] == "1" and a["n_selected"] == 1
    assert rows[(2, "aletheia")]["speedup_pct"] is None  # no pair, no number


# --- running campaigns ------------------------------------------------------------------------------

def test_local_campaign_resumes_records_failures_and_reports(tiny_model_dir, broken_model_dir, tmp_path):
    spec = tiny_spec([tiny_model_dir, broken_model_dir], seeds=[42, 123], recipes=[
        "standard", "aletheia", {"name": "compute_matched", "match": "wallclock"},
        {"name": "budget_sweep", "budgets": [0.25]}])
    out = tmp_path / "camp"
    rows = run_campaign(spec, out, progress=False)

    assert len(rows) == 16 and len(set(keys(rows))) == 16
    good = [r for r in rows if r["model"] == tiny_model_dir.name]
    broken = [r for r in rows if r["model"] == "nan-llama"]
    assert all(r["status"] == "completed" for r in good)
    assert all(r["status"] == "failed" for r in broken)
    std_fail = next(r for r in broken if r["recipe"] == "standard")
    assert "non-finite loss" in std_fail["reason"]
    assert "paired standard run did not complete" in next(
        r for r in broken if r["recipe"] == "compute_matched")["reason"]

    # the probe ran once per (model, seed) and was reused at every other budget
    recs = [json.loads(p.read_text()) for p in out.glob("runs/*/record.json")]
    ale_runs = [r for r in recs if r["model"] == tiny_model_dir.name and r["recipe"] != "standard"]
    assert sum(not r["probe_reused"] for r in ale_runs) == 2  # one per seed
    cm = [r for r in recs if r["model"] == tiny_model_dir.name and r["recipe"] == "compute_matched"]
    assert all(r["notes"][0].startswith("wall-clock matched") for r in cm)
    sweep = next(r for r in good if r["recipe"] == "budget_sweep")
    assert sweep["n_selected"] == 1 and sweep["layers"] == 4

    # results.csv has one row per run with the paper's columns
    with open(out / "results.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 16
    for col in ("model", "family", "parameters", "selected_layers", "speedup_pct", "time_ratio",
                "trainable_params", "eval_loss", "mmlu_delta", "extra_forgetting", "reason"):
        assert col in table[0]

    # a rerun does nothing and changes nothing
    mtimes = {p: p.stat().st_mtime for p in out.glob("runs/*/record.json")}
    again = run_campaign(spec, out, progress=False)
    assert keys(again) == keys(rows)
    assert {p: p.stat().st_mtime for p in out.glob("runs/*/record.json")} == mtimes

    st = campaign_status(out)
    assert (st["completed"], st["failed"], st["pending"]) == (8, 8, 0)

    files = write_report(out)
    report = (out / "REPORT.md").read_text()
    assert "| Model | Std time (s) | Ale time (s) | Speedup (%) | 95% CI (%) | Ratio | p-value | Wins |" in report
    assert "non-finite loss" in report  # the failures table
    for key in ("speedup", "probe_heatmap", "compute_matched", "speed_vs_forgetting", "layer_budget"):
        assert files[key].read_bytes()[:4] == b"\x89PNG"
    assert (out / "FORGETTING_DELTAS_ANALYSIS.md").is_file() and (out / "COMPUTE_MATCHED_ANALYSIS.md").is_file()


def test_a_changed_spec_is_refused_in_an_existing_folder(tiny_model_dir, tmp_path):
    spec = tiny_spec([tiny_model_dir], recipes=["standard"])
    run_campaign(spec, tmp_path, progress=False)
    with pytest.raises(AletheiaError, match="different spec"):
        run_campaign(tiny_spec([tiny_model_dir], seeds=[7], recipes=["standard"]), tmp_path, progress=False)


def test_status_sees_interrupted_runs(tiny_model_dir, tmp_path):
    spec = tiny_spec([tiny_model_dir], seeds=[1, 2], recipes=["standard"])
    run_campaign(spec.replace(seeds=[1]), tmp_path, progress=False)  # type: ignore[attr-defined]
    (tmp_path / "campaign.yaml").write_text(spec.to_yaml())
    job = plan_jobs(spec, tmp_path)[1]
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "started.json").write_text(json.dumps({"pid": 2**22 + 7, "host": os.uname().nodename}))
    st = campaign_status(tmp_path)
    assert (st["completed"], st["interrupted"], st["pending"]) == (1, 1, 0)
    assert st["estimate_left_seconds"] is not None
    record = run_one(job)  # the interrupted run starts over from a clean folder
    assert record.status == "completed" and not (job.run_dir / "started.json").exists()


def test_killed_at_random_moments_resumes_to_the_same_rows(tiny_model_dir, tmp_path):
    spec = tiny_spec([tiny_model_dir], seeds=[42, 123], recipes=["standard", "aletheia"])
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(spec.to_yaml())
    # the uninterrupted run, as a subprocess too, sets the scale of the kill moments
    ref_cmd = [sys.executable, "-m", "aletheia.cli", "campaign", "run", str(spec_file), "--output",
               str(tmp_path / "ref"), "-q"]
    start = time.perf_counter()
    subprocess.run(ref_cmd, capture_output=True, text=True, timeout=300, check=True)
    full = time.perf_counter() - start
    reference = {(r["seed"], r["recipe"]): r for r in read_results_csv(tmp_path / "ref" / "results.csv")}

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "aletheia.cli", "campaign", "run", str(spec_file), "--output", str(out), "-q"]
    rng = random.Random()
    delays, kills = [], 0
    for attempt in range(6):  # SIGKILL at a random moment (imports, training, saving, writing the record)
        # the first kill surely lands before the end; later ones may find the run already finished
        delay = rng.uniform(0.15, 0.7) * full if attempt == 0 else rng.uniform(0.1, 1.0) * full
        delays.append(round(delay, 2))
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=delay)
            break  # it finished before the kill
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
    assert kills >= 1, delays
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, (delays, done.stderr[-2000:])

    rows = read_results_csv(out / "results.csv")
    assert keys(rows) == keys(reference.values()), delays
    for r in rows:  # same runs, same seeds: same selected layers and held-out loss
        ref = reference[(r["seed"], r["recipe"])]
        assert r["status"] == "completed"
        assert r["selected_layers"] == ref["selected_layers"]
        assert r["eval_loss"] == pytest.approx(ref["eval_loss"], rel=1e-4), delays


def test_ray_executor_runs_the_campaign(tiny_model_dir, tmp_path):
    ray = pytest.importorskip("ray")
    spec = tiny_spec([tiny_model_dir], recipes=["standard", "aletheia"],
                     executor={"name": "ray", "num_cpus": 2})
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        rows = run_campaign(spec, tmp_path, progress=False)
    finally:
        ray.shutdown()
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert rows[1]["speedup_pct"] is not None


def test_submitit_local_executor_runs_the_campaign(tiny_model_dir, tmp_path):
    pytest.importorskip("submitit")
    spec = tiny_spec([tiny_model_dir], recipes=["standard", "aletheia"],
                     executor={"name": "slurm", "cluster": "local", "timeout_min": 10})
    rows = run_campaign(spec, tmp_path, progress=False)
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert any((tmp_path / "executor-logs").rglob("*.out"))


def test_slurm_without_sbatch_says_how_to_run_locally(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    spec = tiny_spec([tiny_model_dir], recipes=["standard"], executor={"name": "slurm"})
    with pytest.raises(AletheiaError, match="cluster: local"):
        run_campaign(spec, tmp_path / "c", progress=False)


def test_report_tables_with_benchmarks(tmp_path):
    """The report's MMLU / multi-benchmark / budget tables, from hand-written records."""
    spec = CampaignSpec.from_dict({"name": "hand", "models": ["a/m1"], "seeds": [1, 2, 3], "recipes": [
        "standard", "aletheia", {"name": "budget_sweep", "budgets": [0.25]}],
        "eval": {"benchmarks": ["mmlu", "gsm8k"]}}).validate()
    (tmp_path / "campaign.yaml").write_text(spec.to_yaml())
    times = {"standard": [10.0, 12.0, 14.0], "aletheia": [8.0, 9.0, 13.0], "budget_sweep": [6.0, 7.0, 8.0]}
    for recipe, budget in (("standard", None), ("aletheia", 0.5), ("budget_sweep", 0.25)):
        for i, seed in enumerate((1, 2, 3)):
            rid = f"m1__seed{seed}__{recipe}"
            rec = {"run_id": rid, "model": "m1", "family": "llama", "parameters": 1000, "layers": 4, "seed": seed,
                   "recipe": recipe, "budget": budget, "steps": 10, "status": "completed",
                   "train_seconds": times[recipe][i], "eval_loss": 1.0 + i / 10,
                   "selected_layers": [0, 1, 2, 3][: 4 if budget is None else int(4 * budget)],
                   "mmlu_base": 40.0, "mmlu_ft": 39.0 + (recipe != "standard"), "gsm8k_base": 10.0,
                   "gsm8k_ft": 12.0}
            (tmp_path / "runs" / rid).mkdir(parents=True)
            (tmp_path / "runs" / rid / "record.json").write_text(json.dumps(rec))
    write_report(tmp_path)
    report = (tmp_path / "REPORT.md").read_text()
    # per-model speedup: times 10/12/14 vs 8/9/13 -> the paired test of tests/test_stats.py, p = 0.0742
    assert "| m1 | 12.00 ± 2.00 | 10.00 ± 2.65 |" in report and "0.0742" in report
    assert "| m1 | 40.0% ± 0.0 | 39.0% ± 0.0 | -1.0pp ± 0.0 | 40.0% ± 0.0 | +0.0pp ± 0.0 | +1.0pp ± 0.0 |" in report
    assert "| m1 | 25% |" in report and "| m1 | 100% (standard) |" in report
    forgetting = (tmp_path / "FORGETTING_DELTAS_ANALYSIS.md").read_text()
    assert "## MMLU" in forgetting and "## GSM8K" in forgetting
