"""The Monte Carlo position propensities (mab.evaluation._propensity and .propensity).

Statistical checks against exact propensities (numerical integration) and
against brute-force rankings drawn with numpy; each tolerance is Z standard
errors of the quantity checked, with fixed seeds.
"""

import numpy as np
import pytest
from scipy import integrate, stats

from mab.evaluation._propensity import position_propensities
from mab.evaluation.propensity import DrawSettings, weights
from mab.sampling import sample_beta
from tests.beta_checks import Z

A3 = np.array([3.0, 5.0, 2.0])
B3 = np.array([7.0, 6.0, 9.0])


def exact_position(a, b, i, k):
    """P(item i is ranked at position k (0-based)) among 3 independent Betas."""
    others = [j for j in range(len(a)) if j != i]

    def density(x):
        above = [1.0 - stats.beta(a[j], b[j]).cdf(x) for j in others]
        below = [stats.beta(a[j], b[j]).cdf(x) for j in others]
        if k == 0:
            count = below[0] * below[1]
        elif k == 1:
            count = above[0] * below[1] + below[0] * above[1]
        else:
            count = above[0] * above[1]
        return stats.beta(a[i], b[i]).pdf(x) * count

    return integrate.quad(density, 0.0, 1.0, epsabs=1e-12)[0]


def copies(a, b, n, ranked):
    """n copies of one decision: the kernel's flat arrays."""
    m = len(a)
    offsets = np.arange(n + 1, dtype=np.int64) * m
    return offsets, np.tile(a, n), np.tile(b, n), np.tile(np.asarray(ranked, np.int32), (n, 1))


def run(a0, b0, a1, b1, ranked, n, *, hits=4, min_draws=1, max_draws=100_000, seed_base=0, **kw):
    offsets, A0, B0, R = copies(a0, b0, n, ranked)
    _, A1, B1, _ = copies(a1, b1, n, ranked)
    seeds = np.arange(seed_base, seed_base + n, dtype=np.uint64)
    return position_propensities(offsets, A0, B0, A1, B1, R, seeds, np.zeros(n, bool), hits=hits,
                                 min_draws=min_draws, max_draws=max_draws, **kw)


@pytest.mark.parametrize("hits", [1, 4])
def test_inverse_propensity_is_unbiased(hits):
    # The logged ranking (item 2, item 0, item 1): item 2 first has p = 0.045,
    # a rare ranking. N_k / hits must average 1 / p_k at every position.
    ranked = [2, 0, 1]
    n = 20_000
    out = run(A3, B3, A3, B3, ranked, n, hits=hits)
    for k, item in enumerate(ranked):
        p = exact_position(A3, B3, item, k)
        inv = out["inv_p0"][:, k]
        assert np.all(np.isfinite(inv))
        se = inv.std(ddof=1) / np.sqrt(n)
        assert abs(inv.mean() - 1.0 / p) < Z * se, (k, inv.mean(), 1.0 / p, se)
        # The relative spread is what the hits promise: sqrt((1 - p) / hits).
        assert inv.std() / inv.mean() == pytest.approx(np.sqrt((1 - p) / hits), rel=0.1)


def test_candidate_propensity_and_weight_are_unbiased():
    ranked = [1, 0, 2]
    a1, b1 = np.array([6.0, 2.0, 4.0]), np.array([5.0, 8.0, 7.0])
    n = 20_000
    out = run(A3, B3, a1, b1, ranked, n, hits=2, min_draws=8)
    for k, item in enumerate(ranked):
        p0 = exact_position(A3, B3, item, k)
        p1 = exact_position(a1, b1, item, k)
        estimate = out["p1"][:, k]
        assert abs(estimate.mean() - p1) < Z * estimate.std(ddof=1) / np.sqrt(n)
        w = out["p1"][:, k] * out["inv_p0"][:, k]
        se = w.std(ddof=1) / np.sqrt(n)
        assert abs(w.mean() - p1 / p0) < Z * se, (k, w.mean(), p1 / p0, se)


def test_plug_in_propensity_matches_exact():
    ranked = [1, 0, 2]
    n = 5_000
    out = run(A3, B3, A3, B3, ranked, n, hits=1, min_draws=200, max_draws=200)
    draws = out["draws"].sum()
    for k, item in enumerate(ranked):
        p = exact_position(A3, B3, item, k)
        estimate = (out["p0"][:, k] * out["draws"]).sum() / draws
        assert abs(estimate - p) < Z * np.sqrt(p * (1 - p) / draws)


def brute_force_positions(a, b, K, draws, seed):
    """P(item i at position k) for every item and k < K, by ranking full draws with numpy."""
    m = len(a)
    scores = sample_beta(np.tile(a, draws), np.tile(b, draws), seed=seed).reshape(draws, m)
    top = np.argsort(-scores, axis=1)[:, :K]
    table = np.zeros((m, K))
    for k in range(K):
        table[:, k] = np.bincount(top[:, k], minlength=m) / draws
    return table


def test_pruning_keeps_the_propensities_of_a_long_list():
    # 300 candidates: 5 contenders, 5 uncertain new items, 290 items with
    # tight posteriors far below; only the first 10 can reach the top 3.
    rng = np.random.default_rng(3)
    a = np.concatenate([[400, 390, 410, 380, 395], np.ones(5), 50 + rng.integers(0, 20, 290)]).astype(float)
    b = np.concatenate([[9600, 9610, 9590, 9620, 9605], np.full(5, 30.0), np.full(290, 9950.0)])
    K = 3
    table = brute_force_positions(a, b, K, 200_000, seed=11)
    ranked = []
    for k in range(K):      # the likeliest item at each position, distinct
        order = np.argsort(-table[:, k])
        ranked.append(int(next(i for i in order if i not in ranked)))
    n = 3_000
    out = run(a, b, a, b, ranked, n, hits=1, min_draws=64, max_draws=64)
    assert out["competing"][0, 0] <= 10          # the 290 hopeless items never drawn
    assert out["sampled"][:, 0].mean() <= 10
    draws = out["draws"].sum()
    for k in range(K):
        p = table[ranked[k], k]
        estimate = (out["p0"][:, k] * out["draws"]).sum() / draws
        se = np.sqrt(p * (1 - p) / draws + p * (1 - p) / 200_000)
        assert abs(estimate - p) < Z * se, (k, estimate, p)


def test_results_do_not_depend_on_threads_or_batching():
    rng = np.random.default_rng(5)
    n, m, K = 400, 30, 4
    a = 1 + rng.integers(0, 50, n * m).astype(float)
    b = 1 + rng.integers(100, 400, n * m).astype(float)
    offsets = np.arange(n + 1, dtype=np.int64) * m
    ranked = np.tile(np.arange(K, dtype=np.int32), (n, 1))
    seeds = rng.integers(0, 2**63, n).astype(np.uint64)
    same = np.zeros(n, bool)
    args = dict(hits=2, min_draws=8, max_draws=500)
    one = position_propensities(offsets, a, b, a * 1.1, b, ranked, seeds, same, n_threads=1, **args)
    two = position_propensities(offsets, a, b, a * 1.1, b, ranked, seeds, same, n_threads=2, **args)
    half = n // 2
    first = position_propensities(offsets[: half + 1], a[: half * m], b[: half * m], a[: half * m] * 1.1,
                                  b[: half * m], ranked[:half], seeds[:half], same[:half], n_threads=2, **args)
    for key in ("inv_p0", "p0", "p1", "unsupported", "draws"):
        np.testing.assert_array_equal(one[key], two[key])
        np.testing.assert_array_equal(one[key][:half], first[key])


def test_unreachable_and_unestimable_positions():
    # Decision 0: the logged first item is hopeless (out of reach): no wait
    # for it. Decision 1: the logged first item is reachable but rare
    # (p ~ 1e-3): it is not estimable within max_draws = 200.
    a = np.array([500.0, 10.0, 1.0, 500.0, 2.0, 1.0])
    b = np.array([500.0, 9990.0, 1.0, 500.0, 30.0, 1.0])
    offsets = np.array([0, 3, 6], np.int64)
    ranked = np.array([[1], [1]], np.int32)
    out = position_propensities(offsets, a, b, a, b, ranked, np.array([1, 2], np.uint64), np.zeros(2, bool),
                                hits=1, min_draws=5, max_draws=200)
    assert np.isnan(out["inv_p0"][0, 0]) and out["draws"][0] == 5 and out["competing"][0, 0] == 2
    assert np.isnan(out["inv_p0"][1, 0]) and out["draws"][1] == 200


def test_unsupported_share_counts_candidate_slots_out_of_reach():
    # The logging policy can never rank item 2 first; the candidate nearly always does.
    a0 = np.array([900.0, 800.0, 1.0])
    b0 = np.array([100.0, 200.0, 5000.0])
    a1 = np.array([900.0, 800.0, 5000.0])
    b1 = np.array([100.0, 200.0, 1.0])
    out = run(a0, b0, a1, b1, [0], 50, hits=1, min_draws=20)
    assert np.all(out["unsupported"] == 1.0)
    assert np.all(out["p1"][:, 0] == 0.0)
    same = run(a0, b0, a0, b0, [0], 50, hits=1, min_draws=20)
    assert np.all(same["unsupported"] == 0.0)


def test_same_parameters_draw_nothing_and_weigh_one():
    offsets, A, B, R = copies(A3, B3, 3, [0, 1])
    out = weights(offsets, A, B, A, B, R, np.arange(3, dtype=np.uint64), np.ones(3, bool), DrawSettings())
    assert np.all(out["draws"] == 0)
    np.testing.assert_array_equal(out["weight"], np.ones((3, 2)))


def test_weights_zero_past_positions_and_where_not_estimable():
    offsets, A, B, _ = copies(A3, B3, 2, [0, 1])
    ranked = np.array([[1, -1], [1, 0]], np.int32)
    out = weights(offsets, A, B, A * 2, B, ranked, np.arange(2, dtype=np.uint64), np.zeros(2, bool),
                  DrawSettings(target_se=1.0))
    assert out["weight"][0, 1] == 0.0 and not out["estimable"][0, 1]
    assert out["estimable"][1].all()


def test_draw_settings_from_the_target_error():
    s = DrawSettings(target_se=0.5, min_propensity=0.01, min_draws=16)
    assert s.hits == 4 and s.max_draws == 400
    assert DrawSettings(target_se=0.71).hits == 2
    assert DrawSettings(target_se=1.0).hits == 1
    for bad in (dict(target_se=0), dict(target_se=1.5), dict(min_propensity=0), dict(min_propensity=1),
                dict(min_draws=0), dict(prune_log=0)):
        with pytest.raises(ValueError):
            DrawSettings(**bad)


@pytest.mark.parametrize("change", [
    dict(alpha0=np.array([1.0, -1.0, 1.0])),
    dict(beta1=np.array([1.0, np.inf, 1.0])),
    dict(ranked=np.array([[0, 0]], np.int32)),
    dict(ranked=np.array([[3, 0]], np.int32)),
    dict(ranked=np.array([[-1, 0]], np.int32)),
    dict(offsets=np.array([0, 2], np.int64)),
    dict(seeds=np.array([1, 2], np.uint64)),
    dict(hits=0),
    dict(min_draws=5, max_draws=4),
])
def test_invalid_input_is_refused(change):
    args = dict(offsets=np.array([0, 3], np.int64), alpha0=A3, beta0=B3, alpha1=A3, beta1=B3,
                ranked=np.array([[0, 1]], np.int32), seeds=np.array([1], np.uint64), same=np.zeros(1, bool),
                hits=1, min_draws=1, max_draws=10)
    args.update(change)
    with pytest.raises(ValueError):
        position_propensities(**args)
