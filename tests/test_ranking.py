"""Ranking: mab.service.rank and its compiled tie-breaking, mab._ranking.

Equal scores must come in a uniformly random order that the seed
reproduces. The uniformity checks are chi-square tests over many seeds at
the suite's significance level; test_uniformity_check_rejects_position_bias
shows that they catch the position bias this replaced.
"""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from mab import _ranking
from mab.service import rank
from tests.beta_checks import SIGNIFICANCE

SEEDS = range(24_000)


def tie_outcomes(scores, tied, top_k, ranker=None, seeds=SEEDS):
    """How often each ordered tuple of `tied` indices fills the ranking's
    places that hold tied items, over `seeds`."""
    ranker = ranker or (lambda s, seed: rank(s, top_k, seed))
    tied = set(tied)
    counts = {}
    for seed in seeds:
        key = tuple(i for i in ranker(scores, seed).tolist() if i in tied)
        counts[key] = counts.get(key, 0) + 1
    return counts


def uniformity_pvalue(counts, n_outcomes):
    """Chi-square p-value of `counts` against `n_outcomes` equally likely
    outcomes (outcomes never seen count as 0)."""
    observed = list(counts.values()) + [0] * (n_outcomes - len(counts))
    assert len(observed) == n_outcomes, f"{len(counts)} outcomes seen, {n_outcomes} possible"
    return stats.chisquare(observed).pvalue


# -- order --------------------------------------------------------------------


def test_rank_orders_best_first_and_cuts():
    scores = np.array([0.2, 0.9, 0.5, 0.9, 0.1])
    full = rank(scores, None, 7).tolist()
    assert sorted(full[:2]) == [1, 3] and full[2:] == [2, 0, 4]
    assert rank(scores, 10, 7).tolist() == full
    assert rank(scores, None, 7).tolist() == full, "the same order for the same seed"
    assert sorted(rank(scores, 2, 7).tolist()) == [1, 3]
    assert rank(scores, 3, 7).tolist()[2] == 2
    assert rank(scores, None).dtype == np.int64


def test_rank_matches_a_full_sort_on_random_scores():
    # Without ties the seed plays no part.
    rng = np.random.default_rng(0)
    for n in (1, 2, 400, 10_000):
        scores = rng.random(n)
        for k in sorted({1, 5, n - 1, n, n + 1} - {0}):
            assert rank(scores, k, 3).tolist() == np.argsort(-scores)[:k].tolist()


def test_seed_reproduces_and_different_seeds_differ():
    scores = np.repeat([1.0, 0.5, 0.0], 50)
    assert rank(scores, None, 11).tolist() == rank(scores.copy(), None, 11).tolist()
    assert rank(scores, 60, 11).tolist() == rank(scores, 60, 11).tolist()
    assert rank(scores, None, 11).tolist() != rank(scores, None, 12).tolist()


def test_no_seed_draws_fresh_entropy():
    scores = np.ones(64)
    assert rank(scores, None).tolist() != rank(scores, None).tolist()


def test_nan_ranks_last_and_is_tied_to_nothing():
    # The sampler never returns NaN (tests/test_sampling.py); rank must still
    # not fail on one, and numpy's sorts put it last.
    scores = np.array([0.5, np.nan, 0.7, np.nan])
    order = rank(scores, None, 1).tolist()
    assert order[:2] == [2, 0] and sorted(order[2:]) == [1, 3]
    assert rank(scores, 1, 1).tolist() == [2]
    assert rank(scores, 3, 1).tolist()[:2] == [2, 0]


# -- fairness -------------------------------------------------------------------


def test_uniformity_check_rejects_position_bias():
    # The old rank: numpy's sort leaves equal keys in request order.
    def biased(scores, seed):
        return np.argsort(-scores, kind="stable")

    counts = tie_outcomes(np.array([0.3, 1.0, 1.0, 1.0]), [1, 2, 3], None, biased, seeds=range(2000))
    assert uniformity_pvalue(counts, 6) < SIGNIFICANCE
    # A subtle bias: the first tied item first 6% more often than fair
    # (0.353 instead of 1/3).
    rng = np.random.default_rng(5)

    def slightly_biased(scores, seed):
        order = [1, 2, 3]
        rng.shuffle(order)
        if rng.random() < 0.03:
            order.remove(1)
            order.insert(0, 1)
        return np.array(order)

    counts = tie_outcomes(None, [1, 2, 3], None, slightly_biased)
    assert uniformity_pvalue(counts, 6) < SIGNIFICANCE


@pytest.mark.parametrize(
    ("scores", "tied"),
    [
        pytest.param([1.0, 1.0, 1.0, 0.4, 0.2], [0, 1, 2], id="tie-on-top"),
        pytest.param([0.9, 0.5, 0.1, 0.5, 0.7, 0.5], [1, 3, 5], id="tie-in-the-middle"),
        pytest.param([0.6, 0.0, 0.3, 0.0, 0.0], [1, 3, 4], id="tie-at-the-bottom"),
        pytest.param([0.0, -0.0, 0.0, 0.2], [0, 1, 2], id="signed-zeros"),
    ],
)
def test_full_ranking_orders_ties_uniformly(scores, tied):
    counts = tie_outcomes(np.array(scores), tied, None)
    assert set(counts) == set(itertools.permutations(tied))
    assert uniformity_pvalue(counts, math.factorial(len(tied))) > SIGNIFICANCE


def test_two_runs_are_shuffled_independently():
    scores = np.array([0.9, 0.9, 0.1, 0.1, 0.5])
    counts = tie_outcomes(scores, [0, 1, 2, 3], None)
    assert uniformity_pvalue(counts, 4) > SIGNIFICANCE


# Two items above a tie of five, one below.
CUT_SCORES = np.array([0.5, 0.8, 0.5, 0.1, 0.5, 0.9, 0.5, 0.5])
CUT_TIED = [0, 2, 4, 6, 7]


@pytest.mark.parametrize("top_k", [3, 4, 5, 6, 7])
def test_which_tied_items_make_the_cut_is_uniform(top_k):
    # top_k - 2 places for five tied items: every ordered choice is equally likely.
    places = top_k - 2
    counts = tie_outcomes(CUT_SCORES, CUT_TIED, top_k)
    assert all(len(key) == places for key in counts)
    assert uniformity_pvalue(counts, math.perm(len(CUT_TIED), places)) > SIGNIFICANCE


@pytest.mark.parametrize("top_k", [1, 2])
def test_cut_in_a_tie_at_the_top(top_k):
    scores = np.array([0.2, 1.0, 1.0, 0.7, 1.0, 1.0])
    counts = tie_outcomes(scores, [1, 2, 4, 5], top_k)
    assert uniformity_pvalue(counts, math.perm(4, top_k)) > SIGNIFICANCE


def test_first_place_among_many_ties_is_uniform():
    # 40 items, all tied: the first place, for each position.
    scores = np.ones(40)
    first = np.bincount([rank(scores, 1, seed)[0] for seed in SEEDS], minlength=40)
    assert stats.chisquare(first).pvalue > SIGNIFICANCE


# -- properties -----------------------------------------------------------------

tie_heavy_scores = st.lists(st.sampled_from([0.0, -0.0, 0.25, 0.5, 1.0]), min_size=1, max_size=300).map(np.array)


@settings(max_examples=300, deadline=None)
@given(tie_heavy_scores, st.integers(min_value=1, max_value=320), st.integers(min_value=0, max_value=2**64 - 1))
def test_top_k_is_the_prefix_of_the_full_ranking(scores, top_k, seed):
    full = rank(scores, None, seed)
    best = rank(scores, top_k, seed)
    assert sorted(full.tolist()) == list(range(len(scores)))
    assert np.all(np.diff(scores[full]) <= 0)
    np.testing.assert_array_equal(best, full[:top_k])
    np.testing.assert_array_equal(rank(scores, top_k, seed), best)


@settings(max_examples=200, deadline=None)
@given(tie_heavy_scores, st.integers(min_value=0, max_value=2**64 - 1), st.randoms(use_true_random=False))
def test_result_does_not_depend_on_how_the_sort_arranged_ties(scores, seed, random):
    # numpy's sorts may leave equal keys in any order (it differs across
    # versions and CPUs); break_ties must give the same answer for each.
    keys = -scores
    order = np.argsort(keys)
    shuffled = order.copy()
    runs = np.split(shuffled, np.flatnonzero(np.diff(keys[order]) != 0) + 1)
    for run in runs:
        random.shuffle(run)
    rearranged = np.concatenate(runs)
    _ranking.break_ties(keys, order, seed)
    _ranking.break_ties(keys, rearranged, seed)
    np.testing.assert_array_equal(order, rearranged)


# -- break_ties ------------------------------------------------------------------


def test_break_ties_counts_runs_and_leaves_unique_keys_alone():
    keys = np.array([0.0, 1.0, 1.0, 2.0, 3.0, 3.0, 3.0, 4.0])
    order = np.arange(8)
    assert _ranking.break_ties(keys, order, 1) == 2
    assert order[[0, 3, 7]].tolist() == [0, 3, 7]
    assert sorted(order[1:3]) == [1, 2] and sorted(order[4:7]) == [4, 5, 6]
    distinct = np.arange(5)
    assert _ranking.break_ties(np.arange(5.0), distinct, 1) == 0
    assert distinct.tolist() == [0, 1, 2, 3, 4]
    assert _ranking.break_ties(np.array([1.0]), np.zeros(0, np.int64), 1) == 0


def test_break_ties_rejects_bad_arrays():
    keys = np.zeros(3)
    with pytest.raises(IndexError, match=r"order\[1\] = 3"):
        _ranking.break_ties(keys, np.array([0, 3, 1]), 1)
    with pytest.raises(IndexError, match=r"order\[0\] = -1"):
        _ranking.break_ties(keys, np.array([-1, 0, 1]), 1)
    with pytest.raises(ValueError, match="float64"):
        _ranking.break_ties(keys.astype(np.float32), np.arange(3), 1)
    with pytest.raises(ValueError, match="int64"):
        _ranking.break_ties(keys, np.arange(3, dtype=np.int32), 1)
    readonly = np.arange(3)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        _ranking.break_ties(keys, readonly, 1)
    with pytest.raises(OverflowError):
        _ranking.break_ties(keys, np.arange(3), -1)
