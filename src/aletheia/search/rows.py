"""A search's rows: each planned run joined with its ``RunRecord``, and what the stages do with them.

Shared by the runner, the report and the Optuna stage, so none of them imports another's internals.
"""

from __future__ import annotations

import sys
from typing import Any

from ..runs import RunRecord, finite


def log(msg: str) -> None:
    print(f"aletheia: search: {msg}", file=sys.stderr, flush=True)


RECORD_KEYS = ("status", "reason", "eval_loss", "eval_loss_before", "train_seconds", "median_step_seconds",
               "trainable_params", "selected_layers", "accuracy")
"""What a row takes from its run's record, in this order."""


def row_of(entry: dict, record: RunRecord | None) -> dict:
    """A planned run joined with its record, under the record's names (``ok``: usable loss)."""
    if record is None:
        return {**entry, **dict.fromkeys(RECORD_KEYS), "status": "missing", "ok": False}
    ok = record.completed and finite(record.eval_loss)
    return {**entry, **{k: getattr(record, k) for k in RECORD_KEYS},
            "eval_loss": record.eval_loss if ok else None, "ok": bool(ok)}


def add_speed(rows: list[dict], baselines: list[dict]) -> list[dict]:
    """Speed vs standard LoRA: baseline train time / this run's, against the baseline with the same
    steps (else the ratio of median step times)."""
    by_steps = {b["steps"]: b for b in baselines if b["ok"] and b.get("train_seconds")}
    any_base = next(iter(by_steps.values()), None)
    for r in rows:
        r["speedup"] = None
        base = by_steps.get(r["steps"])
        if base is not None and r.get("train_seconds"):
            r["speedup"] = base["train_seconds"] / r["train_seconds"]
        elif any_base is not None and r.get("median_step_seconds") and any_base.get("median_step_seconds"):
            r["speedup"] = any_base["median_step_seconds"] / r["median_step_seconds"]
    return rows


def standard(rows: list[dict]) -> list[dict]:
    """The standard LoRA baselines among the rows."""
    return [r for r in rows if r["method"] == "standard"]


def rank_rows(rows: list[dict], decimals: int) -> list[dict]:
    """Completed aletheia runs, best first: held-out loss rounded to ``decimals``, ties to the faster."""
    ok = [r for r in rows if r["ok"] and r["method"] == "aletheia"]
    return sorted(ok, key=lambda r: (round(r["eval_loss"], decimals), r.get("train_seconds") or float("inf"),
                                     r["run_id"]))


def brief(r: dict) -> dict:
    """What a stage's decision file keeps of a row."""
    keys = ("run_id", "stage", "arm", "method", "settings", "layers", "steps", "seed", "status", "eval_loss",
            "train_seconds", "median_step_seconds", "speedup", "trainable_params")
    return {k: r.get(k) for k in keys}


def fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def order(v: Any) -> tuple:
    """Sort key for factor levels that may be numbers or names."""
    return (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))


def mean(values: list) -> float | None:
    vals = [v for v in values if finite(v)]
    return sum(vals) / len(vals) if vals else None
