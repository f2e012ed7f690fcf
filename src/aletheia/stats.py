"""The campaign statistics of the paper (§4.5): paired tests over (model, seed) pairs, with scipy.

Conventions. Sample standard deviations (n − 1). Confidence intervals use the t distribution with
n − 1 degrees of freedom: mean ± t(1 − α/2, n − 1) · SD / √n. The paired t-test is scipy's
``ttest_rel`` (two-sided) on a − b; the paired Cohen's d is mean(a − b) / SD(a − b) (often written
d_z). The win rate is the share of pairs where a − b > 0. With fewer than two pairs every quantity
that needs a spread is NaN, never a made-up number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as _st

NAN = float("nan")


@dataclass
class Summary:
    """Mean ± SD of one quantity over seeds, with its t-distribution confidence interval."""

    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PairedTest:
    """A paired comparison of a and b (differences a − b)."""

    n: int
    mean_diff: float
    sd_diff: float
    t: float
    df: int
    p: float
    cohen_d: float
    ci_low: float
    ci_high: float
    win_rate: float
    """Share of pairs with a − b > 0."""

    def to_dict(self) -> dict:
        return asdict(self)


def _clean(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)


def mean_sd(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and sample SD; missing and non-finite values are left out."""
    x = _clean(values)
    if len(x) == 0:
        return NAN, NAN
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else NAN


def t_interval(values: Sequence[float | None], confidence: float = 0.95) -> tuple[float, float]:
    """Confidence interval of the mean from the t distribution (NaN with fewer than 2 values)."""
    x = _clean(values)
    if len(x) < 2:
        return NAN, NAN
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    half = float(_st.t.ppf(0.5 + confidence / 2, len(x) - 1)) * sd / math.sqrt(len(x))
    return mean - half, mean + half


def summarize(values: Sequence[float | None], confidence: float = 0.95) -> Summary:
    mean, sd = mean_sd(values)
    lo, hi = t_interval(values, confidence)
    return Summary(len(_clean(values)), mean, sd, lo, hi)


def win_rate(diffs: Sequence[float | None]) -> float:
    """Share of differences that are > 0."""
    x = _clean(diffs)
    return float((x > 0).mean()) if len(x) else NAN


def cohens_d_paired(a: Sequence[float], b: Sequence[float]) -> float:
    """mean(a − b) / SD(a − b); NaN when the differences have no spread or fewer than 2 pairs."""
    d = _pairs(a, b)
    if len(d) < 2:
        return NAN
    sd = float(d.std(ddof=1))
    return float(d.mean()) / sd if sd > 0 else NAN


def _pairs(a: Sequence[float | None], b: Sequence[float | None]) -> np.ndarray:
    if len(a) != len(b):
        raise ValueError(f"paired samples must have the same length ({len(a)} != {len(b)})")
    keep = [(x, y) for x, y in zip(a, b)
            if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    return np.asarray([x - y for x, y in keep], dtype=float)


def paired_test(a: Sequence[float | None], b: Sequence[float | None], confidence: float = 0.95) -> PairedTest:
    """Two-sided paired t-test of a against b, with Cohen's d, CI of the mean difference, win rate.

    Pairs with a missing or non-finite side are dropped (a failed run has no time to compare).
    """
    d = _pairs(a, b)
    n = len(d)
    if n == 0:
        return PairedTest(0, NAN, NAN, NAN, 0, NAN, NAN, NAN, NAN, NAN)
    mean = float(d.mean())
    if n < 2:
        return PairedTest(1, mean, NAN, NAN, 0, NAN, NAN, NAN, NAN, win_rate(d))
    sd = float(d.std(ddof=1))
    lo, hi = t_interval(d, confidence)
    if sd == 0:  # identical differences: the t statistic is infinite (or undefined at zero)
        t, p = (math.copysign(math.inf, mean), 0.0) if mean != 0 else (NAN, 1.0)
    else:
        res = _st.ttest_rel(np.asarray([x for x in d]), np.zeros(n))
        t, p = float(res.statistic), float(res.pvalue)
    return PairedTest(n, mean, sd, t, n - 1, p, cohens_d_paired(d, [0.0] * n), lo, hi, win_rate(d))
