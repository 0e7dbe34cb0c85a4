"""IPS, SNIPS and their intervals (mab.evaluation.estimators), against direct computations."""

import numpy as np
import pytest

from mab.evaluation.estimators import MomentAccumulator, PositionEstimator


def test_moments_merged_by_batches_equal_the_whole():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((1000, 4)) * [1, 10, 100, 1e-3] + [5, -3, 1e6, 0]
    acc = MomentAccumulator(4)
    for part in np.array_split(z, [1, 10, 400, 401]):
        acc.add(part)
    np.testing.assert_allclose(acc.mean, z.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(acc.covariance(), np.cov(z.T), rtol=1e-9, atol=1e-12)
    assert acc.n == 1000


def test_unit_weights_give_the_logged_mean_three_times():
    rng = np.random.default_rng(2)
    r = (rng.random((500, 3)) < [0.3, 0.2, 0.1]).astype(float)
    est = PositionEstimator(3)
    est.add(r, np.ones_like(r), np.ones_like(r))
    result = est.result(0.95)["estimates"]
    for name in ("ips", "snips", "logged"):
        values = [i.estimate for i in result[name]["position"]]
        np.testing.assert_allclose(values, r.mean(axis=0), rtol=1e-12)
        se = [i.se for i in result[name]["first_k"]]
        np.testing.assert_allclose(se, np.cumsum(r, axis=1).std(axis=0, ddof=1) / np.sqrt(500), rtol=1e-9)
        top = result[name]["first_k"][0]
        assert top.low == pytest.approx(top.estimate - 1.959964 * top.se, rel=1e-6)


def test_snips_and_its_variance_by_the_influence_function():
    rng = np.random.default_rng(3)
    n, K = 2000, 2
    present = np.ones((n, K))
    present[:300, 1] = 0                    # 300 decisions showed one item only
    w = rng.exponential(1.0, (n, K)) * present
    r = (rng.random((n, K)) < 0.2) * present
    est = PositionEstimator(K)
    for part in np.array_split(np.arange(n), 7):
        est.add(r[part], w[part], present[part])
    out = est.result(0.9)
    share = present.mean(axis=0)
    y = r * w
    snips = share * y.sum(axis=0) / w.sum(axis=0)
    psi = share / w.mean(axis=0) * (y - (snips / share) * w)
    got = out["estimates"]["snips"]
    np.testing.assert_allclose([i.estimate for i in got["position"]], snips, rtol=1e-12)
    np.testing.assert_allclose([i.se for i in got["position"]], psi.std(axis=0, ddof=1) / np.sqrt(n), rtol=1e-9)
    np.testing.assert_allclose(got["first_k"][1].se, psi.sum(axis=1).std(ddof=1) / np.sqrt(n), rtol=1e-9)
    ips = out["estimates"]["ips"]
    np.testing.assert_allclose(ips["first_k"][1].estimate, y.sum(axis=1).mean(), rtol=1e-12)
    np.testing.assert_allclose(out["position_share"], share)
    effective = w.sum(axis=0) ** 2 / (w ** 2).sum(axis=0)
    np.testing.assert_allclose(out["effective_decisions"], effective, rtol=1e-9)
