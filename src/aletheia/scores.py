"""Per-layer scores: their ranking, their shares and the top-k rule, defined once.

For scores s_0 .. s_{L-1} (one per decoder block; higher means more relevant):

- ``ranking``: the layer indices by descending score; ties go to the lower index, so the order is
  deterministic and equal scores favour the earlier block.
- ``shares``: s_l / Σ s, each layer's share of the total (sums to 1). When the total is not positive
  (every score zero) no layer stands out and each gets 1/L, so the shares still sum to 1.
- ``k_for_fraction``: ⌊fraction·L + ½⌋ layers, at least one and at most L (fraction in (0, 1]).
- ``top_fraction``: the first ``k_for_fraction`` layers of the ranking, ascending (paper's rule).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .errors import AletheiaError


def ranking(scores: Sequence[float]) -> list[int]:
    """Layer indices by descending score; ties go to the lower index."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def shares(scores: Sequence[float]) -> list[float]:
    """Each layer's share of the total score (sums to 1); 1/L each if the total is not positive."""
    total = sum(scores)
    return [s / total for s in scores] if total > 0 else [1.0 / len(scores) for _ in scores]


def k_for_fraction(num_layers: int, fraction: float) -> int:
    """How many layers the top ``fraction`` keeps: ⌊fraction·L + ½⌋, at least one, at most L."""
    if not 0.0 < fraction <= 1.0:
        raise AletheiaError(f"fraction={fraction} must be in (0, 1], e.g. 0.5 for half the layers")
    return max(1, min(num_layers, math.floor(fraction * num_layers + 0.5)))


def top_fraction(scores: Sequence[float], fraction: float) -> list[int]:
    """The ⌊fraction·L + ½⌋ highest-scoring layers (at least one), ties to the lower index, ascending."""
    return sorted(ranking(scores)[: k_for_fraction(len(scores), fraction)])
