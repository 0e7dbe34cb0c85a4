"""IPS and self-normalised IPS of position rewards, with confidence intervals.

Notation, per logged decision d and position k = 1..K (a decision shows
``top_k`` items; positions past them do not exist for it):

* r_dk: the reward of the item shown at k (0 without a reward event);
* w_dk: the importance weight p1_dk / p0_dk of that (item, position) pair,
  the candidate's propensity over the logging policy's (estimated without
  bias by ``mab.evaluation.propensity``; 0 for a pair whose logging
  propensity is too small to estimate; 1 where both policies are the same);
* h_dk: 1 if the decision has position k, else 0;
* Y_dk = r_dk * w_dk.

Estimators of V_k, the candidate's expected reward at position k per
decision, on the evaluated decisions:

* IPS (Horvitz-Thompson; for bandit logs L. Li, W. Chu, J. Langford and
  X. Wang, "Unbiased offline evaluation of contextual-bandit-based news
  article recommendation algorithms", WSDM 2011): mean_d Y_dk. Unbiased
  under the item-position model (the reward of an item at a position does
  not depend on the rest of the ranking) when every pair the candidate can
  produce has a positive logging propensity.
* SNIPS (A. Swaminathan and T. Joachims, "The self-normalized estimator
  for counterfactual learning", NeurIPS 2015): h_k * sum_d Y_dk /
  sum_d w_dk, with h_k the share of decisions that have position k (the
  weights of position k have expectation h_dk). Slightly biased,
  consistent, and usually of much lower variance; it equals the logged
  mean when the weights are all 1.
* The logged reward: mean_d r_dk.

The reward per decision over the first k positions is the sum of V_1..V_k;
"per decision" in reports means all K positions, and top-1 is V_1.

Confidence intervals are normal approximations with each estimator's
variance: the sample covariance of the per-decision terms (Y for IPS, r for
the logged mean) over n, and for SNIPS the delta method with its influence
function psi_dk = (h_k / w_k)(Y_dk - SNIPS_k / h_k * w_dk), w_k = mean_d
w_dk. The sums over positions use the full covariance across positions
of a decision. The Monte Carlo error of the weights is part of each
decision's term, so the intervals include it. Terms are accumulated
batch by batch (co-moments merged by Chan, Golub and LeVeque's pairwise
update, "Algorithms for computing the sample variance", Am. Stat. 37(3),
1983), so no per-decision array outlives its batch.
"""

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


class MomentAccumulator:
    """Mean and co-moment matrix of row vectors, merged batch by batch.

    ``add(Z)`` takes float64 (m, p); ``mean`` (p,), ``covariance()`` (p, p)
    with the n - 1 denominator.
    """

    def __init__(self, p):
        self.n = 0
        self.mean = np.zeros(p)
        self.m2 = np.zeros((p, p))

    def add(self, z):
        m = z.shape[0]
        if m == 0:
            return
        batch_mean = z.mean(axis=0)
        centred = z - batch_mean
        batch_m2 = centred.T @ centred
        total = self.n + m
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (m / total)
        self.m2 = self.m2 + batch_m2 + np.outer(delta, delta) * (self.n * m / total)
        self.n = total

    def covariance(self):
        if self.n < 2:
            return np.full_like(self.m2, np.nan)
        return self.m2 / (self.n - 1)


@dataclass(frozen=True)
class Interval:
    """An estimate with its standard error and two-sided interval."""

    estimate: float
    se: float
    low: float
    high: float

    def as_dict(self):
        return {"estimate": self.estimate, "se": self.se, "low": self.low, "high": self.high}


class PositionEstimator:
    """IPS, SNIPS and the logged mean of the rewards at positions 1..K.

    ``add(rewards, weights, present)``: float64 (m, K) each (present is 0/1).
    ``result(confidence)``: a dict of the estimates by position and over
    the first k positions (see the module docstring).
    """

    def __init__(self, positions):
        self.K = positions
        self.moments = MomentAccumulator(3 * positions)
        self.present = np.zeros(positions)

    @property
    def n(self):
        return self.moments.n

    def add(self, rewards, weights, present):
        y = rewards * weights
        self.moments.add(np.hstack([y, weights, rewards]))
        self.present += present.sum(axis=0)

    def result(self, confidence=0.95):
        K, n = self.K, self.moments.n
        z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
        mean = self.moments.mean
        cov = self.moments.covariance()
        y_mean, w_mean, r_mean = mean[:K], mean[K:2 * K], mean[2 * K:]
        share = self.present / n if n else np.full(K, np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(w_mean > 0, y_mean / w_mean, np.nan)
            snips = share * ratio
            scale = np.where(w_mean > 0, share / w_mean, np.nan)
        # psi = A z with z = (Y, w, r): psi_k = scale_k * (Y_k - ratio_k * w_k).
        a = np.zeros((K, 3 * K))
        a[np.arange(K), np.arange(K)] = scale
        a[np.arange(K), K + np.arange(K)] = -scale * ratio
        a = np.nan_to_num(a)
        cov_snips = a @ cov @ a.T
        cov_ips = cov[:K, :K]
        cov_logged = cov[2 * K:, 2 * K:]
        lower = np.tril(np.ones((K, K)))      # row k sums positions 1..k

        def intervals(values, covariance, cumulative):
            if cumulative:
                values = lower @ np.nan_to_num(values)
                variance = np.einsum("ij,jk,ik->i", lower, covariance, lower)
            else:
                variance = np.diag(covariance)
            se = np.sqrt(np.maximum(variance, 0.0) / n) if n else np.full(K, np.nan)
            return [Interval(float(v), float(s), float(v - z * s), float(v + z * s)) for v, s in zip(values, se)]

        estimates = {}
        for name, values, covariance in (("ips", y_mean, cov_ips), ("snips", snips, cov_snips),
                                          ("logged", r_mean, cov_logged)):
            estimates[name] = {"position": intervals(values, covariance, False),
                               "first_k": intervals(values, covariance, True)}
        w_second = np.diag(cov)[K:2 * K] * (n - 1) / n + w_mean ** 2 if n >= 2 else np.full(K, np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            effective = np.where(w_second > 0, n * w_mean ** 2 / w_second, 0.0)
        return {
            "decisions": n,
            "confidence": confidence,
            "position_share": share.tolist(),
            "mean_weight": intervals(w_mean, cov[K:2 * K, K:2 * K], False),
            # Kish's effective sample size of each position's weights.
            "effective_decisions": effective.tolist(),
            "estimates": estimates,
        }
