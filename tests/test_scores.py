"""Per-layer scores: ranking, shares and the top-k rule, and that every caller uses the same."""

import math
import random

import pytest

from aletheia.errors import AletheiaError
from aletheia.probe import ProbeResult
from aletheia.scores import k_for_fraction, ranking, shares, top_fraction
from aletheia.selection import Selection
from aletheia.selectors import candidate_sets, choose_cost_aware

RANKINGS = [
    # scores                   ranking: highest first, ties to the lower index
    ([3.0, 1.0, 2.0], [0, 2, 1]),
    ([1.0, 1.0, 1.0], [0, 1, 2]),
    ([0.0, 2.0, 2.0, 1.0], [1, 2, 3, 0]),
    ([5.0, 5.0, 9.0, 5.0], [2, 0, 1, 3]),
    ([0.0, 0.0], [0, 1]),
    ([7.0], [0]),
    ([], []),
]


@pytest.mark.parametrize("scores, expected", RANKINGS)
def test_ranking_puts_the_highest_first_and_ties_go_to_the_lower_index(scores, expected):
    assert ranking(scores) == expected


@pytest.mark.parametrize("scores, expected", RANKINGS)
def test_probe_and_selection_rank_with_the_same_rule(scores, expected):
    probe = ProbeResult(scores, [scores], [0.0], "single-pass", 1, 0.0, 1)
    selection = Selection("gradient-norm", scores, [], 0.5, 0.0)
    assert probe.ranking == selection.ranking == expected
    assert probe.to_dict()["ranking"] == selection.to_dict()["ranking"] == expected


SHARES = [
    # scores                   shares
    ([1.0, 3.0], [0.25, 0.75]),
    ([2.0, 2.0, 4.0], [0.25, 0.25, 0.5]),
    ([0.0, 5.0], [0.0, 1.0]),
    ([0.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]),  # no signal: no layer stands out
    ([], []),
]


@pytest.mark.parametrize("scores, expected", SHARES)
def test_shares_are_each_layers_part_of_the_total(scores, expected):
    assert shares(scores) == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(5))
def test_shares_sum_to_one(seed):
    rng = random.Random(seed)
    scores = [rng.random() ** 3 for _ in range(rng.randint(1, 40))]
    assert math.fsum(shares(scores)) == pytest.approx(1.0)


def test_all_zero_scores_give_every_layer_an_equal_share_everywhere():
    scores = [0.0] * 8
    probe = ProbeResult(scores, [scores], [0.0], "single-pass", 1, 0.0, 1)
    selection = Selection("spectrum", scores, top_fraction(scores, 0.5), 0.5, 0.0)
    assert probe.normalized == selection.normalized == [0.125] * 8
    assert selection.layers == [0, 1, 2, 3]  # every score ties: the lowest indices
    assert selection.signal_kept == pytest.approx(0.5)
    # the cost-aware choice counts signal with the same shares
    layers, info = choose_cost_aware(scores, lambda s: 1.0 + 0.1 * len(s), 1.8, fraction=0.5)
    assert info["gradient_signal_kept"] == pytest.approx(len(layers) / 8)


def _old_top_fraction(scores, fraction):
    """The formula as it was written in selection.py, selectors.py (``_k``) before scores.py."""
    k = max(1, min(len(scores), math.floor(fraction * len(scores) + 0.5)))
    return sorted(sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k])


FRACTIONS = [0.01, 0.1, 0.125, 0.2, 0.25, 1 / 3, 0.375, 0.5, 0.6, 2 / 3, 0.75, 0.9, 0.99, 1.0]


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_top_fraction_matches_the_old_formula_for_every_layer_count(fraction):
    rng = random.Random(0)
    for num_layers in range(1, 81):
        k = max(1, min(num_layers, math.floor(fraction * num_layers + 0.5)))
        assert k_for_fraction(num_layers, fraction) == k
        scores = [float(rng.randint(0, 5)) for _ in range(num_layers)]  # many ties
        assert top_fraction(scores, fraction) == _old_top_fraction(scores, fraction)
        assert len(top_fraction(scores, fraction)) == k


@pytest.mark.parametrize("num_layers, fraction, k", [
    (30, 0.5, 15),   # SmolLM2-135M, the paper's default
    (24, 0.25, 6),
    (22, 0.5, 11),
    (7, 0.5, 4),     # ⌊3.5 + ½⌋ = 4: halves round up
    (5, 0.1, 1),     # ⌊0.5 + ½⌋ = 1
    (4, 0.01, 1),    # at least one layer
    (6, 1.0, 6),
])
def test_k_for_fraction_examples(num_layers, fraction, k):
    assert k_for_fraction(num_layers, fraction) == k


def test_top_fraction_keeps_the_highest_scores_in_ascending_order():
    assert top_fraction([0.1, 0.9, 0.3, 0.7, 0.5, 0.2], 0.5) == [1, 3, 4]
    assert top_fraction([1.0, 2.0, 2.0, 2.0], 0.5) == [1, 2]  # the tie goes to the lower index


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_a_fraction_outside_zero_to_one_is_refused_with_the_fix(fraction):
    with pytest.raises(AletheiaError, match=r"fraction=.* must be in \(0, 1\]"):
        top_fraction([1.0, 2.0], fraction)


def test_candidate_sets_take_the_layers_above_in_ranking_order():
    scores = [1.0, 2.0, 2.0, 0.5, 2.0]
    # above layer 0 the ranking is 1, 2, 4 (ties to the lower index), then 3
    assert [c for c in candidate_sets(scores) if c[0] == 0] == [
        [0], [0, 1], [0, 1, 2], [0, 1, 2, 4], [0, 1, 2, 3, 4]]
