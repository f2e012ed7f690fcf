"""More layer selectors for the registry in ``selection.py``, for comparison with the paper's.

The package's ``__init__`` imports this module, which registers them.

- ``gradient-norm-per-param``: the probe's gradient norm divided by √(block parameters), i.e. the
  root-mean-square gradient per parameter, so big blocks do not win by size alone.
- ``random``: ``k`` layers drawn with the run's seed (a LISA-style baseline). Data-free.
- ``last-n`` / ``first-n``: the top / bottom ``k`` blocks, as LLaMA-Factory's freeze tuning does.
- ``spectrum``: a data-free weight score in the spirit of Spectrum (Hartford et al., 2024): the
  signal-to-noise ratio of each block's weight matrices, with the noise level and the bulk edge of
  the singular values taken from the Marchenko-Pastur law (see ``matrix_snr``).
- ``cost-aware``: the probe's scores plus a calibrated cost model of a training step (``cost.py``);
  keeps the most gradient signal per unit of step time (see ``choose_cost_aware``).

``k`` is always ``⌊fraction·L + ½⌋`` (at least one), as for the default selector
(``scores.k_for_fraction``); ranks and shares come from ``scores.py`` too.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch
from torch import nn

from .architectures import get_blocks
from .config import AdapterConfig
from .errors import AletheiaError
from .scores import ranking, shares, top_fraction
from .selection import Selection, SelectionContext, register_selector


@register_selector("gradient-norm-per-param")
def gradient_norm_per_param(ctx: SelectionContext) -> Selection:
    """Gradient norm / √(parameters of the block): the RMS gradient of a parameter in the block."""
    result = ctx.probe()
    sizes = [sum(p.numel() for p in block.parameters() if p.is_floating_point())
             for block in get_blocks(ctx.model)]
    scores = [s / math.sqrt(n) if n else 0.0 for s, n in zip(result.scores, sizes)]
    return Selection("gradient-norm-per-param", scores, top_fraction(scores, ctx.config.fraction),
                     ctx.config.fraction, result.seconds, probe=result,
                     details={"block_parameters": sizes})


@register_selector("random")
def random_layers(ctx: SelectionContext) -> Selection:
    """``k`` layers drawn uniformly with the run's seed; the scores are the random draws themselves."""
    rng = random.Random(ctx.seed)
    scores = [rng.random() for _ in get_blocks(ctx.model)]
    return Selection("random", scores, top_fraction(scores, ctx.config.fraction), ctx.config.fraction, 0.0,
                     details={"random_seed": ctx.seed})


def _positional(ctx: SelectionContext, name: str, last: bool) -> Selection:
    n = len(get_blocks(ctx.model))
    scores = [float(i + 1) / n if last else float(n - i) / n for i in range(n)]  # depth as the score
    return Selection(name, scores, top_fraction(scores, ctx.config.fraction), ctx.config.fraction, 0.0)


@register_selector("last-n")
def last_n(ctx: SelectionContext) -> Selection:
    """The top ``k`` blocks (freeze tuning's usual choice): the backward pass stays short."""
    return _positional(ctx, "last-n", last=True)


@register_selector("first-n")
def first_n(ctx: SelectionContext) -> Selection:
    """The bottom ``k`` blocks: the slowest possible set of ``k`` layers, for contrast."""
    return _positional(ctx, "first-n", last=False)


# --- spectrum: Marchenko-Pastur signal-to-noise ratio of the weights -------------------------------

def _mp_median(beta: float, grid: int = 4000) -> float:
    """Median of the Marchenko-Pastur law with ratio ``beta`` ≤ 1 and unit variance (numerically)."""
    lo, hi = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2
    xs = torch.linspace(lo, hi, grid + 1, dtype=torch.float64)[1:-1]
    dens = torch.sqrt((hi - xs) * (xs - lo)) / (2 * math.pi * beta * xs)
    cdf = torch.cumsum(dens, 0)
    cdf = cdf / cdf[-1]
    return float(xs[int(torch.searchsorted(cdf, torch.tensor(0.5, dtype=torch.float64)))])


def matrix_snr(weight: torch.Tensor) -> float:
    """Signal-to-noise ratio of a weight matrix from its singular values.

    Model the matrix as signal plus i.i.d. noise of variance σ². For an m×n noise matrix (m ≤ n) the
    eigenvalues σ_i²/n follow the Marchenko-Pastur law with ratio β = m/n, whose bulk ends at
    σ²(1+√β)². σ² is estimated from the median eigenvalue (robust to the few large signal ones);
    singular values above the bulk edge are signal, the rest noise; SNR = Σ signal / Σ noise.
    """
    w = weight.detach().float().reshape(weight.shape[0], -1)  # a no-op for a 2-D weight
    m, n = sorted(w.shape)
    beta = m / n
    sv = torch.linalg.svdvals(w).double()
    eig = sv.pow(2) / n
    sigma2 = float(eig.median()) / _mp_median(beta)
    edge = math.sqrt(sigma2 * n) * (1 + math.sqrt(beta))
    signal, noise = float(sv[sv > edge].sum()), float(sv[sv <= edge].sum())
    return signal / noise if noise > 0 else float("inf")


def spectrum_scores(model: nn.Module) -> tuple[list[float], list[dict[str, float]]]:
    """Per block: the mean SNR of its 2-D weight matrices; also each matrix's SNR."""
    scores, per_matrix = [], []
    for block in get_blocks(model):
        snrs = {name: matrix_snr(p) for name, p in block.named_parameters()
                if p.dim() == 2 and min(p.shape) > 1 and p.is_floating_point()}
        per_matrix.append(snrs)
        finite = [v for v in snrs.values() if math.isfinite(v)]
        scores.append(sum(finite) / len(finite) if finite else 0.0)
    return scores, per_matrix


@register_selector("spectrum")
def spectrum(ctx: SelectionContext) -> Selection:
    """Data-free: the blocks whose weights carry the most signal above the random-matrix bulk."""
    with torch.no_grad():
        scores, per_matrix = spectrum_scores(ctx.model)
    return Selection("spectrum", scores, top_fraction(scores, ctx.config.fraction), ctx.config.fraction, 0.0,
                     details={"matrix_snr": per_matrix})


# --- cost-aware ----------------------------------------------------------------------------------

def candidate_sets(scores: list[float]) -> list[list[int]]:
    """For every lowest layer m and size k: m plus the k−1 best-scoring layers above it.

    Step time depends on the lowest layer and the adapter size, so for a given lowest layer and size
    these are the sets with the most signal; the optimum of every objective below is among them.
    """
    n, order = len(scores), ranking(scores)
    out = []
    for m in range(n):
        above = [i for i in order if i > m]  # still best first, ties to the lower index
        out += [sorted([m] + above[:j]) for j in range(n - m)]
    return out


def choose_cost_aware(
    scores: list[float],
    step_time: Callable[[list[int]], float],
    standard_time: float,
    fraction: float = 0.5,
    time_budget: float | None = None,
    tradeoff: float | None = None,
    fallback: bool = False,
) -> tuple[list[int], dict]:
    """Pick the layers; returns them with the numbers behind the choice.

    - ``time_budget`` b: the most signal among sets predicted at most b × standard LoRA's step time.
    - ``tradeoff`` λ: the set maximising signal_kept − λ · (step time / standard step time).
    - neither: the same number of layers as ``top_fraction`` (k), the most signal per second among
      sets no slower than the top-k set itself, so it is never predicted slower than the paper's rule.
    ``fallback``: a ``time_budget`` below every set's time takes the fastest set (noted in the rule)
    instead of stopping; a campaign uses it, as one budget must serve models with other fixed costs.
    """
    share = shares(scores)
    signal = lambda layers: sum(share[i] for i in layers)
    cands = [(c, signal(c), step_time(c)) for c in candidate_sets(scores)]
    topk = top_fraction(scores, fraction)
    topk_time = step_time(topk)
    if time_budget is not None:
        feasible = [c for c in cands if c[2] <= time_budget * standard_time]
        fastest = min(t for _, _, t in cands) / standard_time
        if not feasible and fallback:
            feasible = [c for c in cands if c[2] <= fastest * standard_time * (1 + 1e-9)]
        if not feasible:
            raise AletheiaError(f"time_budget={time_budget} is below the fastest possible step "
                                f"({fastest:.2f} of standard LoRA's); raise it above {fastest:.2f}")
        best = max(feasible, key=lambda c: (c[1], -c[2]))
        rule = f"most signal within {time_budget:g} x standard step time" + (
            f" (below the fastest possible, {fastest:.2f}: the fastest set)" if fastest > time_budget else "")
    elif tradeoff is not None:
        best = max(cands, key=lambda c: (c[1] - tradeoff * c[2] / standard_time, -c[2]))
        rule = f"max signal_kept - {tradeoff:g} x time/standard"
    else:
        k = len(topk)
        same_k = [c for c in cands if len(c[0]) == k and c[2] <= topk_time * (1 + 1e-9)]
        same_k.append((topk, signal(topk), topk_time))
        best = max(same_k, key=lambda c: (c[1] / c[2], -c[2]))
        rule = f"most signal per second among {k}-layer sets no slower than top-{k}"
    layers, kept, seconds = best
    return layers, {
        "rule": rule,
        "predicted_step_seconds": seconds,
        "predicted_standard_step_seconds": standard_time,
        "predicted_speedup": standard_time / seconds,
        "topk_layers": topk,
        "topk_predicted_step_seconds": topk_time,
        "gradient_signal_kept": kept,
    }


@register_selector("cost-aware")
def cost_aware(ctx: SelectionContext) -> Selection:
    """The probe's scores, a calibrated step-time model, and ``choose_cost_aware``."""
    from .cost import calibrate

    cfg = ctx.config
    adapter = ctx.adapter or AdapterConfig()
    result = ctx.probe()
    model = calibrate(ctx.model, ctx.batches, adapter, rounds=cfg.calibration_rounds, progress=ctx.progress)
    layers, info = choose_cost_aware(  # each candidate set is timed with the ranks it would train with
        result.scores, lambda s: model.predict(s, model.matched(s, adapter)), model.predict_standard(adapter),
        cfg.fraction, cfg.time_budget, cfg.tradeoff, cfg.time_budget_fallback,
    )
    chosen = model.matched(layers, adapter)
    info.update(attention_rank=chosen.attention_rank, mlp_rank=chosen.mlp_rank,
                match_parameters=adapter.match_parameters, time_budget=cfg.time_budget, tradeoff=cfg.tradeoff,
                cost_model_key=model.key,
                cost_model=model.coefficients, cost_model_tokens=model.tokens, hardware=model.hardware)
    return Selection("cost-aware", result.scores, layers, cfg.fraction, result.seconds, probe=result,
                     details=info)
