"""Layer selection (paper §3.3) and the selector registry.

A selector turns the model and probe batches into a ``Selection``: a score per layer and the chosen
layers. The default, ``gradient-norm``, is the paper's: probe scores, then the top ``fraction`` of
layers. Register new selectors with ``@register_selector("name")``; a selector that only scores
layers can reuse ``top_fraction`` for the choice.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from .config import AdapterConfig, ProbeConfig
from .errors import AletheiaError
from .probe import ProbeResult, run_probe
from .utils import write_json


@dataclass
class SelectionContext:
    model: nn.Module
    batches: list[dict[str, torch.Tensor]]
    config: ProbeConfig
    seed: int = 42
    progress: bool = True
    adapter: AdapterConfig | None = None
    """The adapters that will be trained (the cost-aware selector predicts their step time)."""


@dataclass
class Selection:
    selector: str
    scores: list[float]
    layers: list[int]
    """Selected layer indices, ascending."""
    fraction: float
    seconds: float
    probe: ProbeResult | None = None
    details: dict = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return len(self.scores)

    @property
    def ranking(self) -> list[int]:
        return sorted(range(len(self.scores)), key=lambda i: (-self.scores[i], i))

    @property
    def normalized(self) -> list[float]:
        total = sum(self.scores)
        return [s / total if total > 0 else 0.0 for s in self.scores]

    @property
    def signal_kept(self) -> float:
        """Share of the total score held by the selected layers."""
        norm = self.normalized
        return sum(norm[i] for i in self.layers)

    def to_dict(self) -> dict:
        out = {
            "selector": self.selector,
            "num_layers": self.num_layers,
            "fraction": self.fraction,
            "selected_layers": self.layers,
            "scores": self.scores,
            "normalized_scores": self.normalized,
            "ranking": self.ranking,
            "signal_kept": self.signal_kept,
            "seconds": self.seconds,
        }
        if self.probe is not None:
            out.update(
                mode=self.probe.mode, batches=self.probe.batches, passes=self.probe.passes,
                probe_seconds=self.probe.seconds, probe_losses=self.probe.losses,
                per_batch_norms=self.probe.per_batch,
            )
        out.update(self.details)
        return out


SelectorFn = Callable[[SelectionContext], Selection]
SELECTORS: dict[str, SelectorFn] = {}


def register_selector(name: str) -> Callable[[SelectorFn], SelectorFn]:
    def deco(fn: SelectorFn) -> SelectorFn:
        SELECTORS[name] = fn
        return fn
    return deco


def top_fraction(scores: list[float], fraction: float) -> list[int]:
    """The ⌊fraction·L + ½⌋ highest-scoring layers (at least one), ties to the lower index."""
    if not 0.0 < fraction <= 1.0:
        raise AletheiaError(f"fraction={fraction} must be in (0, 1], e.g. 0.5 for half the layers")
    k = max(1, min(len(scores), math.floor(fraction * len(scores) + 0.5)))
    ranking = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(ranking[:k])


@register_selector("gradient-norm")
def gradient_norm(ctx: SelectionContext) -> Selection:
    """The paper's selector: sum of per-batch gradient L2 norms, top fraction of layers."""
    cfg = ctx.config
    result = run_probe(ctx.model, ctx.batches, cfg.mode, cfg.chunk_size, ctx.progress)
    return Selection("gradient-norm", result.scores, top_fraction(result.scores, cfg.fraction),
                     cfg.fraction, result.seconds, probe=result)


def select_layers(ctx: SelectionContext) -> Selection:
    """Run the configured selector; an explicit ``layers`` list in the config overrides its choice."""
    cfg = ctx.config
    if cfg.selector not in SELECTORS:
        raise AletheiaError(
            f"unknown selector '{cfg.selector}'; available: {', '.join(sorted(SELECTORS))}"
        )
    start = time.perf_counter()
    selection = SELECTORS[cfg.selector](ctx)
    selection.seconds = time.perf_counter() - start
    if cfg.layers is not None:
        bad = [i for i in cfg.layers if i >= selection.num_layers]
        if bad:
            raise AletheiaError(
                f"layers {bad} do not exist: the model has {selection.num_layers} layers (0..{selection.num_layers - 1})"
            )
        selection.details["probe_selected_layers"] = selection.layers
        selection.layers = sorted(set(cfg.layers))
        selection.details["override"] = "layers given explicitly"
    return selection


def write_probe_json(path: str | Path, selection: Selection, **extra) -> None:
    write_json(path, {**selection.to_dict(), **extra})


# More selectors (random, last-n/first-n, spectrum, cost-aware, ...) register themselves on import.
from . import selectors as _selectors  # noqa: E402,F401
