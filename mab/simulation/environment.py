"""A synthetic world with known click rates, optionally drifting.

Each item has a click probability theta_i(t) when examined; position k is
examined with probability 1 / log2(k + 1), so an item shown at k is
clicked with probability theta_i(t) / log2(k + 1): the position-based click
model (Craswell et al., WSDM 2008; see ``mab.evaluation.synthetic``).

Drift: the click rates follow independent random walks on the logit scale,
logit theta_i(t + 1) = logit theta_i(t) + drift * Z, Z standard normal, so a
drifting world keeps the rates in (0, 1) and changes which items are best.

Regret at step t of a ranking is the expected reward of the best ranking
(the top_k items by theta(t), best first, since examination decreases with
the position) minus that of the ranking shown, both without click noise:
the cumulative regret of a run is then a property of the policy alone.
"""

import numpy as np

from mab.evaluation.synthetic import examination


def _logit(p):
    return np.log(p) - np.log1p(-p)


def _expit(x):
    return 1.0 / (1.0 + np.exp(-x))


class ClickEnvironment:
    """``n_items`` items (ids ``sim-0000``, ...) with known click rates.

    ``ctr``: the Beta distribution the initial rates are drawn from;
    ``drift``: the random walk's step on the logit scale (0: static);
    ``top_k``: positions shown. Deterministic in ``seed``: ``theta(t)``
    is the same for any order of calls.
    """

    def __init__(self, n_items, top_k, *, seed=0, ctr=(2.0, 30.0), drift=0.0):
        if n_items < top_k or top_k < 1:
            raise ValueError(f"need 1 <= top_k <= n_items, got top_k={top_k}, n_items={n_items}")
        if drift < 0:
            raise ValueError(f"drift must be >= 0, got {drift}")
        self.n_items = n_items
        self.top_k = top_k
        self.drift = drift
        self.seed = seed
        self.item_ids = [f"sim-{i:04d}" for i in range(n_items)]
        self.index = {item: i for i, item in enumerate(self.item_ids)}
        self.examination = examination(top_k)
        rng = np.random.default_rng([seed, 0])
        self._logits = [_logit(rng.beta(ctr[0], ctr[1], n_items))]
        self._walk = np.random.default_rng([seed, 1])

    def theta(self, t):
        """Click rates at step t: float64 (n_items,)."""
        if self.drift == 0.0:
            return _expit(self._logits[0])
        while len(self._logits) <= t:
            self._logits.append(self._logits[-1] + self.drift * self._walk.standard_normal(self.n_items))
        return _expit(self._logits[t])

    def expected_reward(self, shown, t):
        """Expected reward of showing catalogue indices ``shown`` (int, best first) at step t."""
        shown = np.asarray(shown)
        return float(np.sum(self.theta(t)[shown] * self.examination[: len(shown)]))

    def best_reward(self, t, candidates=None):
        """Expected reward of the best ranking of ``candidates`` (all items when None) at step t."""
        theta = self.theta(t)
        pool = theta if candidates is None else theta[np.asarray(candidates)]
        best = np.sort(pool)[::-1][: self.top_k]
        return float(np.sum(best * self.examination[: len(best)]))

    def clicks(self, shown, t, rng):
        """Clicks on catalogue indices ``shown`` at step t: float64 0/1 per position."""
        shown = np.asarray(shown)
        p = self.theta(t)[shown] * self.examination[: len(shown)]
        return (rng.random(len(shown)) < p).astype(np.float64)


def regret_halves(regret):
    """(first half, second half) of the summed per-step regret: a sublinear
    regret makes the second half smaller; a linear one makes them equal."""
    regret = np.asarray(regret, dtype=np.float64)
    half = len(regret) // 2
    return float(regret[:half].sum()), float(regret[half: 2 * half].sum())


def loglog_slope(regret, start_fraction=0.1):
    """Least-squares slope of log cumulative regret against log t over the
    steps after ``start_fraction`` of the run: about 1 for linear regret,
    near 0 for logarithmic regret."""
    cumulative = np.cumsum(np.asarray(regret, dtype=np.float64))
    t = np.arange(1, len(cumulative) + 1)
    keep = (t >= max(2, int(start_fraction * len(t)))) & (cumulative > 0)
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(t[keep]), np.log(cumulative[keep]), 1)[0])
