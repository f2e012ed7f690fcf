"""Checkpoints and exact resume: a run killed at random moments ends exactly as an uninterrupted one.

Same per-step losses, same final adapter weights (bit for bit on this CPU), and a resumed run does
not redo the steps its checkpoint already holds.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from aletheia.config import RunConfig
from aletheia.errors import AletheiaError
from aletheia.recipe import run_training

# one run in a fresh process: the config as JSON, then "resume" or "fresh"
SCRIPT = """
import json, sys
from aletheia.config import RunConfig
from aletheia.interrupts import handle_signals
from aletheia.recipe import run_training
cfg = RunConfig.from_dict(json.loads(sys.argv[1]))
with handle_signals():  # as the CLI does: SIGTERM stops at a step boundary with a checkpoint
    run_training(cfg, progress=False, overwrite=sys.argv[2] == "fresh", resume=sys.argv[2] == "resume")
"""


def tiny_config(model: Path, out: Path, steps: int = 120, save_every: int | None = 10) -> RunConfig:
    return RunConfig.from_dict({
        "model": str(model), "method": "aletheia", "output": str(out), "eval_accuracy_examples": 0,
        "data": {"bootstrap_size": 40, "max_length": 48, "max_eval_examples": 4},
        "probe": {"batches": 1, "batch_size": 2},
        "train": {"steps": steps, "batch_size": 2, "grad_accum": 2, "warmup_steps": 3,
                  "save_every": save_every, "keep_last": 2},
        "adapter": {"dropout": 0.1},  # dropout draws random masks: the RNG state must resume too
    })


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def start(cfg: RunConfig, resume: bool) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(cfg.to_dict()),
                             "resume" if resume else "fresh"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def test_killed_at_five_random_moments_and_resumed_ends_as_the_uninterrupted_run(tiny_model_dir, tmp_path):
    ref_cfg = tiny_config(tiny_model_dir, tmp_path / "ref")
    t0 = time.perf_counter()
    ref = start(ref_cfg, resume=False)
    assert ref.wait(timeout=600) == 0, ref.stderr.read()[-2000:]
    full = time.perf_counter() - t0

    cfg = tiny_config(tiny_model_dir, tmp_path / "killed")
    out = Path(cfg.output)
    rng, kills, moments = random.Random(), 0, []
    for _ in range(15):  # five SIGKILLs at random moments (start-up, probe, training, saving, swapping in)
        resumable = any((out / ".partial" / "checkpoints").glob("step-*"))
        proc = start(cfg, resume=resumable)
        moment = rng.uniform(0.1, 0.8) * full
        try:
            proc.wait(timeout=moment)
            assert proc.returncode == 0, proc.stderr.read()[-2000:]
            shutil.rmtree(out)  # it finished before the kill (a quiet machine): that one does not count
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            moments.append(round(moment, 2))
            if kills == 5:
                break
    assert kills == 5, moments
    last = start(cfg, resume=any((out / ".partial" / "checkpoints").glob("step-*")))
    assert last.wait(timeout=600) == 0, last.stderr.read()[-2000:]

    assert losses(out) == losses(Path(ref_cfg.output)), moments
    mine, theirs = (load_file(out / "adapter_model.safetensors"),
                    load_file(tmp_path / "ref" / "adapter_model.safetensors"))
    assert mine.keys() == theirs.keys()
    assert all((mine[k] == theirs[k]).all() for k in mine), moments
    assert json.loads((out / "summary.json").read_text())["selected_layers"] == json.loads(
        (tmp_path / "ref" / "summary.json").read_text())["selected_layers"]


def test_sigterm_checkpoints_at_the_step_boundary_and_resume_skips_the_done_steps(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", steps=400, save_every=None)
    proc = start(cfg, resume=False)
    metrics = Path(cfg.output) / ".partial" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 5):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    assert proc.returncode != 0
    saved = sorted((Path(cfg.output) / ".partial" / "checkpoints").glob("step-*"))
    assert len(saved) == 1, "SIGTERM writes one checkpoint, at the next step boundary"
    done = int(saved[0].name.split("-")[1])
    before = losses(Path(cfg.output) / ".partial")[:done]

    record = run_training(cfg, progress=False, resume=True)
    assert record.completed and record.resumed_from_step == done and record.steps_done == 400
    assert losses(Path(cfg.output))[:done] == before  # the done steps were kept, not trained again


def cfg_with_steps(cfg: RunConfig, steps: int) -> RunConfig:
    return cfg.replace(train=cfg.train.replace(steps=steps))


def test_resume_refuses_what_cannot_be_resumed(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path / "nothing", steps=6, save_every=2)
    with pytest.raises(AletheiaError, match="holds no unfinished run"):
        run_training(cfg, progress=False, resume=True)
    run_training(cfg, progress=False)
    with pytest.raises(AletheiaError, match="already holds a finished run"):
        run_training(cfg, progress=False, resume=True)


def test_a_checkpoint_from_other_settings_is_refused_and_says_what_differs(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", steps=400, save_every=5)
    proc = start(cfg, resume=False)
    deadline = time.monotonic() + 300
    while not any((Path(cfg.output) / ".partial" / "checkpoints").glob("step-*")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    other = cfg.replace(seed=7)
    with pytest.raises(AletheiaError, match="seed: 42 then, 7 now"):
        run_training(other, progress=False, resume=True)
    assert any((Path(cfg.output) / ".partial" / "checkpoints").glob("step-*"))  # nothing was lost


def test_a_campaign_run_stopped_mid_training_resumes_from_its_checkpoint(tiny_model_dir, tmp_path,
                                                                        monkeypatch):
    from aletheia.campaign import CampaignSpec, plan_jobs, run_one

    spec = CampaignSpec.from_dict({
        "name": "resume", "models": [str(tiny_model_dir)], "seeds": [1], "recipes": ["standard"],
        "data": {"bootstrap_size": 30, "max_length": 48, "max_eval_examples": 4},
        "train": {"steps": 8, "batch_size": 2, "grad_accum": 1, "warmup_steps": 1, "save_every": 2},
    }).validate()
    reference = run_one(plan_jobs(spec, tmp_path / "ref")[0])
    job = plan_jobs(spec, tmp_path / "stopped")[0]
    calls = []

    def sigterm_at_step_5():  # what the signal handler does, at the fifth step boundary
        calls.append(1)
        return "SIGTERM" if len(calls) == 5 else None

    monkeypatch.setattr("aletheia.train.stop_requested", sigterm_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        run_one(job)
    monkeypatch.undo()
    record = run_one(job)  # the campaign's rerun: continues at step 5, does not start over
    assert record.completed and record.resumed_from_step == 5
    assert losses(job.run_dir) == losses(reference_dir := plan_jobs(spec, tmp_path / "ref")[0].run_dir)
    assert record.eval_loss == reference.eval_loss and reference_dir.is_dir()


def test_compare_resumes_the_method_it_was_training_and_keeps_the_finished_one(tiny_model_dir, tmp_path,
                                                                               monkeypatch):
    from aletheia.compare import run_compare

    def config(out):
        return tiny_config(tiny_model_dir, out, steps=6, save_every=2)

    reference = run_compare(config(tmp_path / "ref"), progress=False)
    calls = []

    def sigterm_in_the_second_run():  # standard's 6 steps, then Aletheia's third step boundary
        calls.append(1)
        return "SIGTERM" if len(calls) == 9 else None

    monkeypatch.setattr("aletheia.train.stop_requested", sigterm_in_the_second_run)
    with pytest.raises(KeyboardInterrupt):
        run_compare(config(tmp_path / "cmp"), progress=False)
    monkeypatch.undo()
    assert not (tmp_path / "cmp" / "comparison.json").exists()  # unfinished, so not presented as done
    resumed = run_compare(config(tmp_path / "cmp"), progress=False, resume=True)
    assert resumed["aletheia"]["resumed_from_step"] == 3 and resumed["standard"]["resumed_from_step"] is None
    for method in ("standard", "aletheia"):
        assert losses(tmp_path / "cmp" / method) == losses(tmp_path / "ref" / method)
        assert resumed[method]["eval_loss"] == reference[method]["eval_loss"]


def test_the_cli_saves_every_n_steps_and_resume_continues_after_a_kill(tiny_model_dir, tmp_path, capsys):
    from aletheia.cli import main

    out = tmp_path / "run"
    args = ["train", "--model", str(tiny_model_dir), "--method", "standard", "--steps", "300",
            "--save-every", "10", "--batch-size", "2", "--max-length", "48", "--accuracy-examples", "0",
            "--quiet", "-o", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "aletheia.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / ".partial" / "checkpoints" / "step-00000010").is_dir():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with pytest.raises(SystemExit) as done:
        main([*args, "--resume"])
    assert done.value.code in (0, None), capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] >= 10 and summary["steps_done"] == 300
    assert len(losses(out)) == 300


def test_eval_every_logs_held_out_loss_during_training_and_compare_plots_both_curves(tiny_model_dir,
                                                                                     tmp_path):
    from aletheia.compare import run_compare

    cfg = tiny_config(tiny_model_dir, tmp_path / "cmp", steps=4, save_every=None)
    cfg = cfg.replace(train=cfg.train.replace(eval_every=2))
    comparison = run_compare(cfg, progress=False)
    for method in ("standard", "aletheia"):
        records = [json.loads(x) for x in (tmp_path / "cmp" / method / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records if "eval_loss" in r] == [2, 4]
        assert records[-1]["eval_loss"] == pytest.approx(comparison[method]["eval_loss"], rel=1e-6)
    assert (tmp_path / "cmp" / "loss_curves.png").stat().st_size > 10_000
    assert "loss_curves.png" in (tmp_path / "cmp" / "comparison.md").read_text()
