"""True values of a known click model (mab.evaluation.truth), against exact integration."""

import numpy as np
from scipy import integrate, stats

from mab.evaluation.truth import policy_value
from tests.beta_checks import Z


def test_matches_exact_position_probabilities():
    a = np.array([3.0, 5.0, 2.0, 4.0])
    b = np.array([7.0, 6.0, 9.0, 4.0])
    rates = np.array([0.1, 0.4, 0.7, 0.2])
    examination = np.array([1.0, 0.5])

    def first(i):
        others = [j for j in range(4) if j != i]
        f = lambda x: stats.beta(a[i], b[i]).pdf(x) * np.prod([stats.beta(a[j], b[j]).cdf(x) for j in others])
        return integrate.quad(f, 0, 1)[0]

    p_first = np.array([first(i) for i in range(4)])
    draws = 20_000
    value = policy_value(np.array([0, 4, 8]), np.tile(a, 2), np.tile(b, 2), np.tile(rates, 2), examination,
                         np.array([2, 1]), draws=draws, seed=3)
    exact_first = float(p_first @ rates)
    se = np.sqrt(np.sum(p_first * rates ** 2) - exact_first ** 2) / np.sqrt(draws)
    assert abs(value[0, 0] - exact_first) < Z * se
    assert abs(value[1, 0] - exact_first) < Z * se
    assert value[1, 1] == 0.0                       # decision 1 shows one item
    assert 0 < value[0, 1] < 0.5 * rates.max()


def test_ragged_decisions_and_blocks_agree():
    rng = np.random.default_rng(1)
    lengths = rng.integers(3, 9, 50)
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    a = 1 + rng.integers(0, 20, offsets[-1]).astype(float)
    b = 1 + rng.integers(0, 60, offsets[-1]).astype(float)
    rates = rng.random(offsets[-1])
    positions = np.minimum(lengths, 3)
    whole = policy_value(offsets, a, b, rates, np.ones(3), positions, draws=50, seed=4)
    blocks = policy_value(offsets, a, b, rates, np.ones(3), positions, draws=50, seed=4, block=7)
    assert whole.shape == blocks.shape == (50, 3)
    assert np.all(whole[np.arange(3)[None, :] >= positions[:, None]] == 0)
    # Different blocks draw different numbers: agreement is statistical.
    assert abs(whole.sum() - blocks.sum()) < Z * np.sqrt(2 * 50 * 3 * 0.25 / 50)
