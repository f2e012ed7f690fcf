"""Optional Optuna stage: sample recipes beyond the fixed arms, as ordinary search runs.

The study minimises the same objective (held-out loss at ``full.steps``) over the same five
settings, and starts warm: every completed fixed-arm run at the full step count is added as a
finished trial (with its quick-scan loss as the intermediate value at ``scan.steps``). With the
``median`` pruner each trial first trains for ``scan.steps``; when that loss is worse than the median
of earlier trials at the same point the trial stops there (the full run is never started). Trials are
saved to ``stages/optuna.plan.json`` before they run, so a resumed search replays the same trials
(``enqueue_trial``) and skips their finished runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import AletheiaError
from ..utils import write_json
from .config import ArmSpec
from .rows import log

if TYPE_CHECKING:
    from .runner import Search


def _distributions(search: Search) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    oc = search.cfg.optuna
    hi = min(oc.layers[1], search.num_layers)
    lo = min(oc.layers[0], hi)
    return {"layers": IntDistribution(lo, hi), "modules": CategoricalDistribution(list(oc.modules)),
            "attention_rank": CategoricalDistribution(list(oc.ranks)),
            "mlp_rank": CategoricalDistribution(list(oc.ranks)),
            "lr": FloatDistribution(oc.lr[0], oc.lr[1], log=True)}


def _inside(settings: dict, dists: dict[str, Any]) -> bool:
    """Whether every setting is one of its distribution's choices or inside its range."""
    return all(settings[k] in d.choices if hasattr(d, "choices") else d.low <= settings[k] <= d.high
               for k, d in dists.items())


def run_optuna_trials(search: Search) -> tuple[list[dict], dict]:
    """Run ``optuna.trials`` trials; return the full-length trial rows and the stage's decisions."""
    try:
        import optuna
        from optuna.trial import TrialState
    except ImportError:
        raise AletheiaError("optuna.trials > 0 needs Optuna: pip install optuna (or set optuna.trials: 0)") from None
    cfg, oc = search.cfg, search.cfg.optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = _distributions(search)
    sampler = (optuna.samplers.TPESampler(seed=cfg.seed) if oc.sampler == "tpe"
               else optuna.samplers.RandomSampler(seed=cfg.seed))
    staged = oc.pruner == "median" and cfg.scan.steps < cfg.full.steps
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0) if staged
              else optuna.pruners.NopPruner())
    study = optuna.create_study(direction="minimize", sampler=sampler, pruner=pruner)

    # warm start: the fixed arms' full-length results are trials the sampler learns from
    scan_loss = {r["arm"]: r["eval_loss"] for r in search.rows("scan") if r["ok"]}
    warm, notes = [], []
    for r in search.rows("full") + search.rows("push"):
        if not (r["ok"] and r["method"] == "aletheia"):
            continue
        if not _inside(r["settings"], dists):
            notes.append(f"{r['arm']} is outside the search space: not used as a warm start")
            continue
        inter = {cfg.scan.steps: scan_loss[r["arm"]]} if staged and r["arm"] in scan_loss else None
        study.add_trial(optuna.trial.create_trial(params=dict(r["settings"]), distributions=dists,
                                                  value=r["eval_loss"], intermediate_values=inter))
        warm.append(r["arm"])

    entries = search.saved_plan("optuna")

    def run(entry: dict) -> dict:
        """Add the run to the saved plan (once) before it starts, then run it."""
        if all(e["run_id"] != entry["run_id"] for e in entries):
            entries.append(entry)
            write_json(search.stage_file("optuna", plan=True), {"stage": "optuna", "runs": entries})
        return search.run([entry], "optuna")[0]

    full_rows, trials = [], []
    for i in range(oc.trials):
        known = next((e for e in entries if e["trial"] == i), None)
        if known is not None:
            study.enqueue_trial(dict(known["settings"]))
        trial = study.ask(dists)
        arm = ArmSpec(name=f"t{i:03d}", **trial.params)
        info: dict[str, Any] = {"trial": i, "settings": arm.settings()}
        if staged:
            row = run(search.entry("optuna", arm, cfg.scan.steps, trial=i,
                                   run_id=f"optuna__{arm.name}__s{cfg.scan.steps}"))
            if not row["ok"]:
                study.tell(trial, state=TrialState.FAIL)
                trials.append({**info, "state": "failed", "reason": row.get("reason")})
                continue
            trial.report(row["eval_loss"], cfg.scan.steps)
            if trial.should_prune():
                study.tell(trial, state=TrialState.PRUNED)
                trials.append({**info, "state": "pruned", "loss_at_scan_steps": row["eval_loss"]})
                log(f"optuna: trial {i} pruned at {cfg.scan.steps} steps (loss {row['eval_loss']:.4f})")
                continue
        row = run(search.entry("optuna", arm, cfg.full.steps, run_id=f"optuna__{arm.name}", trial=i))
        full_rows.append(row)
        if row["ok"]:
            study.tell(trial, row["eval_loss"])
            trials.append({**info, "state": "complete", "value": row["eval_loss"]})
        else:
            study.tell(trial, state=TrialState.FAIL)
            trials.append({**info, "state": "failed", "reason": row.get("reason")})
    states = [t["state"] for t in trials]
    pruning = f"median pruner at {cfg.scan.steps} steps" if staged else "no pruner"
    notes.insert(0, f"{oc.sampler} sampler (seed {cfg.seed}), {pruning}; warm start from {len(warm)} fixed-arm "
                    f"run(s): {', '.join(warm) or 'none'}; {states.count('complete')} complete, "
                    f"{states.count('pruned')} pruned, {states.count('failed')} failed")
    return full_rows, {"trials": trials, "warm_start": warm, "notes": notes}
