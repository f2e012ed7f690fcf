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
