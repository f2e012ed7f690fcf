"""Forgetting: each method's change vs the base model, the paper's extra forgetting, McNemar on MMLU.

Deltas are in percentage points (held-out loss in nats). ``extra forgetting`` = Aletheia's delta −
standard LoRA's delta (the paper's definition): for an accuracy, positive means Aletheia kept more
than standard LoRA; for the loss, negative means Aletheia's loss is lower. With
200 MMLU questions a difference of a few points can be noise; the exact McNemar test on the paired
answers says how likely the discordant pairs are under "no difference".
"""

from __future__ import annotations

from typing import Any

from scipy.stats import binomtest

from ..tables import markdown_table, text_table

METRICS = [  # (label, task, key, scale, unit)
    ("MMLU accuracy", "mmlu", "accuracy", 100.0, "pp"),
    ("GSM8K strict-match", "gsm8k", "strict_match", 100.0, "pp"),
    ("GSM8K flexible-extract", "gsm8k", "flexible_extract", 100.0, "pp"),
    ("HumanEval pass@1", "humaneval", "pass@1", 100.0, "pp"),
    ("held-out loss", "heldout", "loss", 1.0, "nats"),
]


def metric(result: dict[str, Any], task: str, key: str) -> float | None:
    value = (result.get(task) or {}).get(key)
    return float(value) if isinstance(value, (int, float)) else None


def mcnemar(a: list[bool], b: list[bool]) -> dict[str, Any]:
    """Exact McNemar test of paired right/wrong answers on the same questions."""
    if len(a) != len(b):
        raise ValueError("McNemar needs the same questions for both models")
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    n = only_a + only_b
    p = binomtest(min(only_a, only_b), n, 0.5).pvalue if n else 1.0
    return {"only_first_correct": only_a, "only_second_correct": only_b, "p_value": float(p)}


def _mmlu_correct(result: dict[str, Any]) -> dict[tuple[str, int], bool] | None:
    items = (result.get("mmlu") or {}).get("items")
    if not items:
        return None
    return {(it["subject"], it["index"]): bool(it["correct"]) for it in items}


def forgetting_report(results: dict[str, dict[str, Any]], base: str = "base", standard: str = "standard",
                      aletheia: str = "aletheia") -> dict[str, Any]:
    """Per metric: every model's value, its delta vs ``base`` and extra forgetting; plus McNemar tests."""
    rows = []
    for label, task, key, scale, unit in METRICS:
        values = {name: metric(r, task, key) for name, r in results.items()}
        if all(v is None for v in values.values()):
            continue
        b = values.get(base)
        deltas = {n: (v - b) * scale if v is not None and b is not None else None
                  for n, v in values.items() if n != base}
        std, ale = deltas.get(standard), deltas.get(aletheia)
        extra = ale - std if ale is not None and std is not None else None
        rows.append({"metric": label, "task": task, "key": key, "unit": unit, "values": values,
                     "delta": deltas, "extra_forgetting": extra})
    tests = {}
    base_c = _mmlu_correct(results.get(base, {}))
    for name, r in results.items():
        other = _mmlu_correct(r)
        if name == base or base_c is None or other is None or set(other) != set(base_c):
            continue
        keys = sorted(base_c)
        tests[f"{base} vs {name}"] = mcnemar([base_c[k] for k in keys], [other[k] for k in keys])
    s_c, a_c = _mmlu_correct(results.get(standard, {})), _mmlu_correct(results.get(aletheia, {}))
    if s_c and a_c and set(s_c) == set(a_c):
        keys = sorted(s_c)
        tests[f"{standard} vs {aletheia}"] = mcnemar([s_c[k] for k in keys], [a_c[k] for k in keys])
    return {"rows": rows, "mcnemar_mmlu": tests}


def _fmt(value: float | None, unit: str, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    if unit == "pp":
        return f"{value:+.1f} pp" if signed else f"{value:.1f}%"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def forgetting_table(report: dict[str, Any], names: list[str], base: str = "base", markdown: bool = False) -> str:
    """The table ``compare --eval`` prints: values, deltas vs base, extra forgetting, McNemar."""
    others = [n for n in names if n != base]
    head = ["metric", *names, *[f"Δ {n}" for n in others]] + (["extra forgetting"] if len(others) == 2 else [])
    lines = []
    for row in report["rows"]:
        unit, scale = row["unit"], 100.0 if row["unit"] == "pp" else 1.0
        vals = [_fmt(None if row["values"].get(n) is None else row["values"][n] * scale, unit) for n in names]
        deltas = [_fmt(row["delta"].get(n), unit, signed=True) for n in others]
        extra = [_fmt(row["extra_forgetting"], unit, signed=True)] if len(others) == 2 else []
        lines.append([row["metric"], *vals, *deltas, *extra])
    out = [(markdown_table if markdown else text_table)(head, lines)]
    for pair, t in report["mcnemar_mmlu"].items():
        a, b = pair.split(" vs ")
        out.append(f"{'' if not markdown else chr(10)}MMLU McNemar {pair}: "
                   f"{t['only_first_correct']} right only by {a}, "
                   f"{t['only_second_correct']} only by {b}, p = {t['p_value']:.3f}"
                   + (" (not significant at 0.05)" if t["p_value"] >= 0.05 else ""))
    if report["rows"]:
        out.append("Δ = change vs base (pp; loss in nats); extra forgetting = Δ aletheia − Δ standard: "
                   "Aletheia forgot less when it is positive for accuracies, negative for the loss.")
    return "\n".join(out)
