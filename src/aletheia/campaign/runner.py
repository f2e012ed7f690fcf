"""The campaign runner: expand a spec into jobs, run each job into its own folder, resume after a kill.

One job is one (model, seed, recipe, budget). ``run_one(job)`` trains it with
``aletheia.recipe.run_training`` into ``CAMPAIGN/runs/RUN_ID/`` and writes ``record.json`` there,
atomically, as its very last step: a run is finished exactly when its record exists. Everything else
(``results.csv``, the report) is derived from the records, so a campaign killed at any moment and
started again loses nothing and duplicates nothing: finished runs are skipped, a half-done run's
folder is cleared and the run starts over. ``run_one`` never raises for a failed run (non-finite loss,
out of memory, any error): the record says ``failed`` with the reason, and the campaign goes on.

Per (model, seed) the runner shares, under ``CAMPAIGN/shared/MODEL/seed-SEED/``, the probe scores
(probed once, reused by every Aletheia-type recipe at any budget: the scores do not depend on the
budget) and the base model's held-out metrics. Benchmarks on the base model are shared per model.

The API for tools built on the runner (e.g. a recipe search):

- ``plan_jobs(spec, campaign_dir) -> list[RunJob]``
- ``run_one(job) -> RunRecord`` (picklable job and record; safe to call in any process)
- ``get_executor(cfg, campaign_dir).map(run_one, jobs, on_event) -> list[RunRecord]``
- ``run_campaign(spec, campaign_dir) -> list[row]`` does all of it and writes ``results.csv``.

Size: about 400 lines because planning, running one job with its shared probe and baseline, the
benchmarks of a run, resuming and status are one life cycle over one folder layout; the record
type and its store are in ``aletheia.runs``, the executors in ``executors.py``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import RunConfig, run_config
from ..errors import AletheiaError
from ..outputs import check_writable, disk_full
from ..runs import RunRecord, RunStore
from ..utils import read_json, resolve_device, timestamp, write_json
from .executors import get_executor
from .models import materialize_model
from .spec import SPEC_FILE, CampaignSpec, ModelSpec, load_campaign

STARTED_FILE = "started.json"
# the score each benchmark reports as its headline number (run_suite's keys), shown in percent
BENCHMARK_METRICS = {"mmlu": "accuracy", "gsm8k": "strict_match", "humaneval": "pass@1"}


@dataclass
class RunJob:
    """Everything one run needs, as plain data (it travels to Ray workers and Slurm jobs)."""

    run_id: str
    campaign_dir: str
    model: str
    """The model's key (label): folder names, tables."""
    model_id: str
    """The spec's id: hub id, folder, ``default`` or ``random:FAMILY[:LAYERS]``."""
    seed: int
    recipe: str
    budget: float | None
    """Share of layers kept (None for standard)."""
    config: dict[str, Any]
    """The ``RunConfig`` of this run (method, seed, steps, fraction and output already set)."""
    match: str | None = None
    """``wallclock``: steps are decided at run time from the paired standard and aletheia runs."""
    benchmarks: list[str] = field(default_factory=list)
    eval_options: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    gpus: float = 0.0
    reuse_probe: bool = True

    @property
    def run_dir(self) -> Path:
        return RunStore(self.campaign_dir).run_dir(self.run_id)

    @property
    def key(self) -> tuple:
        """The identity of the run's row in results.csv."""
        return (self.model, self.seed, self.recipe, self.budget)

    @property
    def phase(self) -> int:
        """Wall-clock matched runs need their paired runs' times, so they go in a second wave."""
        return 1 if self.match == "wallclock" else 0

    def failure(self, reason: str) -> RunRecord:
        """The record of this run when it could not complete (executors use it for lost jobs)."""
        return RunRecord(method=self.config["method"], seed=self.seed, steps=self.config["train"]["steps"],
                         status="failed", reason=reason, run_id=self.run_id, model=self.model,
                         model_id=self.model_id, recipe=self.recipe, budget=self.budget,
                         finished_at=timestamp())

    @property
    def label(self) -> str:
        b = "" if self.budget is None else f"@{self.budget:g}"
        return f"{self.model} seed {self.seed} {self.recipe}{b}"


def run_id(model: str, seed: int, recipe: str, budget: float | None) -> str:
    return f"{model}__seed{seed}__{recipe}" + ("" if budget is None else f"__b{budget * 100:g}")


def plan_jobs(spec: CampaignSpec, campaign_dir: str | Path) -> list[RunJob]:
    """One job per model × seed × recipe × budget, standard first, wall-clock matched runs last."""
    spec.validate()
    campaign_dir = str(Path(campaign_dir))
    jobs = [_job(spec, m, seed, recipe, budget, campaign_dir)
            for m in spec.models for seed in spec.seeds for recipe in spec.recipes
            if m.recipes is None or recipe.name in m.recipes
            for budget in recipe.run_budgets()]
    return sorted(jobs, key=lambda j: j.phase)  # stable: spec order within a phase


def _job(spec: CampaignSpec, m: ModelSpec, seed: int, recipe, budget, campaign_dir: str) -> RunJob:
    rid = run_id(m.key, seed, recipe.name, budget)
    cfg = run_config(spec, model=m.id, method=recipe.kind.method, seed=seed,
                     output=str(Path(campaign_dir) / "runs" / rid), eval_accuracy_examples=spec.eval.accuracy_examples)
    if budget is not None:
        cfg.probe.fraction = budget
    if m.batch_size:
        cfg.train.batch_size = cfg.probe.batch_size = m.batch_size
    cfg.train.lr = m.lr or cfg.train.lr
    cfg.train.dtype = m.dtype or cfg.train.dtype
    match = recipe.kind.plan(recipe, cfg, spec.train.steps)
    return RunJob(run_id=rid, campaign_dir=campaign_dir, model=m.key, model_id=m.id, seed=seed,
                  recipe=recipe.name, budget=budget, config=cfg.to_dict(), match=match,
                  benchmarks=list(spec.eval.benchmarks), eval_options=dict(spec.eval.options),
                  device=spec.device, gpus=m.gpus if m.gpus is not None else spec.executor.gpus_per_run,
                  reuse_probe=cfg.probe.selector == "gradient-norm")


# --- one run ------------------------------------------------------------------------------------

def run_one(job: RunJob) -> RunRecord:
    """Run one job into its folder and return its record; a finished run returns its saved record.

    Never raises for a failed run: the error becomes the record's ``reason`` (the traceback goes to
    ``error.txt``). ``KeyboardInterrupt`` and kills leave no record, so the run is done again next
    time: from its newest checkpoint when it has one (``train.save_every``, or a SIGTERM), else anew.
    """
    rd, store = job.run_dir, RunStore(job.campaign_dir)
    if (done := store.record(job.run_id)) is not None:
        return done
    resumable = any((rd / ".partial" / "checkpoints").glob("step-*"))
    try:
        if rd.exists() and not resumable:  # an interrupted attempt: start clean, no stale file survives
            shutil.rmtree(rd)
        rd.mkdir(parents=True, exist_ok=resumable)
        write_json(rd / STARTED_FILE, {"pid": os.getpid(), "host": socket.gethostname(), "started_at": timestamp(),
                                       "started_unix": time.time()})
        logfile = open(rd / "log.txt", "w")
    except OSError as exc:  # a full disk before the run even starts: stop cleanly, resume later
        raise AletheiaError(f"cannot start run {job.run_id} ({_os_words(exc)}); free space and rerun the same "
                            "command to resume (finished runs are kept)") from None
    start = time.perf_counter()
    try:
        with contextlib.redirect_stderr(logfile):
            try:
                record = _execute(job, resume=resumable)
            except Exception as exc:  # noqa: BLE001 - every failure is recorded, the campaign goes on
                # a full disk must not turn one failed run into a crashed campaign
                with contextlib.suppress(OSError):
                    (rd / "error.txt").write_text(traceback.format_exc())
                record = job.failure(_reason(exc))
    finally:
        with contextlib.suppress(OSError):  # a log that cannot be flushed to a full disk is no failure
            logfile.close()
    record = record.replace(wall_seconds=round(time.perf_counter() - start, 3))
    try:
        store.save(job.run_id, record)  # atomic, and last: from here on the run is done
    except OSError as exc:  # nothing can be recorded: stop cleanly, the run is redone on resume
        raise AletheiaError(f"cannot record run {job.run_id} ({_os_words(exc)}); free space and rerun the "
                            "same command to resume (finished runs are kept)") from None
    (rd / STARTED_FILE).unlink(missing_ok=True)
    return record


def _os_words(exc: OSError) -> str:
    return disk_full(exc) or exc.strerror or str(exc)


def _reason(exc: BaseException) -> str:
    import torch

    msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in msg.lower():
        return f"out of memory: {msg}"
    reason = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    full = disk_full(exc)
    return f"{full} ({reason}); free space and rerun with --retry-failed" if full else reason


def _execute(job: RunJob, resume: bool = False) -> RunRecord:
    """load → (reuse the probe) → train → evaluate → record: run_training does the work."""
    from ..recipe import run_training

    cfg: RunConfig = RunConfig.from_dict(job.config)  # type: ignore[assignment]
    cfg.model = model_path = materialize_model(ModelSpec(id=job.model_id), job.campaign_dir)
    shared = RunStore(job.campaign_dir).shared(job.model, job.seed)
    notes = []

    if job.match == "wallclock":
        steps, why = wallclock_steps(job)
        if steps is None:
            return job.failure(why)
        cfg.train.steps = steps
        notes.append(why)

    selection = (load_shared_selection(shared / "probe.json", cfg)
                 if cfg.method == "aletheia" and job.reuse_probe else None)
    baseline = read_json(shared / "baseline.json")

    trained = run_training(cfg, selection=selection, progress=False, device=job.device,
                           overwrite=True, baseline=baseline, resume=resume)

    if job.reuse_probe and selection is None and (probe := read_json(job.run_dir / "probe.json")) is not None:
        shared.mkdir(parents=True, exist_ok=True)
        write_json(shared / "probe.json", {**probe, "probed_by": job.run_id})
    if baseline is None and trained.eval_loss_before is not None:
        write_json(shared / "baseline.json", {"eval_loss": trained.eval_loss_before,
                                              "accuracy": trained.accuracy_before})

    record = trained.replace(run_id=job.run_id, model=job.model, model_id=job.model_id, recipe=job.recipe,
                             budget=job.budget, probe_reused=selection is not None, notes=notes)
    if job.benchmarks and record.completed:
        record = record.replace(**_benchmarks(job, model_path, cfg, notes))
    return record


def wallclock_steps(job: RunJob) -> tuple[int | None, str]:
    """Steps that fill the paired standard run's training time at the paired Aletheia run's pace."""
    store = RunStore(job.campaign_dir)
    std = store.record(run_id(job.model, job.seed, "standard", None))
    ale = store.record(run_id(job.model, job.seed, "aletheia", job.budget))
    for name, rec in (("standard", std), ("aletheia", ale)):
        if rec is None or not rec.completed or not rec.train_seconds:
            return None, f"cannot match wall-clock: the paired {name} run did not complete"
    per_step = ale.train_seconds / max(1, ale.steps_done or ale.steps)
    steps = max(1, round(std.train_seconds / per_step))
    return steps, (f"wall-clock matched: {steps} steps = standard {std.train_seconds:.2f}s / "
                   f"aletheia {per_step:.4f}s per step")


def load_shared_selection(path: Path, cfg: RunConfig):
    """Rebuild a Selection at this run's budget from probe scores saved by an earlier run."""
    from ..selection import Selection, top_fraction

    probe = read_json(path)
    if probe is None or probe.get("selector") != cfg.probe.selector:
        return None
    scores = probe["scores"]
    layers = top_fraction(scores, cfg.probe.fraction)
    details = {"probe_reused_from": probe.get("probed_by")}
    if cfg.probe.layers is not None:
        details["probe_selected_layers"], layers = layers, sorted(set(cfg.probe.layers))
    return Selection(probe["selector"], scores, layers, cfg.probe.fraction, probe.get("seconds", 0.0),
                     details=details)


class _BenchmarksUnavailable(Exception):
    """The base model could not be benchmarked (no data, no sandbox ...): skip the adapter too."""


def _benchmarks(job: RunJob, model_path: str | None, cfg: RunConfig, notes: list[str]) -> dict:
    """Benchmark scores (percent) of the base model (once per model) and of this run's adapter."""
    try:
        from ..evaluation.suite import EvalConfig, run_suite
        from ..models import load_model_and_tokenizer

        eval_cfg = EvalConfig.from_dict({**job.eval_options, "tasks": list(job.benchmarks)})
        device = resolve_device(job.device)
        base_file = RunStore(job.campaign_dir).shared(job.model) / "benchmarks_base.json"
        if (base := read_json(base_file)) is None:
            try:
                model, tok = load_model_and_tokenizer(model_path, device=device)
                base = run_suite(model, tok, list(job.benchmarks), eval_cfg, progress=False)
                del model
            except Exception as exc:  # noqa: BLE001 - remembered, so later runs do not retry it
                base = {"error": _reason(exc)}
            write_json(base_file, base)
        if "error" in base:
            raise _BenchmarksUnavailable(f"base model: {base['error']}")
        from peft import PeftModel

        model, tok = load_model_and_tokenizer(model_path, device=device)
        model = PeftModel.from_pretrained(model, str(job.run_dir))
        tuned = run_suite(model, tok, list(job.benchmarks), eval_cfg, progress=False)
        write_json(job.run_dir / "benchmarks.json", tuned)
    except Exception as exc:  # noqa: BLE001 - a benchmark problem must not lose the training result
        why = str(exc) if isinstance(exc, _BenchmarksUnavailable) else _reason(exc)
        notes.append(f"benchmarks not measured: {why}")
        return {}
    return {f"{task}_{side}": _score(result.get(task), BENCHMARK_METRICS[task])
            for task in job.benchmarks if task in BENCHMARK_METRICS
            for side, result in (("base", base), ("ft", tuned))}


def _score(result: Any, metric: str) -> float | None:
    value = result.get(metric) if isinstance(result, dict) else None
    return None if value is None else 100.0 * float(value)



# --- the whole campaign -------------------------------------------------------------------------

def _comparable(spec: CampaignSpec) -> dict:
    """What must not change between a campaign's runs (where and how they execute may change)."""
    may_change = ("output", "executor", "name", "description")
    return {k: v for k, v in spec.to_dict().items() if k not in may_change}


def run_campaign(spec: CampaignSpec, campaign_dir: str | Path | None = None, progress: bool = True,
                 retry_failed: bool = False) -> list[dict]:
    """Run every unfinished job of the campaign with its executor, then write ``results.csv``."""
    from .progress import ProgressView
    from .results import write_results_csv

    spec.validate()
    out = Path(campaign_dir or spec.output)
    check_writable(out)  # before any model is built or loaded
    store = RunStore(out)
    store.open(spec, SPEC_FILE, _comparable, kind="campaign", noun="spec")  # a resumed campaign's must match
    jobs = plan_jobs(spec, out)
    for m in spec.models:  # build random models once, here, not in every worker
        materialize_model(m, out)
    todo = store.todo(jobs, retry_failed)
    done = [r for job in jobs if (r := store.record(job.run_id)) is not None]
    view = ProgressView(total=len(jobs), already=done, enabled=progress,
                        on_done=lambda: _refresh_results(out))
    executor = get_executor(spec.executor, out)
    for phase in (0, 1):
        store.run(executor, run_one, [job for job in todo if job.phase == phase], view.event)
    view.close()
    try:
        return write_results_csv(out)
    except OSError as exc:
        raise AletheiaError(f"cannot write {out / 'results.csv'} ({_os_words(exc)}); every run's record is kept: "
                            "free space and rerun the same command to write it") from None


def _refresh_results(out: Path) -> None:
    """results.csv after each run, for a look while the campaign goes on; a full disk skips it."""
    from .results import write_results_csv

    with contextlib.suppress(OSError):
        write_results_csv(out)


def campaign_status(campaign_dir: str | Path) -> dict:
    """Done / running / failed / pending counts, time so far and an estimate of the time left."""
    out = Path(campaign_dir)
    spec = load_campaign(out)
    jobs, store = plan_jobs(spec, out), RunStore(out)
    state: dict[str, list[str]] = {k: [] for k in ("completed", "failed", "running", "interrupted", "pending")}
    durations = []
    for job in jobs:
        if (rec := store.record(job.run_id)) is not None:
            state["completed" if rec.completed else "failed"].append(job.label)
            if rec.wall_seconds:
                durations.append(rec.wall_seconds)
            continue
        started = read_json(job.run_dir / STARTED_FILE)
        if started is None:
            state["pending"].append(job.label)
        elif started.get("host") == socket.gethostname() and not _alive(started.get("pid")):
            state["interrupted"].append(job.label)
        else:
            state["running"].append(job.label)
    left = len(state["pending"]) + len(state["running"]) + len(state["interrupted"])
    mean = sum(durations) / len(durations) if durations else None
    return {"campaign": spec.name, "folder": str(out), "total": len(jobs),
            **{k: len(v) for k, v in state.items()}, "runs": state,
            "seconds_so_far": round(sum(durations), 1),
            "estimate_left_seconds": round(mean * left, 1) if mean is not None else None}


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (OSError, TypeError, ValueError):
        return False


__all__ = ["RunJob", "campaign_status", "load_campaign", "plan_jobs", "run_campaign", "run_id",
           "run_one"]
