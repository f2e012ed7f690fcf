"""Recipe search: configs, the ablation statistics on saved run records, ranking and the frontier."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from scipy import stats

from aletheia.errors import AletheiaError, ConfigError
from aletheia.search import (
    ArmSpec,
    SearchConfig,
    factorial_2x2,
    load_search_config,
    pareto_front,
    write_search_report,
)
from aletheia.search.runner import STAGES, Search, rank_rows
from aletheia.utils import write_json

REPO = Path(__file__).resolve().parents[1]

# 2 x 2 x 3 held-out losses: modules (attention, mlp) x lr (1e-4, 2e-4), seeds 1, 2, 3
CELLS = {(0, 0): [2.0, 2.2, 2.1], (0, 1): [1.8, 1.9, 2.0], (1, 0): [2.3, 2.5, 2.4], (1, 1): [1.9, 2.0, 2.1]}


def test_shipped_search_configs_load_and_round_trip():
    for path in sorted((REPO / "configs").glob("search-*.yaml")):
        cfg = load_search_config(path)
        again = SearchConfig.from_dict(yaml.safe_load(cfg.to_yaml()))
        assert again.to_dict() == cfg.to_dict(), path
    paper = load_search_config(REPO / "configs" / "search-paper.yaml")
    assert (paper.scan.steps, len(paper.scan.arms), paper.full.steps, len(paper.ablation.seeds)) == (150, 8, 500, 3)
    best = next(a for a in paper.scan.arms if a.name == "ffn_lr_high")
    assert (best.layers, best.mlp_rank, best.attention_rank) == (12, 64, 16)


def test_defaults_are_the_papers():
    cfg = SearchConfig()
    assert (cfg.scan.steps, len(cfg.scan.arms), cfg.full.steps, cfg.ablation.seeds) == (150, 8, 500, [42, 123, 999])


def test_config_errors_name_the_field_and_the_fix():
    bad = {"scan": {"arms": [{"name": "a", "layers": 0, "modules": "ffn"}, {"name": "a"}]},
           "ablation": {"seeds": [1], "factors": {"lr": [0.001]}}}
    with pytest.raises(ConfigError) as err:
        SearchConfig.from_dict(bad).validate()
    msg = str(err.value)
    for needle in ("layers=0 must be at least 1", "modules='ffn'", "'a' appears twice", "seeds=[1]",
                   "must map exactly two factor names"):
        assert needle in msg
    with pytest.raises(ConfigError, match="did you mean 'layers'"):
        SearchConfig.from_dict({"scan": {"arms": [{"name": "a", "layer": 3}]}})


def test_factorial_effects_and_p_values_match_a_hand_computed_anova():
    y, a, b = [], [], []
    for (i, j), values in CELLS.items():
        y += values
        a += [i] * 3
        b += [j] * 3
    out = factorial_2x2(y, a, b, names=("modules", "lr"))
    terms = {t["term"]: t for t in out["terms"]}
    # by hand: cell means 2.1, 1.9 / 2.4, 2.0; grand mean 2.1; residual SS 4 x 0.02 = 0.08 on 8 df
    # effect A = (2.4 + 2.0)/2 - (2.1 + 1.9)/2 = 0.2; B = (1.9 + 2.0)/2 - (2.1 + 2.4)/2 = -0.3
    # AB = ((2.0 - 1.9) - (2.4 - 2.1))/2 = -0.1; SS = 12 (effect/2)^2 = 0.12, 0.27, 0.03; MSE = 0.01
    hand = {"modules": (0.2, 12.0), "lr": (-0.3, 27.0), "modules × lr": (-0.1, 3.0)}
    for name, (effect, F) in hand.items():
        assert terms[name]["effect"] == pytest.approx(effect)
        assert terms[name]["F"] == pytest.approx(F)
        assert terms[name]["df_resid"] == 8
        assert terms[name]["p"] == pytest.approx(stats.f.sf(F, 1, 8))
    assert terms["modules"]["p"] == pytest.approx(0.0085163, abs=1e-6)
    assert terms["lr"]["p"] == pytest.approx(0.00082628, abs=1e-7)
    assert terms["modules × lr"]["p"] == pytest.approx(0.1215029, abs=1e-6)
    assert [m for row in out["cell_means"] for m in row] == pytest.approx([2.1, 1.9, 2.4, 2.0])
    assert out["mse"] == pytest.approx(0.01)


def test_factorial_refuses_an_empty_cell():
    with pytest.raises(AletheiaError, match="every cell filled"):
        factorial_2x2([1.0, 2.0, 3.0, 4.0, 5.0], [0, 0, 1, 1, 1], [0, 0, 0, 0, 0])


def _search_folder(tmp_path: Path) -> Search:
    cfg = SearchConfig.from_dict({
        "name": "synthetic", "model": "random:llama:4",
        "ablation": {"seeds": [1, 2, 3], "factors": {"modules": ["attention", "mlp"], "lr": [0.0001, 0.0002]}},
    })
    probe = {"ranking": [2, 0, 3, 1], "num_layers": 4, "scores": [3.0, 1.0, 4.0, 2.0], "selector": "gradient-norm"}
    write_json(tmp_path / "probe.json", probe)
    return Search(cfg, tmp_path, probe)


def test_ablation_stage_reads_saved_records_and_reports_the_hand_computed_table(tmp_path):
    search = _search_folder(tmp_path)
    levels = {"modules": ["attention", "mlp"], "lr": [0.0001, 0.0002]}
    for (i, j), values in CELLS.items():
        for seed, loss in zip([1, 2, 3], values):
            run_id = f"ablation__modules-{levels['modules'][i]}__lr-{levels['lr'][j]:g}__seed{seed}"
            write_json(tmp_path / "runs" / run_id / "record.json",
                       {"run_id": run_id, "status": "completed", "eval_loss": loss, "train_seconds": 10.0 + i})
    leader = {"arm": "ffn_lr_high", "run_id": "full__ffn_lr_high",
              "settings": ArmSpec("x", 2, "both", 16, 64, 4e-4).settings()}
    d = search.ablation(leader)  # every run has a record: nothing trains
    plan = json.loads((tmp_path / "stages" / "ablation.plan.json").read_text())["runs"]
    assert len(plan) == 12 and {e["settings"]["layers"] for e in plan} == {2}
    assert all(e["layers"] == [0, 2] for e in plan)  # the top 2 of the probe ranking
    terms = {t["term"]: t for t in d["analysis"]["terms"]}
    assert terms["lr"]["effect"] == pytest.approx(-0.3) and terms["lr"]["p"] == pytest.approx(stats.f.sf(27, 1, 8))
    assert d["best_cell"]["settings"]["modules"] == "attention" and d["best_cell"]["settings"]["lr"] == 0.0002
    assert d["significant"] == ["modules", "lr"]
    summary = write_search_report(search)
    report = (tmp_path / "SEARCH_REPORT.md").read_text()
    assert "| lr | -0.3000 | -5.196 | 27.000 | 0.0008263 * |" in report
    assert "| modules × lr | -0.1000 | -1.732 | 3.000 | 0.1215 |" in report
    assert summary["recommended"]["settings"]["lr"] == 0.0002
    assert (tmp_path / "search_frontier.png").stat().st_size > 10_000


def test_ranking_breaks_loss_ties_by_speed():
    rows = [{"run_id": r, "ok": True, "method": "aletheia", "eval_loss": loss, "train_seconds": t}
            for r, loss, t in (("slow", 1.00001, 9.0), ("fast", 1.00002, 3.0), ("best", 0.9, 20.0))]
    assert [r["run_id"] for r in rank_rows(rows, decimals=3)] == ["best", "fast", "slow"]
    assert [r["run_id"] for r in rank_rows(rows, decimals=6)] == ["best", "slow", "fast"]


def test_pareto_front_keeps_only_undominated_points():
    pts = [(1.0, 3.0), (2.0, 2.0), (3.0, 2.5), (4.0, 1.0), (2.0, 2.0001)]
    assert pareto_front(pts) == [0, 1, 3]


def test_an_arm_that_does_not_fit_the_model_is_refused_before_training(tmp_path):
    search = _search_folder(tmp_path)
    with pytest.raises(AletheiaError, match="asks for 12 layers but the model has 4"):
        search.entry("scan", ArmSpec("big", layers=12), 10)


# --- the whole pipeline on a stand-in executor (no training: records from a known loss function) ---

class RecordingExecutor:
    """A campaign executor that writes each run's record from a formula instead of training."""

    calls: ClassVar[list[str]] = []
    fail: ClassVar[set[str]] = set()

    def __init__(self, cfg, campaign_dir):
        pass

    def map(self, fn, jobs, on_event=None):
        out = []
        for job in jobs:
            c = job.config
            layers = len(c["probe"]["layers"]) if c["method"] == "aletheia" else 4
            mods = c["adapter"]["modules"] if c["method"] == "aletheia" else "both"
            loss = (2.0 - 0.05 * layers + (0.1 if mods == "attention" else 0.0) + 80 * abs(c["train"]["lr"] - 2e-3)
                    + 0.01 * (job.seed % 3) + 0.2 / c["train"]["steps"])
            rec = {"run_id": job.run_id, "status": "completed", "eval_loss": loss,
                   "selected_layers": c["probe"]["layers"],
                   "train_seconds": c["train"]["steps"] * (0.1 + 0.02 * layers), "median_step_seconds": 0.1}
            if job.run_id in RecordingExecutor.fail:
                rec = {"run_id": job.run_id, "status": "failed", "reason": "non-finite loss (nan) at step 3"}
            write_json(job.run_dir / "record.json", rec)
            RecordingExecutor.calls.append(job.run_id)
            out.append(rec)
        return out


def _formula_search(tmp_path, monkeypatch, **overrides) -> SearchConfig:
    from aletheia.campaign.executors import EXECUTORS

    monkeypatch.setitem(EXECUTORS, "recording", RecordingExecutor)
    RecordingExecutor.calls = []
    RecordingExecutor.fail = set()
    write_json(tmp_path / "probe.json", {"ranking": [2, 0, 3, 1], "num_layers": 4, "scores": [3.0, 1.0, 4.0, 2.0],
                                         "selector": "gradient-norm", "seconds": 0.1, "batches": 1})
    data = {"name": "formula", "model": "random:llama:4", "executor": {"name": "recording"},
            "scan": {"steps": 10, "arms": [
                {"name": "attn", "layers": 2, "modules": "attention", "lr": 0.001},
                {"name": "both", "layers": 2, "modules": "both", "lr": 0.001},
                {"name": "both_lr", "layers": 2, "modules": "both", "lr": 0.002},
                {"name": "three", "layers": 3, "modules": "both", "lr": 0.001}]},
            "full": {"steps": 20, "candidates": 2},
            "push": {"variations": [{"name": "more_layers", "layers_delta": 1}, {"name": "lr_up", "lr_factor": 2.0}]},
            "ablation": {"seeds": [1, 2, 3]}, **overrides}
    return SearchConfig.from_dict(data).validate()


def test_pipeline_decisions_follow_the_records(tmp_path, monkeypatch):
    from aletheia.search import run_search

    summary = run_search(_formula_search(tmp_path, monkeypatch), tmp_path)
    scan = json.loads((tmp_path / "stages" / "scan.json").read_text())
    assert scan["advance"] == ["both_lr", "three"]  # lowest formula losses at 10 steps
    push = json.loads((tmp_path / "stages" / "push.json").read_text())
    assert push["around"] == "both_lr" and push["winner"]["arm"] == "more_layers"  # k=3 beats k=2
    abl = json.loads((tmp_path / "stages" / "ablation.json").read_text())
    # quick-scan ranges of the level means: modules 0.143, lr 0.097, layers 0.057
    assert abl["factors"] == {"modules": ["attention", "both"], "lr": [0.001, 0.002]}
    assert len(json.loads((tmp_path / "stages" / "ablation.plan.json").read_text())["runs"]) == 12
    modules, lr, both = abl["analysis"]["terms"]
    assert (modules["term"], lr["term"], both["term"]) == ("modules", "lr", "modules × lr")
    assert modules["effect"] == pytest.approx(-0.1) and lr["effect"] == pytest.approx(-0.08)
    assert both["effect"] == pytest.approx(0.0, abs=1e-12) and both["p"] > 0.5
    assert modules["p"] < 0.05 and modules["df_resid"] == 8
    assert summary["winner"]["arm"] == "more_layers" and summary["stages_done"] == list(STAGES)
    assert len(RecordingExecutor.calls) == 5 + 3 + 2 + 12  # 4 arms + baseline, 2 + baseline, 2, 2x2x3
    RecordingExecutor.calls = []
    run_search(_formula_search(tmp_path, monkeypatch), tmp_path)  # finished: nothing runs again
    assert RecordingExecutor.calls == []


def test_optuna_trials_are_runs_and_a_longer_study_replays_the_earlier_trials(tmp_path, monkeypatch):
    pytest.importorskip("optuna")
    from aletheia.search import run_search

    cfg = _formula_search(tmp_path, monkeypatch, optuna={"trials": 4, "layers": [1, 4], "ranks": [16, 32, 64],
                                                          "lr": [0.0005, 0.004]})
    run_search(cfg, tmp_path, stop_after="optuna")
    d = json.loads((tmp_path / "stages" / "optuna.json").read_text())
    assert [t["trial"] for t in d["trials"]] == [0, 1, 2, 3]
    assert {t["state"] for t in d["trials"]} <= {"complete", "pruned"}
    assert d["warm_start"]  # the fixed arms' full-length runs seed the sampler
    first = [json.dumps(t["settings"]) for t in d["trials"]]
    ran = set(RecordingExecutor.calls)
    assert all(r.startswith("optuna__t") for r in ran if "optuna" in r)

    RecordingExecutor.calls = []
    cfg.optuna.trials = 6
    run_search(cfg, tmp_path, stop_after="optuna")
    d = json.loads((tmp_path / "stages" / "optuna.json").read_text())
    assert [json.dumps(t["settings"]) for t in d["trials"][:4]] == first  # replayed, not resampled
    assert all("t004" in r or "t005" in r for r in RecordingExecutor.calls)  # only the new trials ran


def test_a_failed_run_is_recorded_and_the_search_goes_on(tmp_path, monkeypatch):
    from aletheia.search import run_search

    cfg = _formula_search(tmp_path, monkeypatch)
    RecordingExecutor.fail = {"scan__both_lr", "ablation__modules-both__layers-3__seed2"}
    summary = run_search(cfg, tmp_path, stop_after="scan")
    scan = json.loads((tmp_path / "stages" / "scan.json").read_text())
    assert scan["failed"] == ["both_lr"] and scan["advance"] == ["three", "both"]
    assert "| both_lr | k=2, attn r16 + MLP r32, lr 0.002 | – |" in (tmp_path / "SEARCH_REPORT.md").read_text()
    assert summary["stages_done"] == ["probe", "scan"]
    run_search(cfg, tmp_path)  # the ablation fits its test on the 11 runs that completed
    abl = json.loads((tmp_path / "stages" / "ablation.json").read_text())
    assert abl["analysis"]["n"] == 11 and abl["analysis"]["df_resid"] == 7 and len(abl["failed"]) == 1


def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    from aletheia.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("scan: {arms: [{name: a, layers: 0}]}\n")
    for args, needle in (([str(tmp_path / "missing.yaml")], "search config not found"),
                         ([str(bad)], "arms.a: layers=0 must be at least 1")):
        with pytest.raises(SystemExit) as exit_:
            main(["search", *args, "--output", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 2 and needle in err and len(err.splitlines()) == 1

    # a resumed search must use the same config
    cfg = _formula_search(tmp_path / "s", monkeypatch)
    from aletheia.search import run_search

    run_search(cfg, tmp_path / "s", stop_after="probe")
    cfg.full.steps = 99
    with pytest.raises(AletheiaError, match="different config"):
        run_search(cfg, tmp_path / "s")
