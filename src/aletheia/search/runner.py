"""The search pipeline: probe → quick scan → full runs → push → (optuna) → factorial ablation.

Every run is one campaign job: ``aletheia.campaign.run_one`` trains it with
``aletheia.recipe.run_training`` into ``OUT/runs/RUN_ID/`` and writes ``record.json`` as its last
step, and the campaign executors (``local``, ``ray``, ``slurm``) map it over a stage's runs. An arm's
layers are the top k of the saved probe ranking, passed as explicit layers; its ranks, modules and lr
go into the run's ``RunConfig``.

Resuming. The probe is saved once (``probe.json``). Each stage writes its plan
(``stages/STAGE.plan.json``) before it runs anything and its decisions (``stages/STAGE.json``) when
all its runs have records; a stage with decisions is done. Rerunning the same command after a stop
skips done stages, reuses a started stage's plan and skips its finished runs (their records are
never rewritten); a run that was cut off is cleared and started again.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..campaign.executors import get_executor
from ..campaign.models import materialize_model
from ..campaign.runner import RunJob, run_one
from ..campaign.spec import ModelSpec
from ..config import AdapterConfig, run_config
from ..errors import AletheiaError
from ..outputs import check_writable
from ..runs import RunRecord, RunStore
from ..utils import write_json
from .ablation import factorial_2x2
from .config import FACTORS, STAGES, ArmSpec, SearchConfig
from .optuna_stage import run_optuna_trials
from .report import write_search_report
from .rows import add_speed, brief, fmt, log, mean, order, rank_rows, row_of, standard

CONFIG_FILE = "search.yaml"
PROBE_FILE = "probe.json"


# --- runs ---------------------------------------------------------------------------------------

def baseline_entry(stage: str, cfg: SearchConfig, steps: int) -> dict:
    """Standard LoRA (every layer, ``adapter.standard_rank``, the base lr) at ``steps``."""
    return {"run_id": f"{stage}__standard", "stage": stage, "arm": "standard", "method": "standard",
            "settings": None, "layers": None, "steps": steps, "seed": cfg.seed}


def make_job(entry: dict, cfg: SearchConfig, out: Path) -> RunJob:
    """The campaign job of a planned run."""
    rc = run_config(cfg, model=None if cfg.model == "default" else cfg.model, method=entry["method"],
                    seed=entry["seed"], output=str(out / "runs" / entry["run_id"]),
                    eval_accuracy_examples=cfg.eval_accuracy_examples)
    rc.probe.layers, rc.train.steps = entry["layers"], entry["steps"]
    if (s := entry["settings"]) is not None:
        rc.adapter.modules, rc.train.lr = s["modules"], s["lr"]
        rc.adapter.attention_rank, rc.adapter.mlp_rank = s["attention_rank"], s["mlp_rank"]
    rc.validate()
    return RunJob(run_id=entry["run_id"], campaign_dir=str(out), model=ModelSpec(id=cfg.model).key, model_id=cfg.model,
                  seed=entry["seed"], recipe=entry["arm"], budget=None, config=rc.to_dict(),
                  device=cfg.device, gpus=cfg.executor.gpus_per_run, reuse_probe=True)


# --- the probe, once ----------------------------------------------------------------------------

def run_probe_stage(cfg: SearchConfig, out: Path) -> dict:
    """Probe the model on the user's data once; every arm takes its layers from this ranking."""
    path = out / PROBE_FILE
    if path.is_file():
        return json.loads(path.read_text())
    from ..plots import plot_probe_scores
    from ..recipe import prepare, probe_and_select
    from ..selection import write_probe_json

    model_path = materialize_model(ModelSpec(id=cfg.model), out)
    rc = run_config(cfg, model=model_path, seed=cfg.seed, output=str(out), adapter=AdapterConfig())
    log("probe: scoring every layer on the training data")
    ws = prepare(rc, cfg.device)
    selection = probe_and_select(rc, ws, progress=False)
    write_probe_json(path, selection, model_path=ws.model_path, seed=cfg.seed, probed_by="search probe")
    plot_probe_scores(selection, out / "probe_scores.png", title=Path(ws.model_path).name)
    del ws
    gc.collect()
    return json.loads(path.read_text())


# --- stages -------------------------------------------------------------------------------------

class Search:
    """State shared by the stages: the config, the folder, the probe ranking, the stage results."""

    def __init__(self, cfg: SearchConfig, out: Path, probe: dict, retry_failed: bool = False):
        self.cfg, self.out, self.probe = cfg, out, probe
        self.retry_failed = retry_failed
        self.ranking: list[int] = probe["ranking"]
        self.num_layers: int = probe["num_layers"]

    def stage_file(self, stage: str, plan: bool = False) -> Path:
        return self.out / "stages" / f"{stage}{'.plan' if plan else ''}.json"

    def decisions(self, stage: str) -> dict | None:
        path = self.stage_file(stage)
        return json.loads(path.read_text()) if path.is_file() else None

    def saved_plan(self, stage: str) -> list[dict]:
        """The runs of a stage's saved plan (none before it is planned)."""
        path = self.stage_file(stage, plan=True)
        return json.loads(path.read_text())["runs"] if path.is_file() else []

    def plan(self, stage: str, make: Callable[[], list[dict]]) -> list[dict]:
        """The stage's saved plan, or a new one saved before any of its runs starts."""
        path = self.stage_file(stage, plan=True)
        if not path.is_file():
            write_json(path, {"stage": stage, "runs": make()})
        return self.saved_plan(stage)

    def finish(self, stage: str, decisions: dict) -> dict:
        write_json(self.stage_file(stage), {"stage": stage, **decisions})
        log(f"{stage}: {decisions.get('summary', 'done')}")
        return decisions

    def entry(self, stage: str, arm: ArmSpec, steps: int, seed: int | None = None, run_id: str | None = None,
              **extra: Any) -> dict:
        """A planned run: the arm's settings, its layers (top k of the probe ranking), steps and seed."""
        if arm.layers > self.num_layers:
            raise AletheiaError(f"arm '{arm.name}' asks for {arm.layers} layers but the model has "
                                f"{self.num_layers}; lower its 'layers' in the search config")
        return {"run_id": run_id or f"{stage}__{arm.name}", "stage": stage, "arm": arm.name,
                "method": "aletheia", "settings": arm.settings(), "layers": sorted(self.ranking[: arm.layers]),
                "steps": steps, "seed": self.cfg.seed if seed is None else seed, **extra}

    def run(self, entries: list[dict], stage: str) -> list[dict]:
        """Run the planned runs that have no record yet through the configured executor; return rows.

        ``retry_failed``: also run again those whose record says they failed."""
        store = RunStore(self.out)
        jobs = [make_job(e, self.cfg, self.out) for e in entries]
        todo = store.todo(jobs, self.retry_failed)
        if todo:
            # the search's probe goes where run_one looks for a shared one, for every seed, so no run
            # probes again (the arms' layers are explicit; the scores are kept for the record)
            for target in {store.shared(j.model, j.seed) / PROBE_FILE for j in todo}:
                if not target.is_file():
                    write_json(target, {**self.probe, "probed_by": "search probe"})
            done = len(jobs) - len(todo)

            def on_event(kind: str, job: RunJob, record: RunRecord | None) -> None:
                nonlocal done
                if kind == "done" and record is not None:
                    done += 1
                    loss = record.eval_loss
                    log(f"{stage} {done}/{len(jobs)} {job.run_id}: {record.status}, held-out loss "
                        f"{'-' if loss is None else f'{loss:.4f}'}, train {record.train_seconds or 0:.1f}s")

            log(f"{stage}: {len(todo)} run(s) to do, {done} already recorded")
            store.run(get_executor(self.cfg.executor, self.out), run_one, todo, on_event)
        return [row_of(e, store.record(e["run_id"])) for e in entries]

    def rows(self, stage: str) -> list[dict]:
        """The rows of a stage's plan with their records (for the report)."""
        store = RunStore(self.out)
        return [row_of(e, store.record(e["run_id"])) for e in self.saved_plan(stage)]

    # quick scan --------------------------------------------------------------------------------
    def scan(self) -> dict:
        cfg = self.cfg
        if (d := self.decisions("scan")) is not None:
            return d

        def make() -> list[dict]:
            entries = [self.entry("scan", arm, cfg.scan.steps) for arm in cfg.scan.arms]
            if cfg.scan.baseline:
                entries.append(baseline_entry("scan", cfg, cfg.scan.steps))
            return entries

        rows = self.run(self.plan("scan", make), "scan")
        add_speed(rows, standard(rows))
        ranked = rank_rows(rows, cfg.tie_decimals)
        if not ranked:
            raise AletheiaError("scan: no arm completed; see the runs' error.txt and log.txt under "
                                f"{self.out / 'runs'}, then rerun")
        advance = [r["arm"] for r in ranked[: cfg.full.candidates]]
        failed = [r["arm"] for r in rows if not r["ok"]]
        return self.finish("scan", {
            "ranking": [brief(r) for r in ranked], "advance": advance, "failed": failed,
            "summary": (f"{len(ranked)} arm(s) completed; top {len(advance)} by held-out loss at "
                        f"{cfg.scan.steps} steps (ties to the faster) advance: {', '.join(advance)}"),
        })

    # full runs ---------------------------------------------------------------------------------
    def full(self, scan: dict) -> dict:
        cfg = self.cfg
        if (d := self.decisions("full")) is not None:
            return d
        arms = {a.name: a for a in cfg.scan.arms}

        def make() -> list[dict]:
            entries = [self.entry("full", arms[name], cfg.full.steps) for name in scan["advance"]]
            return entries + [baseline_entry("full", cfg, cfg.full.steps)]

        rows = self.run(self.plan("full", make), "full")
        add_speed(rows, standard(rows))
        ranked = rank_rows(rows, cfg.tie_decimals)
        if not ranked:
            raise AletheiaError(f"full: no candidate completed; see the runs under {self.out / 'runs'}, then rerun")
        w = ranked[0]
        base = next(iter(standard(rows)), None)
        return self.finish("full", {
            "ranking": [brief(r) for r in ranked], "winner": brief(w),
            "baseline": brief(base) if base else None,
            "summary": f"winner at {cfg.full.steps} steps: {w['arm']} (held-out loss {w['eval_loss']:.4f}"
                       + (f", standard LoRA {base['eval_loss']:.4f}" if base and base["ok"] else "") + ")",
        })

    # push --------------------------------------------------------------------------------------
    def push(self, full: dict) -> dict:
        cfg = self.cfg
        if (d := self.decisions("push")) is not None:
            return d
        winner = _arm_of(full["winner"])
        notes: list[str] = []

        def make() -> list[dict]:
            seen = {_key(winner)}
            entries = []
            for v in cfg.push.variations:
                k = winner.layers + v.layers_delta
                if k > self.num_layers or k < 1:
                    notes.append(f"{v.name}: k={k} is outside 1..{self.num_layers}; capped")
                    k = min(max(k, 1), self.num_layers)
                arm = ArmSpec(name=v.name, layers=k, modules=winner.modules,
                              attention_rank=max(1, round(winner.attention_rank * v.rank_factor)),
                              mlp_rank=max(1, round(winner.mlp_rank * v.rank_factor)), lr=winner.lr * v.lr_factor)
                if _key(arm) in seen:
                    notes.append(f"{v.name}: same settings as an earlier run; skipped")
                    continue
                seen.add(_key(arm))
                entries.append(self.entry("push", arm, cfg.full.steps, around=winner.name))
            return entries

        rows = self.run(self.plan("push", make), "push")
        return self.finish("push", {"around": full["winner"]["arm"], "notes": notes,
                                    **self._leader(rows, "push")})

    def _leader(self, new_rows: list[dict], stage: str) -> dict:
        """The best full-length run so far (full, push, optuna), with the new rows ranked."""
        w = rank_rows(self.full_length_rows(), self.cfg.tie_decimals)[0]
        new = rank_rows(new_rows, self.cfg.tie_decimals)
        return {"ranking": [brief(r) for r in new], "winner": brief(w),
                "summary": (f"{'new' if w['stage'] == stage else 'no change:'} leader {w['arm']} "
                            f"(held-out loss {w['eval_loss']:.4f} at {self.cfg.full.steps} steps)")}

    def full_length_rows(self) -> list[dict]:
        full = self.rows("full")
        optuna = [r for r in self.rows("optuna") if r["steps"] == self.cfg.full.steps]
        return add_speed(full + self.rows("push") + optuna, standard(full))

    # optuna ------------------------------------------------------------------------------------
    def optuna(self, leader: dict) -> dict:
        """Optional; asking for more trials later reruns the stage (earlier trials are replayed)."""
        trials = self.cfg.optuna.trials
        if (d := self.decisions("optuna")) is not None and d.get("trials_requested", 0) == trials:
            return d
        if trials == 0:
            return self.finish("optuna", {"skipped": True, "trials_requested": 0, "winner": leader,
                                          "summary": "skipped (optuna.trials is 0)"})
        rows, info = run_optuna_trials(self)
        return self.finish("optuna", {"trials_requested": trials, **info, **self._leader(rows, "optuna")})

    # ablation ----------------------------------------------------------------------------------
    def ablation(self, leader: dict) -> dict:
        cfg = self.cfg
        if (d := self.decisions("ablation")) is not None:
            return d
        winner = _arm_of(leader)
        factors, why = self.ablation_factors(winner)
        (fa, la), (fb, lb) = factors.items()

        def make() -> list[dict]:
            entries = []
            for i, va in enumerate(la):
                for j, vb in enumerate(lb):
                    arm = ArmSpec.from_dict({**winner.to_dict(), fa: va, fb: vb,
                                             "name": f"{fa}-{fmt(va)}__{fb}-{fmt(vb)}"})
                    for seed in cfg.ablation.seeds:
                        entries.append(self.entry("ablation", arm, cfg.full.steps, seed=seed,
                                                  run_id=f"ablation__{arm.name}__seed{seed}", cell=[i, j]))
            return entries

        rows = self.run(self.plan("ablation", make), "ablation")
        ok = [r for r in rows if r["ok"]]
        analysis = factorial_2x2([r["eval_loss"] for r in ok], [r["cell"][0] for r in ok],
                                 [r["cell"][1] for r in ok], names=(fa, fb))
        means = analysis["cell_means"]
        cells = [(i, j) for i in (0, 1) for j in (0, 1)]
        times = {c: mean([r["train_seconds"] for r in ok if r["cell"] == list(c)]) for c in cells}
        bi, bj = min(cells, key=lambda c: (round(means[c[0]][c[1]], cfg.tie_decimals), times[c] or float("inf")))
        sig = [t["term"] for t in analysis["terms"] if t["p"] < cfg.ablation.alpha]
        return self.finish("ablation", {
            "factors": {fa: la, fb: lb}, "why_factors": why, "base": winner.to_dict(), "analysis": analysis,
            "cell_seconds": [[times[(i, j)] for j in (0, 1)] for i in (0, 1)],
            "best_cell": {"cell": [bi, bj], "settings": {**winner.settings(), fa: la[bi], fb: lb[bj]},
                          "mean_eval_loss": means[bi][bj]},
            "failed": [r["run_id"] for r in rows if not r["ok"]],
            "significant": sig,
            "summary": (f"{fa} {la} × {fb} {lb} × {len(cfg.ablation.seeds)} seeds; best cell {fa}={la[bi]}, "
                        f"{fb}={lb[bj]} (mean loss {means[bi][bj]:.4f}); significant at "
                        f"{cfg.ablation.alpha}: {', '.join(sig) or 'none'}"),
        })

    def ablation_factors(self, winner: ArmSpec) -> tuple[dict[str, list], str]:
        """The configured factors, else the two whose quick-scan levels moved the mean loss most."""
        if given := self.cfg.ablation.factors:
            return {k: list(v) for k, v in given.items()}, "set in the search config (ablation.factors)"
        rows = [r for r in self.rows("scan") if r["ok"] and r["method"] == "aletheia"]
        spread = {}
        for f in FACTORS:
            by_level: dict[Any, list[float]] = {}
            for r in rows:
                by_level.setdefault(r["settings"][f], []).append(r["eval_loss"])
            if len(by_level) < 2:
                continue
            means = {lvl: mean(v) for lvl, v in by_level.items()}
            own = getattr(winner, f)
            others = {lvl: m for lvl, m in means.items() if lvl != own}  # not empty: 2+ levels
            other = min(others, key=lambda lvl: (others[lvl], str(lvl)))
            spread[f] = (max(means.values()) - min(means.values()), sorted([own, other], key=order), means)
        if len(spread) < 2:
            raise AletheiaError("ablation: fewer than two factors vary across the quick-scan arms; set "
                                "ablation.factors in the search config, e.g. {modules: [attention, mlp], "
                                "lr: [0.0001, 0.0002]}")
        top = sorted(spread, key=lambda f: (-spread[f][0], FACTORS.index(f)))[:2]
        why = "; ".join(
            f"{f}: quick-scan mean loss by level " + ", ".join(f"{fmt(k)}={v:.4f}" for k, v in
                                                              sorted(spread[f][2].items(), key=lambda x: order(x[0])))
            + f" (range {spread[f][0]:.4f}); levels: the leader's {fmt(getattr(winner, f))} and the best other"
            for f in top)
        return {f: spread[f][1] for f in top}, "the two factors with the largest quick-scan range: " + why


# --- the whole search ---------------------------------------------------------------------------

def _comparable(cfg: SearchConfig) -> dict:
    """What a resumed search must not change (optuna: more trials may be added later)."""
    skip = ("executor", "name", "description", "device", "optuna")
    return {k: v for k, v in cfg.to_dict().items() if k not in skip}


def run_search(cfg: SearchConfig, output: str | Path, stop_after: str | None = None,
               retry_failed: bool = False) -> dict:
    """Run (or resume) every stage, then write ``SEARCH_REPORT.md``, the figure and ``summary.json``.

    ``stop_after``: end after this stage (the report covers the stages done so far).
    ``retry_failed``: run failed runs of unfinished stages again (finished stages keep their decisions).
    """
    cfg.validate()
    if stop_after is not None and stop_after not in STAGES:
        raise AletheiaError(f"stop_after={stop_after!r} is not a stage; use one of {', '.join(STAGES)}")
    out = Path(output)
    check_writable(out)  # before the probe loads the model
    # save the config, or check that a resumed search uses the same one
    RunStore(out).open(cfg, CONFIG_FILE, _comparable, kind="search", noun="config")
    search = Search(cfg, out, run_probe_stage(cfg, out), retry_failed)
    for arm in cfg.scan.arms:  # fail before any training if an arm cannot fit the model
        search.entry("scan", arm, cfg.scan.steps)
    state: dict[str, Any] = {}
    steps: dict[str, Callable[[], Any]] = {
        "scan": search.scan,
        "full": lambda: search.full(state["scan"]),
        "push": lambda: search.push(state["full"]),
        "optuna": lambda: search.optuna(state["push"]["winner"]),
        "ablation": lambda: search.ablation(state["optuna"]["winner"]),
    }
    for name in STAGES[1 : STAGES.index(stop_after or STAGES[-1]) + 1]:  # the probe is done
        state[name] = steps[name]()
    return write_search_report(search)


# --- small helpers ------------------------------------------------------------------------------

def _arm_of(brief: dict) -> ArmSpec:
    return ArmSpec(name=brief["arm"], **brief["settings"])


def _key(arm: ArmSpec) -> tuple:
    unused = {"attention": "mlp_rank", "mlp": "attention_rank"}.get(arm.modules)
    return tuple(None if k == unused else v for k, v in arm.settings().items())
