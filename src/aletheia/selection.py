"""Layer selection (paper §3.3) and the selector registry.

A selector turns the model and probe batches into a ``Selection``: a score per layer and the chosen
layers. The default, ``gradient-norm``, is the paper's: probe scores, then the top ``fraction`` of
layers (``scores.top_fraction``, re-exported here). Register new selectors with
``@register_selector("name")``; a selector that only scores layers can reuse ``top_fraction`` for
the choice.

The comparison selectors live in ``selectors.py``, which imports this module (never the reverse).
The package's ``__init__`` imports ``selectors.py``, so every built-in selector is registered before
anything can look one up, as PEFT registers its tuners. This module takes the config classes for
type hints only, so ``config.py`` can check a selector name against ``SELECTORS`` without a cycle.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from .errors import AletheiaError
from .probe import ProbeResult, run_probe
from .registry import Registry
from .scores import ranking, shares, top_fraction
from .utils import write_json

if TYPE_CHECKING:
    from .config import AdapterConfig, ProbeConfig


@dataclass
class SelectionContext:
    model: nn.Module
    batches: list[dict[str, torch.Tensor]]
    config: ProbeConfig
    seed: int = 42
    progress: bool = True
    adapter: AdapterConfig | None = None
    """The adapters that will be trained (the cost-aware selector predicts their step time)."""

    def probe(self) -> ProbeResult:
        """The gradient probe of ``model`` on ``batches``, in the configured mode."""
        return run_probe(self.model, self.batches, self.config.mode, self.config.chunk_size, self.progress)


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
        """Layer indices by descending score; ties go to the lower index (``scores.ranking``)."""
        return ranking(self.scores)

    @property
    def normalized(self) -> list[float]:
        """Each layer's share of the total score (sums to 1; see ``scores.shares``)."""
        return shares(self.scores)

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
            out.update(mode=self.probe.mode, batches=self.probe.batches, passes=self.probe.passes,
                       probe_seconds=self.probe.seconds, probe_losses=self.probe.losses,
                       per_batch_norms=self.probe.per_batch)
        out.update(self.details)
        return out


SelectorFn = Callable[[SelectionContext], Selection]
SELECTORS: Registry[SelectorFn] = Registry("selector")
register_selector = SELECTORS.register
"""``@register_selector("name")`` above a selector function adds it to ``SELECTORS``."""


@register_selector("gradient-norm")
def gradient_norm(ctx: SelectionContext) -> Selection:
    """The paper's selector: sum of per-batch gradient L2 norms, top fraction of layers."""
    cfg = ctx.config
    result = ctx.probe()
    return Selection("gradient-norm", result.scores, top_fraction(result.scores, cfg.fraction),
                     cfg.fraction, result.seconds, probe=result)


def select_layers(ctx: SelectionContext) -> Selection:
    """Run the configured selector; an explicit ``layers`` list in the config overrides its choice."""
    cfg = ctx.config
    start = time.perf_counter()
    selection = SELECTORS.get(cfg.selector)(ctx)
    selection.seconds = time.perf_counter() - start
    if cfg.layers is not None:
        n = selection.num_layers
        if bad := [i for i in cfg.layers if i >= n]:
            raise AletheiaError(f"layers {bad} do not exist: the model has {n} layers (0..{n - 1})")
        selection.details.update(probe_selected_layers=selection.layers, override="layers given explicitly")
        selection.layers = sorted(set(cfg.layers))
    return selection


def write_probe_json(path: str | Path, selection: Selection, **extra) -> None:
    write_json(path, {**selection.to_dict(), **extra})


def read_probe_json(path: str | Path) -> Selection:
    """The selection a run recorded in its ``probe.json`` (a resumed run trains the same layers)."""
    d = json.loads(Path(path).read_text())
    return Selection(d["selector"], d["scores"], d["selected_layers"], d["fraction"], d.get("seconds", 0.0))
