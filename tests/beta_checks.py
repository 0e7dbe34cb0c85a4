"""Statistical checks shared by the tests.

Every check here has a fixed significance level and derives its tolerance
from the sample size, so a correct sampler with a fixed seed passes and a
wrong one fails; see test_beta_checks.py for the proof that they can fail.
"""

import math

import numpy as np
from scipy import stats

# Per-check significance. With fixed seeds the suite is deterministic; this
# level keeps the chance that a *correct* sampler's seed lands in the
# rejection region of any of the few dozen checks below 1 in 300.
SIGNIFICANCE = 1e-4
# Two-sided normal quantile for the moment checks (p ~ 6e-7 each).
Z = 5.0

_ABOVE_ONE_ROUNDS_TO_ONE = 2.0**-54     # 1 - x rounds to 1.0 for x below this


def beta_cdf_of_rounded(values, a, b):
    """P(X rounded to float64 <= v) and P(X rounded < v) for X ~ Beta(a, b).

    Float64 cannot hold the extreme tails of Beta(1e-3, 1e-3): about a
    quarter of its mass lies below the smallest subnormal and rounds to 0,
    and another quarter within 1e-16 of 1 rounds to 1.0. A KS test against
    the continuous CDF would reject a perfect sampler there, so the test
    compares against the CDF of the rounded variable instead: away from 0
    and 1 the two agree to a relative 1e-16, and the atoms at 0 and 1 get
    their exact masses.
    """
    values = np.asarray(values, dtype=np.float64)
    cdf = stats.beta(a, b).cdf(values)
    left = cdf.copy()
    # Mass that rounds to 0: F(2^-1075) ~ F(2^-1074) * 2^-a, since F(x) ~ C x^a as x -> 0.
    zero_mass = stats.beta(a, b).cdf(2.0**-1074) * 2.0**-a
    # Mass that rounds to 1.0: P(1 - X < 2^-54), from the mirrored Beta(b, a).
    one_mass = stats.beta(b, a).cdf(_ABOVE_ONE_ROUNDS_TO_ONE)
    at_zero = values == 0.0
    at_one = values == 1.0
    cdf[at_zero] = zero_mass
    left[at_zero] = 0.0
    cdf[at_one] = 1.0
    left[at_one] = 1.0 - one_mass
    return cdf, left


def ks_pvalue_beta(sample, a, b):
    """Kolmogorov-Smirnov p-value of `sample` against Beta(a, b) rounded to float64.

    D is the largest gap between the empirical CDF and the CDF, taken on
    both sides of every distinct value (which handles ties and atoms); the
    p-value is the exact Kolmogorov distribution's, conservative for atoms.
    """
    x = np.sort(np.asarray(sample, dtype=np.float64))
    n = x.size
    values, first = np.unique(x, return_index=True)
    last = np.append(first[1:], n)
    cdf, left = beta_cdf_of_rounded(values, a, b)
    d = max(np.max(np.abs(last / n - cdf)), np.max(np.abs(first / n - left)))
    return float(stats.kstwo.sf(d, n))


def beta_moment_errors(sample, a, b):
    """(z-score of the mean, z-score of the variance) against Beta(a, b).

    Standard errors come from the sample size: sigma / sqrt(n) for the mean,
    sigma^2 sqrt((kurtosis_excess + 2) / n) for the variance.
    """
    n = len(sample)
    mean = a / (a + b)
    var = a * b / ((a + b) ** 2 * (a + b + 1))
    excess_kurtosis = float(stats.beta(a, b).stats(moments="k"))
    z_mean = (np.mean(sample) - mean) / math.sqrt(var / n)
    z_var = (np.var(sample, ddof=1) - var) / (var * math.sqrt((excess_kurtosis + 2) / n))
    return float(z_mean), float(z_var)


__all__ = ["SIGNIFICANCE", "Z", "beta_moment_errors", "ks_pvalue_beta"]
