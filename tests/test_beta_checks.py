"""The statistical checks must be able to fail: each rejects a sampler that
is only slightly wrong, at the sample sizes the sampler tests use."""

import numpy as np

from tests.beta_checks import SIGNIFICANCE, Z, beta_moment_errors, ks_pvalue_beta

N = 200_000


def test_ks_accepts_numpy_beta():
    sample = np.random.default_rng(3).beta(2.0, 3.0, N)
    assert ks_pvalue_beta(sample, 2.0, 3.0) > SIGNIFICANCE


def test_ks_rejects_a_two_percent_shape_error():
    sample = np.random.default_rng(3).beta(2.04, 3.0, N)
    assert ks_pvalue_beta(sample, 2.0, 3.0) < SIGNIFICANCE


def test_ks_rejects_the_underflow_bug_at_tiny_shapes():
    # The classic bug: Gamma(a) = Gamma(a + 1) * U**(1/a) in linear space
    # underflows to 0 for a = 1e-3, and 0 / (0 + 0) is then patched to 0.5.
    rng = np.random.default_rng(3)
    a = b = 1e-3
    x = rng.gamma(a + 1, size=N) * rng.uniform(size=N) ** (1 / a)
    y = rng.gamma(b + 1, size=N) * rng.uniform(size=N) ** (1 / b)
    with np.errstate(invalid="ignore"):
        sample = np.where(x + y > 0, x / (x + y), 0.5)
    assert ks_pvalue_beta(sample, a, b) < SIGNIFICANCE


def test_moments_reject_a_one_percent_mean_error():
    sample = np.random.default_rng(3).beta(2.0, 3.0, N) * 1.01
    z_mean, _ = beta_moment_errors(sample, 2.0, 3.0)
    assert abs(z_mean) > Z


def test_moments_reject_a_wrong_variance():
    rng = np.random.default_rng(3)
    mean = 0.4
    sample = mean + (rng.beta(2.0, 3.0, N) - mean) * 1.03
    z_mean, z_var = beta_moment_errors(sample, 2.0, 3.0)
    assert abs(z_mean) < Z and abs(z_var) > Z
