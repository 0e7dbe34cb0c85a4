"""How many Monte Carlo draws the position propensities take, and the call into C.

The estimators need, per logged (decision, position), the importance weight
p1 / p0: the candidate's propensity of the logged pair over the logging
policy's. ``mab.evaluation._propensity`` estimates 1 / p0 by inverse
binomial sampling (drawing rankings until the logged item has been seen at
its position ``hits`` times: N / hits is unbiased for 1 / p0, Haldane
1945) and p1 from as many draws of the candidate; see that module.

The number of draws follows from the target error:

* ``hits`` = ceil(1 / target_se^2), so that each inverse propensity has a
  relative standard error of at most ``target_se`` (it is
  sqrt((1 - p0) / hits)); the draws then number about hits / p0, as many
  as the propensity needs and no more.
* ``max_draws`` = ceil(hits / min_propensity): a pair whose hits do not
  come within it (almost surely when p0 is well below ``min_propensity``,
  half the time at p0 = min_propensity, 4% of the time at twice it with
  the default 4 hits) is *not estimable* and gets weight 0.
* ``min_draws``: each policy draws at least this many rankings, so that a
  decision whose logged positions are all near certain still gets a
  candidate propensity from more than ``hits`` draws.

The per-decision error of a weight adds to the variance of the estimates,
never to their bias (the estimates of p1 and 1 / p0 are unbiased and
independent), and the intervals include it: with n decisions it shrinks
as 1 / sqrt(n) like the rest.
"""

import math
from dataclasses import dataclass

import numpy as np

from mab.evaluation._propensity import position_propensities


@dataclass(frozen=True)
class DrawSettings:
    """Monte Carlo settings; see the module docstring.

    ``target_se``: relative standard error of each inverse propensity, in
    (0, 1]. ``min_propensity``: below it a pair is not estimable, in (0, 1).
    ``min_draws``: >= 1. ``prune_log``: L of the pruning bound (> 0).
    Raises ValueError for values out of range.
    """

    target_se: float = 0.5
    min_draws: int = 16
    min_propensity: float = 0.005
    prune_log: float = 20.0

    def __post_init__(self):
        if not 0.0 < self.target_se <= 1.0:
            raise ValueError(f"the target relative standard error must be in (0, 1], got {self.target_se}")
        if not 0.0 < self.min_propensity < 1.0:
            raise ValueError(f"the minimum propensity must be in (0, 1), got {self.min_propensity}")
        if isinstance(self.min_draws, bool) or not isinstance(self.min_draws, int) or self.min_draws < 1:
            raise ValueError(f"the minimum number of draws must be an integer >= 1, got {self.min_draws}")
        if not self.prune_log > 0.0:
            raise ValueError(f"prune_log must be > 0, got {self.prune_log}")

    @property
    def hits(self):
        # The small tolerance keeps 1 / 0.5^2 at 4 despite rounding.
        return max(1, math.ceil(1.0 / self.target_se ** 2 - 1e-9))

    @property
    def max_draws(self):
        return max(self.min_draws, math.ceil(self.hits / self.min_propensity - 1e-9))

    def describe(self):
        return {"target_relative_se": self.target_se, "hits": self.hits, "min_draws": self.min_draws,
                "max_draws": self.max_draws, "min_propensity": self.min_propensity, "prune_log": self.prune_log}


def _mix(seed):
    """SplitMix64's finaliser of ``seed``: a uint64 to xor into per-decision seeds."""
    z = (int(seed) + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return np.uint64(z ^ (z >> 31))


def weights(offsets, alpha0, beta0, alpha1, beta1, ranked, decision_seeds, same, settings, *,
            seed=0, n_threads=1):
    """Importance weights of the logged (decision, position) pairs.

    Arrays as ``position_propensities`` takes them; ``decision_seeds``
    uint64 (n,) identify the decisions (from their ids), and ``seed`` (an
    int) selects the evaluation's random streams, so one seed gives the same
    weights whatever the batching or threads. Returns a dict: ``weight``
    float64 (n, K) (1 where ``same``, 0 where not estimable or past a
    decision's positions), ``estimable`` bool (n, K), and the kernel's
    ``p0``, ``p1``, ``inv_p0``, ``unsupported``, ``draws``, ``competing``,
    ``sampled``.
    """
    seeds = np.asarray(decision_seeds, dtype=np.uint64) ^ _mix(seed)
    out = position_propensities(offsets, alpha0, beta0, alpha1, beta1, ranked, seeds, same,
                                hits=settings.hits, min_draws=settings.min_draws,
                                max_draws=settings.max_draws, prune_log=settings.prune_log,
                                n_threads=n_threads)
    present = ranked >= 0
    estimable = present & (same[:, None] | np.isfinite(out["inv_p0"]))
    w = np.where(same[:, None], 1.0, out["p1"] * out["inv_p0"])
    out["weight"] = np.where(estimable, w, 0.0)
    out["estimable"] = estimable
    return out
