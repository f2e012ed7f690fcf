"""``results.csv``: one row per run, identified by (model, seed, recipe, budget), built from the records.

Paired columns compare a run with the standard run of the same model and seed:
``time_ratio`` = standard time / this run's time, ``speedup_pct`` = 100 × (1 − this time / standard
time); benchmark ``*_delta`` = fine-tuned − base (percentage points); ``extra_forgetting`` = this run's
MMLU delta − the standard run's MMLU delta (the paper's Table 3: positive means this recipe forgot
less); ``gsm8k_extra`` / ``humaneval_extra`` likewise; ``eval_loss_vs_standard`` = this run's
held-out loss − the standard run's (positive means worse); ``mmlu_mcnemar_p`` = exact McNemar test
of this run's and the standard run's right/wrong MMLU answers on the same questions (written only
when the run folders hold per-question answers). Empty cells mean "not measured".
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ..runs import RunStore
from ..utils import atomic_write_text
from .spec import RECIPE_KINDS, SPEC_FILE, load_campaign

BENCHMARKS = ("mmlu", "gsm8k", "humaneval")
EXTRA = {b: "extra_forgetting" if b == "mmlu" else f"{b}_extra" for b in BENCHMARKS}
"""Each benchmark's column of (this run's Δ − the standard run's Δ)."""
COLUMNS = [
    "model", "family", "parameters", "layers", "selected_layers", "n_selected", "seed", "recipe", "budget",
    "steps", "status", "reason", "train_seconds", "speedup_pct", "time_ratio", "probe_seconds",
    "trainable_params", "eval_loss_before", "eval_loss", "eval_loss_vs_standard",
    *[f"{b}_{k}" for b in BENCHMARKS for k in ("base", "ft", "delta")],
    *EXTRA.values(), "run_id",
]
OPTIONAL_COLUMNS = ["mmlu_mcnemar_p"]
"""Columns written only when some row has a value, so older results.csv files stay byte-identical."""
INT_COLS = {"parameters", "layers", "n_selected", "seed", "steps", "trainable_params"}
TEXT_COLS = {"model", "family", "selected_layers", "recipe", "status", "reason", "run_id"}
RECIPE_ORDER = {name: i for i, name in enumerate(RECIPE_KINDS)}


def load_records(campaign_dir: str | Path) -> list[dict]:
    """Every finished run's record (``runs/*/record.json``), as plain dicts."""
    return [r.to_dict() for r in RunStore(campaign_dir).records()]


def load_mmlu_answers(campaign_dir: str | Path) -> dict[str, dict[tuple[str, int], bool]]:
    """Each run's MMLU answers (run id → question → right?) from its ``benchmarks.json``."""
    out = {}
    for path in sorted(Path(campaign_dir, "runs").glob("*/benchmarks.json")):
        try:
            items = (json.loads(path.read_text()).get("mmlu") or {}).get("items")
        except (OSError, ValueError, AttributeError):  # unreadable: that run gets no McNemar cell
            continue
        if items:
            out[path.parent.name] = {(it["subject"], it["index"]): bool(it["correct"]) for it in items}
    return out


def _mcnemar_p(a: dict | None, b: dict | None) -> float | None:
    from ..evaluation.forgetting import mcnemar

    if not a or not b or a.keys() != b.keys():
        return None
    keys = sorted(a)
    return mcnemar([a[k] for k in keys], [b[k] for k in keys])["p_value"]


def build_rows(records: list[dict], model_order: list[str] | None = None,
               answers: dict[str, dict] | None = None) -> list[dict]:
    """The table rows: each record plus the columns paired with its standard run (``answers``:
    per-question MMLU answers by run id, for the McNemar column)."""
    std = {(r["model"], r["seed"]): r for r in records if r["recipe"] == "standard"}
    answers = answers or {}
    rows = []
    for r in records:
        row: dict[str, Any] = {c: r.get(c) for c in COLUMNS + OPTIONAL_COLUMNS}
        layers = r.get("selected_layers")
        row["selected_layers"] = " ".join(map(str, layers)) if layers else None
        row["n_selected"] = len(layers) if layers else None
        for b in BENCHMARKS:
            row[f"{b}_delta"] = _sub(r.get(f"{b}_ft"), r.get(f"{b}_base"))
        s = std.get((r["model"], r["seed"]))
        if s is not None and r["recipe"] != "standard" and r.get("status") == s.get("status") == "completed":
            if r.get("train_seconds") and s.get("train_seconds"):
                row["time_ratio"] = s["train_seconds"] / r["train_seconds"]
                row["speedup_pct"] = 100.0 * (1.0 - r["train_seconds"] / s["train_seconds"])
            row["eval_loss_vs_standard"] = _sub(r.get("eval_loss"), s.get("eval_loss"))
            for b, col in EXTRA.items():
                row[col] = _sub(row[f"{b}_delta"], _sub(s.get(f"{b}_ft"), s.get(f"{b}_base")))
            row["mmlu_mcnemar_p"] = _mcnemar_p(answers.get(r.get("run_id")), answers.get(s.get("run_id")))
        rows.append(row)
    order = {m: i for i, m in enumerate(model_order or [])}
    rows.sort(key=lambda r: (order.get(r["model"], len(order)), r["model"], r["seed"],
                             RECIPE_ORDER.get(r["recipe"], 9), r["budget"] if r["budget"] is not None else -1))
    return rows


def _sub(a, b):
    return None if a is None or b is None else a - b


def to_csv(rows: list[dict]) -> str:
    columns = COLUMNS + [c for c in OPTIONAL_COLUMNS if any(row.get(c) is not None for row in rows)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({c: _cell(row.get(c)) for c in columns} for row in rows)
    return buf.getvalue()


def _cell(v):
    if v is None:
        return ""
    return f"{v:.6g}" if isinstance(v, float) else v


def write_results_csv(campaign_dir: str | Path) -> list[dict]:
    """Rebuild ``results.csv`` from the records (atomically) and return its rows."""
    campaign_dir = Path(campaign_dir)
    order = [m.key for m in load_campaign(campaign_dir).models] if (campaign_dir / SPEC_FILE).is_file() else None
    rows = build_rows(load_records(campaign_dir), order, load_mmlu_answers(campaign_dir))
    atomic_write_text(campaign_dir / "results.csv", to_csv(rows))
    return rows


def read_results_csv(path: str | Path) -> list[dict]:
    """Read ``results.csv`` back with numbers as numbers and empty cells as None."""
    with open(path, newline="") as fh:
        return [{k: _parse(k, v) for k, v in raw.items()} for raw in csv.DictReader(fh)]


def _parse(column: str, v: str | None):
    if v == "" or v is None:
        return None
    if column in TEXT_COLS:
        return v
    return int(float(v)) if column in INT_COLS else float(v)
