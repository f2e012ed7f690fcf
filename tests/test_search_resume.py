"""End to end: ``aletheia search`` on a tiny saved model, killed mid-run, resumed without repeating runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from aletheia.search.runner import STAGES

CONFIG = {
    "name": "tiny-search",
    "data": {"bootstrap_size": 40, "max_length": 48, "max_eval_examples": 4},
    "probe": {"batches": 1, "batch_size": 2},
    "train": {"batch_size": 2, "grad_accum": 1, "warmup_steps": 0, "log_every": 1},
    "scan": {"steps": 2, "arms": [
        {"name": "attn", "layers": 1, "modules": "attention", "attention_rank": 4, "mlp_rank": 8, "lr": 0.002},
        {"name": "both", "layers": 2, "modules": "both", "attention_rank": 4, "mlp_rank": 8, "lr": 0.002},
    ]},
    "full": {"steps": 3, "candidates": 1},
    "push": {"variations": [{"name": "more_layers", "layers_delta": 1}]},
    "ablation": {"seeds": [1, 2], "factors": {"modules": ["attention", "both"], "lr": [0.001, 0.002]}},
}


def _search(cfg: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "aletheia.cli", "search", str(cfg), "--output", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                            text=True)


def _records(out: Path) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in (out / "runs").glob("*/record.json")}


def test_search_completes_every_stage_and_resumes_after_a_kill(tmp_path, tiny_model_dir):
    cfg = tmp_path / "search.yaml"
    cfg.write_text(yaml.safe_dump({**CONFIG, "model": str(tiny_model_dir)}))
    out = tmp_path / "out"

    # first attempt: kill it while a run is in progress, after a few runs have finished
    proc = _search(cfg, out)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        running = list((out / "runs").glob("*/started.json")) if (out / "runs").is_dir() else []
        if len(_records(out)) >= 4 and running:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the search ended before it could be interrupted:\n" + proc.stdout.read()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _records(out)
    cut = [p.parent.name for p in (out / "runs").glob("*/started.json")]
    assert cut and not set(cut) & set(before)  # a run was cut off: it has no record
    plans_before = {p.name: p.read_bytes() for p in (out / "stages").glob("*.plan.json")}

    # rerun the same command: it resumes
    proc = _search(cfg, out)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log
    after = _records(out)
    for run_id, record in before.items():  # no finished run was repeated: its record is untouched
        assert after[run_id] == record, run_id
    for name, plan in plans_before.items():  # a started stage kept its plan
        assert (out / "stages" / name).read_bytes() == plan
    assert f"{len(before)} already recorded" in log or "already recorded" in log

    # every stage is done and every planned run has a completed record
    planned = []
    for stage in STAGES[1:]:
        assert (out / "stages" / f"{stage}.json").is_file(), stage
        plan = out / "stages" / f"{stage}.plan.json"
        if plan.is_file():
            planned += [e["run_id"] for e in json.loads(plan.read_text())["runs"]]
    assert len(planned) == 3 + 2 + 1 + 8  # scan arms + baseline, full + baseline, push, 2 x 2 x 2 ablation
    assert set(after) == set(planned) and set(cut) <= set(after)
    assert all(json.loads(after[r])["status"] == "completed" for r in planned)

    # arms train exactly the probe's top-k layers with the arm's ranks
    probe = json.loads((out / "probe.json").read_text())
    attn = json.loads(after["scan__attn"])
    assert attn["selected_layers"] == sorted(probe["ranking"][:1])
    assert json.loads((out / "runs" / "scan__attn" / "adapter_config.json").read_text())["r"] == 4

    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages_done"] == list(STAGES)
    report = (out / "SEARCH_REPORT.md").read_text()
    assert "## Winner" in report and "Factorial ablation" in report and "Pareto frontier" in report
    assert (out / "search_frontier.png").stat().st_size > 10_000
