"""Campaign statistics against values worked out by hand (t tables, closed forms)."""

import math

import pytest

from aletheia.stats import (
    cohens_d_paired,
    mean_sd,
    paired_test,
    summarize,
    t_interval,
    win_rate,
)

# Standard times 10, 12, 14 s and Aletheia 8, 9, 13 s: differences 2, 3, 1.
STD, ALE = [10.0, 12.0, 14.0], [8.0, 9.0, 13.0]


def test_mean_and_sample_sd():
    assert mean_sd([2.0, 3.0, 1.0]) == pytest.approx((2.0, 1.0))  # SD with n-1: sqrt(2/2)
    assert mean_sd([1.0, None, float("nan"), 3.0]) == pytest.approx((2.0, math.sqrt(2)))


def test_t_interval_uses_t_distribution():
    # t(0.975, df=2) = 4.302653 (t table); half width = 4.302653 * 1 / sqrt(3) = 2.484138
    lo, hi = t_interval([2.0, 3.0, 1.0])
    assert (lo, hi) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=1e-5)
    s = summarize([2.0, 3.0, 1.0])
    assert (s.n, s.mean, s.sd) == (3, pytest.approx(2.0), pytest.approx(1.0))


def test_paired_t_test_by_hand():
    # t = mean/(sd/sqrt(n)) = 2/(1/sqrt(3)) = sqrt(12) = 3.464102; df = 2.
    # Student t with 2 df has CDF F(t) = 1/2 + t / (2 sqrt(t^2 + 2)), so
    # p = 2 (1 - F) = 1 - t / sqrt(t^2 + 2) = 1 - sqrt(12/14) = 0.074180.
    r = paired_test(STD, ALE)
    assert r.n == 3 and r.df == 2
    assert r.mean_diff == pytest.approx(2.0)
    assert r.t == pytest.approx(math.sqrt(12))
    assert r.p == pytest.approx(1 - math.sqrt(12 / 14), abs=1e-6)
    assert r.cohen_d == pytest.approx(2.0)  # mean diff / SD diff = 2 / 1
    assert (r.ci_low, r.ci_high) == pytest.approx((-0.484138, 4.484138), abs=1e-5)
    assert r.win_rate == 1.0


def test_win_rate_and_failed_pairs_dropped():
    assert win_rate([1.0, -0.5, 0.0, 2.0]) == 0.5  # a tie is not a win
    r = paired_test([10.0, None, 12.0], [9.0, 8.0, 13.0])  # the failed run's pair is left out
    assert r.n == 2 and r.mean_diff == pytest.approx(0.0) and r.win_rate == 0.5


def test_degenerate_inputs_give_nan_not_numbers():
    one = paired_test([3.0], [1.0])
    assert one.n == 1 and one.mean_diff == 2.0 and math.isnan(one.p) and math.isnan(one.ci_low)
    same = paired_test([3.0, 4.0], [1.0, 2.0])  # every difference is 2: no spread
    assert same.p == 0.0 and math.isinf(same.t) and math.isnan(same.cohen_d)
    assert math.isnan(cohens_d_paired([1.0], [0.0]))
    with pytest.raises(ValueError):
        paired_test([1.0, 2.0], [1.0])
