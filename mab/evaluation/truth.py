"""The true value of a Thompson-sampling setting when the click model is known.

Used where the truth is known (synthetic logs, the simulator) to check the
estimates of ``mab evaluate``. Independent of the estimator's code path: it
draws whole rankings with ``mab.sampling.sample_beta`` and numpy's sorts,
and averages the known expected rewards, with no propensities at all.
"""

import numpy as np

from mab.sampling import sample_beta


def policy_value(offsets, alpha, beta, click_rates, examination, positions, *, draws=2000, seed=0,
                 n_threads=1, block=4096):
    """Expected reward at each position of each decision under Thompson
    sampling with the given Beta parameters, by Monte Carlo.

    ``offsets``: int (n + 1,), decision d's candidates are
    ``[offsets[d], offsets[d + 1])``; ``alpha``, ``beta``: float64
    (total,); ``click_rates``: float64 (total,), each candidate's click
    probability when examined; ``examination``: float64 (K,), the chance
    that position k is examined (position-based click model);
    ``positions``: int (n,), each decision's top_k (<= K and <= its
    candidates). Returns float64 (n, K): the mean over ``draws`` rankings of
    click_rate(item at k) * examination[k], 0 past a decision's positions.
    Its Monte Carlo standard error per entry is at most 0.5 / sqrt(draws).
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    examination = np.asarray(examination, dtype=np.float64)
    positions = np.asarray(positions, dtype=np.int64)
    n = offsets.shape[0] - 1
    K = examination.shape[0]
    lengths = np.diff(offsets)
    if n and (positions.max() > K or np.any(positions > lengths)):
        raise ValueError("a decision has more positions than examination probabilities or candidates")
    value = np.zeros((n, K))
    rng = np.random.default_rng(seed)
    for start in range(0, n, block):
        stop = min(n, start + block)
        m = stop - start
        width = int(lengths[start:stop].max())
        cols = np.arange(width)
        valid = cols[None, :] < lengths[start:stop, None]
        index = np.where(valid, offsets[start:stop, None] + cols[None, :], 0)
        a = np.where(valid, alpha[index], 1.0).ravel()
        b = np.where(valid, beta[index], 1.0).ravel()
        rates = np.where(valid, click_rates[index], 0.0)
        shown = np.arange(K)[None, :] < positions[start:stop, None]
        k = min(K, width)
        total = np.zeros((m, K))
        for _ in range(draws):
            scores = sample_beta(a, b, seed=int(rng.integers(0, 2**63)), n_threads=n_threads).reshape(m, width)
            scores[~valid] = -1.0
            best = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < width else np.broadcast_to(cols, (m, width))
            order = np.take_along_axis(best, np.argsort(-np.take_along_axis(scores, best, 1), axis=1), 1)
            total[:, :k] += np.take_along_axis(rates, order, 1)
        value[start:stop] = np.where(shown, total / draws * examination[None, :], 0.0)
    return value
