"""The factorial ablation's statistics: two factors at two levels each, replicated over seeds.

Model. Each run's held-out loss y is regressed on the two factors coded −1 (first level) / +1
(second level) and their product:

    y = b0 + bA·a + bB·b + bAB·a·b + ε,   ε ~ N(0, σ²) independent

fitted by ordinary least squares (numpy). The *effect* of a factor is the change in mean loss when it
moves from its first to its second level, averaged over the other factor: effect = 2·b (in a balanced
design exactly mean(second level) − mean(first level)). The interaction effect 2·bAB is half the
difference between A's effect at B's second level and at B's first level. Each coefficient is tested
with a two-sided t-test on n − 4 residual degrees of freedom (scipy's t distribution); F = t² is the
two-way ANOVA F statistic with one numerator degree of freedom (Type III sums of squares, which in a
balanced design equal the classical two-way ANOVA with interaction). Needs every cell filled and at
least 5 runs; the paper's design has 2 × 2 × 3 = 12 runs, 8 residual degrees of freedom.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as _st

from ..errors import AletheiaError


@dataclass
class Term:
    """One row of the ablation table."""

    term: str
    effect: float
    """Change in mean loss from the first to the second level (interaction: see the module docstring)."""
    coef: float
    se: float
    t: float
    F: float
    df_resid: int
    p: float
    sum_sq: float


def factorial_2x2(y: Sequence[float], a: Sequence[int], b: Sequence[int],
                  names: tuple[str, str] = ("A", "B")) -> dict:
    """Effects, t/F statistics and p-values of a replicated 2 × 2 design.

    ``a`` and ``b`` are the level indices (0 or 1) of each run. Returns the terms (A, B, A×B), the
    cell means and counts, the residual mean square and the degrees of freedom.
    """
    y_ = np.asarray(y, dtype=float)
    a_ = np.asarray(a, dtype=int)
    b_ = np.asarray(b, dtype=int)
    if not (len(y_) == len(a_) == len(b_)):
        raise AletheiaError("factorial_2x2: y, a and b must have the same length")
    if not np.all(np.isfinite(y_)):
        raise AletheiaError("factorial_2x2: every held-out loss must be a finite number")
    if set(a_.tolist()) - {0, 1} or set(b_.tolist()) - {0, 1}:
        raise AletheiaError("factorial_2x2: level indices must be 0 or 1")
    counts = {(i, j): int(np.sum((a_ == i) & (b_ == j))) for i in (0, 1) for j in (0, 1)}
    empty = [c for c, n in counts.items() if n == 0]
    n = len(y_)
    if empty or n < 5:
        raise AletheiaError(f"factorial_2x2: needs every cell filled and at least 5 runs (got {n} runs, "
                            f"empty cells {empty}); run the failed ablation runs again with --retry-failed")
    xa, xb = 2.0 * a_ - 1.0, 2.0 * b_ - 1.0
    X = np.column_stack([np.ones(n), xa, xb, xa * xb])
    coef, *_ = np.linalg.lstsq(X, y_, rcond=None)
    resid = y_ - X @ coef
    df = n - 4
    rss = float(resid @ resid)
    mse = rss / df
    cov = mse * np.linalg.inv(X.T @ X)
    terms = []
    for k, label in ((1, names[0]), (2, names[1]), (3, f"{names[0]} × {names[1]}")):
        se = float(math.sqrt(cov[k, k]))
        c = float(coef[k])
        if se > 0:
            t = c / se
            p = float(2 * _st.t.sf(abs(t), df))
        else:  # a perfect fit: no noise to test against
            t = math.copysign(math.inf, c) if c else math.nan
            p = 0.0 if c else 1.0
        F = t * t
        terms.append(asdict(Term(label, 2 * c, c, se, t, F, df, p, F * mse if math.isfinite(F) else math.nan)))
    means = {(i, j): float(y_[(a_ == i) & (b_ == j)].mean()) for i in (0, 1) for j in (0, 1)}
    return {"terms": terms, "cell_means": [[means[(i, j)] for j in (0, 1)] for i in (0, 1)],
            "cell_counts": [[counts[(i, j)] for j in (0, 1)] for i in (0, 1)], "mse": mse, "rss": rss,
            "df_resid": df, "n": n, "intercept": float(coef[0]), "factors": list(names)}
