"""The report's PNG figures, drawn from ``results.csv`` rows and the probe files (``report.Campaign``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the headless backend is chosen)
import numpy as np  # noqa: E402

from ..stats import mean_sd  # noqa: E402
from ..tables import finite  # noqa: E402

MARKERS = {"aletheia": "o", "cost_aware": "s"}


def _colors(n: int):
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def speedup(per_model: dict, label: str, path: Path) -> Path | None:
    """Mean speedup per model with its 95% CI and the seeds as dots."""
    if not per_model:
        return None
    models = list(per_model)
    summ = [per_model[m][0] for m in models]
    err = np.array([[max(0.0, s.mean - s.ci_low) if finite(s.ci_low) else 0.0 for s in summ],
                    [max(0.0, s.ci_high - s.mean) if finite(s.ci_high) else 0.0 for s in summ]])
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(models) + 2), 4.0), dpi=130)
    ax.bar(range(len(models)), [s.mean for s in summ], yerr=err, capsize=5, color="#2e86ab", alpha=0.85,
           label="mean, 95% CI")
    for i, (_, _, pts) in enumerate(per_model.values()):
        ax.scatter([i] * len(pts), pts, color="#1b1b1b", s=14, zorder=3,
                   label="seeds" if i == 0 else None)
    ax.axhline(0, color="#555", lw=0.8)
    ax.set_xticks(range(len(models)), models, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("training speedup vs standard LoRA (%)")
    ax.set_title(f"{label} speedup per model\nbars: mean over seeds, whiskers: 95% CI, dots: seeds",
                 fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    return _save(fig, path)


def speed_vs_forgetting(c, recipes: dict[str, str], path: Path) -> Path | None:
    """One point per (model, seed, recipe): speedup against extra forgetting (or held-out loss)."""
    use_mmlu = c.has_benchmark("mmlu")
    key = "extra_forgetting" if use_mmlu else "eval_loss_vs_standard"
    fig, ax = plt.subplots(figsize=(6.0, 4.2), dpi=130)
    for m, col in zip(c.models, _colors(len(c.models))):
        for recipe, label in recipes.items():
            pts = [(a["speedup_pct"], a.get(key)) for _, a in c.pairs(m, recipe)
                   if finite(a.get("speedup_pct")) and finite(a.get(key))]
            if pts:
                name = m if len(recipes) == 1 else f"{m}, {label}"
                ax.scatter(*zip(*pts), color=col, s=30, label=name, edgecolor="white", lw=0.5,
                           marker=MARKERS.get(recipe, "^"))
    if not ax.has_data():
        plt.close(fig)
        return None
    ax.axhline(0, color="#555", lw=0.8)
    ax.axvline(0, color="#555", lw=0.8, ls=":")
    ax.set_xlabel("training speedup vs standard LoRA (%)")
    if use_mmlu:
        ax.set_ylabel("extra forgetting: Ale MMLU Δ − Std MMLU Δ (pp)")
        ax.set_title("Speed vs extra forgetting (one point per model and seed; up = forgot less)",
                     fontsize=9)
    else:
        ax.set_ylabel("held-out loss: Aletheia − standard")
        ax.set_title("Speed vs quality: MMLU not measured, so held-out loss difference\n"
                     "(one point per model and seed; up = Aletheia's loss is higher)", fontsize=9)
    ax.legend(fontsize=7, frameon=False, loc="best")
    return _save(fig, path)


def compute_matched(c, path: Path) -> Path | None:
    """Held-out loss of standard, Aletheia at the same steps and compute-matched Aletheia."""
    models = [m for m in c.models if c.ok(model=m, recipe="compute_matched")]
    if not models:
        return None
    recipes = [("standard", "standard LoRA", "#9aa5b1"), ("aletheia", "Aletheia (same steps)", "#2e86ab"),
               ("compute_matched", "Aletheia compute-matched", "#d1495b")]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(models) + 2), 4.0), dpi=130)
    width, lows = 0.26, []
    for k, (recipe, label, col) in enumerate(recipes):
        stats = [mean_sd([r["eval_loss"] for r in c.ok(model=m, recipe=recipe)]) for m in models]
        means, sds = [x for x, _ in stats], [sd if finite(sd) else 0.0 for _, sd in stats]
        lows += [x - s for x, s in zip(means, sds) if finite(x)]
        ax.bar(np.arange(len(models)) + (k - 1) * width, means, width, yerr=sds, capsize=3, color=col,
               label=label)
    if lows:
        top = max(r["eval_loss"] for m in models for r in c.ok(model=m) if finite(r.get("eval_loss")))
        pad = top - min(lows) + 1e-3
        ax.set_ylim(min(lows) - 0.1 * pad, top + 0.15 * pad)
    ax.set_xticks(range(len(models)), models, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("held-out loss after training (lower is better)")
    ax.set_title("Compute-matched Aletheia: held-out loss (mean ± SD over seeds)", fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    return _save(fig, path)


def probe_heatmap(c, path: Path, bins: int = 240) -> Path | None:
    """Probe score over normalised depth, one row per model (mean over seeds), 1.0 = uniform share."""
    from ..selection import top_fraction

    budget = c.default_budget or 0.5
    rows, labels, marks = [], [], []
    depth = (np.arange(bins) + 0.5) / bins
    for m in c.models:
        probes = c.probe_scores(m)
        if not probes:
            continue
        n = len(probes[0][0])
        mean_scores = np.mean([p[0] for p in probes if len(p[0]) == n], axis=0) * n
        rows.append(mean_scores[np.minimum((depth * n).astype(int), n - 1)])
        labels.append(f"{m} ({n} layers)")
        marks.append([(i + 0.5) / n for i in top_fraction(list(mean_scores), budget)])
    if not rows:
        return None
    data = np.array(rows)
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(rows) + 1.8), dpi=130)
    im = ax.imshow(data, aspect="auto", cmap="magma", extent=(0, 1, len(rows), 0),
                   interpolation="nearest", vmin=0, vmax=max(2.0, float(np.nanmax(data))))
    for i, xs in enumerate(marks):
        ax.scatter(xs, [i + 0.5] * len(xs), marker="v", color="white", edgecolor="black", lw=0.5, s=28)
    ax.set_yticks(np.arange(len(rows)) + 0.5, labels, fontsize=8)
    ax.set_xlabel("normalised depth (0 = first block, 1 = last block)")
    ax.set_title("Gradient probe: share of the signal by depth (× layers, 1 = uniform), mean over "
                 f"seeds\nwhite marks: layers selected at a {budget:.0%} budget", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02)
    return _save(fig, path)


def layer_budget(c, path: Path) -> Path | None:
    """Mean speedup against the share of layers adapted, one line per model."""
    fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=130)
    for m, col in zip(c.models, _colors(len(c.models))):
        rs = [r for r in c.ok(model=m) if r["recipe"] in ("aletheia", "budget_sweep")
              and finite(r.get("speedup_pct"))]
        budgets = sorted({r["budget"] for r in rs})
        if len(budgets) < 2:
            continue
        means = [mean_sd([r["speedup_pct"] for r in rs if r["budget"] == b])[0] for b in budgets]
        ax.plot([b * 100 for b in budgets], means, marker="o", color=col, label=m)
    if not ax.has_data():
        plt.close(fig)
        return None
    ax.axhline(0, color="#555", lw=0.8)
    ax.set_xlabel("layer budget (% of layers adapted)")
    ax.set_ylabel("training speedup vs standard (%)")
    ax.set_title("Layer budget: speedup (mean over seeds)", fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    return _save(fig, path)
