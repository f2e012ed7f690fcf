"""Figures. Matplotlib with the Agg backend, so plots render on headless machines."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .selection import Selection  # noqa: E402


def plot_probe_scores(selection: Selection, path: str | Path, title: str = "") -> Path:
    """Bar chart of per-layer probe scores, selected layers highlighted."""
    path = Path(path)
    n = selection.num_layers
    chosen = set(selection.layers)
    colors = ["#d1495b" if i in chosen else "#9aa5b1" for i in range(n)]
    fig, ax = plt.subplots(figsize=(max(6, n * 0.28), 3.6), dpi=120)
    ax.bar(range(n), selection.normalized, color=colors)
    ax.set_xlabel("layer (0 = closest to the embeddings)")
    ax.set_ylabel("share of gradient signal")
    ax.set_xticks(range(0, n, max(1, n // 15)))
    ax.set_title(f"{title} probe scores ({selection.selector}): {len(chosen)}/{n} layers selected, "
                 f"{selection.signal_kept:.0%} of the signal", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color="#d1495b"), plt.Rectangle((0, 0), 1, 1, color="#9aa5b1")]
    ax.legend(handles, ["selected", "skipped"], fontsize=8, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_loss_curves(runs: dict[str, list[dict]], path: str | Path, title: str = "") -> Path:
    """Training and held-out loss of each run against optimizer steps and against training seconds.

    ``runs``: name -> the run's ``metrics.jsonl`` records (held-out loss where ``eval_every`` put it).
    """
    path = Path(path)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120, sharey=True)
    colors = {"standard": "#9aa5b1", "aletheia": "#d1495b"}
    for name, records in runs.items():
        color = colors.get(name)
        steps = [r["step"] for r in records]
        seconds, total = [], 0.0
        for r in records:
            total += r["step_seconds"]
            seconds.append(total)
        evals = [(r["step"], s, r["eval_loss"]) for r, s in zip(records, seconds) if r.get("eval_loss") is not None]
        for ax, x in ((axes[0], steps), (axes[1], seconds)):
            ax.plot(x, [r["loss"] for r in records], color=color, lw=0.8, alpha=0.5, label=f"{name} train")
            if evals:
                ex = [e[0] for e in evals] if ax is axes[0] else [e[1] for e in evals]
                ax.plot(ex, [e[2] for e in evals], color=color, marker="o", ms=3, lw=1.6,
                        label=f"{name} held-out")
    axes[0].set_xlabel("optimizer step")
    axes[1].set_xlabel("training seconds")
    axes[0].set_ylabel("loss (nats per response token)")
    axes[1].legend(fontsize=8, frameon=False)
    fig.suptitle(title or "loss during training", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
