"""The simulated world: click rates, drift, clicks, regret and its criteria; settings and the service's configuration."""

import numpy as np
import pytest

from mab.simulation.environment import ClickEnvironment, loglog_slope, regret_halves
from mab.simulation.server import Setting, service_config
from tests.beta_checks import Z


def test_static_and_drifting_click_rates():
    static = ClickEnvironment(30, 4, seed=1)
    np.testing.assert_array_equal(static.theta(0), static.theta(500))
    a = ClickEnvironment(30, 4, seed=1, drift=0.2)
    b = ClickEnvironment(30, 4, seed=1, drift=0.2)
    late = a.theta(300)
    b.theta(5)
    np.testing.assert_array_equal(b.theta(300), late)        # the same walk whatever the order of calls
    np.testing.assert_array_equal(a.theta(0), static.theta(0))
    assert np.all((late > 0) & (late < 1))
    assert np.argmax(late) != np.argmax(a.theta(0)) or not np.allclose(late, a.theta(0))
    with pytest.raises(ValueError):
        ClickEnvironment(3, 4)


def test_best_ranking_has_no_regret():
    env = ClickEnvironment(12, 3, seed=2)
    theta = env.theta(0)
    best = np.argsort(-theta)[:3]
    assert env.best_reward(0) == pytest.approx(env.expected_reward(best, 0))
    rng = np.random.default_rng(0)
    for _ in range(50):
        shown = rng.choice(12, 3, replace=False)
        assert env.expected_reward(shown, 0) <= env.best_reward(0) + 1e-15
    pool = np.array([0, 5, 7, 9])
    assert env.best_reward(0, pool) <= env.best_reward(0)


def test_clicks_follow_the_position_based_model():
    env = ClickEnvironment(10, 3, seed=3, ctr=(5, 5))
    rng = np.random.default_rng(4)
    shown = np.array([4, 1, 7])
    n = 20_000
    clicks = np.array([env.clicks(shown, 0, rng) for _ in range(n)])
    p = env.theta(0)[shown] * env.examination
    assert np.all(np.abs(clicks.mean(axis=0) - p) < Z * np.sqrt(p * (1 - p) / n))


def test_regret_criteria_tell_linear_from_logarithmic():
    t = np.arange(1, 2001)
    linear = np.full(2000, 0.05)
    first, second = regret_halves(linear)
    assert second == pytest.approx(first)
    assert loglog_slope(linear) == pytest.approx(1.0, abs=1e-9)
    logarithmic = 1.0 / t                       # cumulative regret ~ log t
    first, second = regret_halves(logarithmic)
    assert second < 0.2 * first
    assert loglog_slope(logarithmic) < 0.3


def test_settings_parse():
    assert Setting.parse("ts:1,1") == Setting("ts", 1.0, 1.0, None)
    assert Setting.parse("slow-decay:2,30,600") == Setting("slow-decay", 2.0, 30.0, 600.0)
    for bad in ("ts", "ts:1", "ts:1,0", "ts:a,b", ":1,1", "t s:1,1", "ts:1,1,1,1"):
        with pytest.raises(ValueError):
            Setting.parse(bad)


def test_service_configuration_uses_the_contract_keys(tmp_path):
    config = service_config([Setting("a", 1, 2), Setting("b", 1, 1, 60.0)], str(tmp_path), "/logs", "/journal")
    assert config["models"]["a"] == {"prior_alpha": 1, "prior_beta": 2, "store": "a", "log_fraction": 1.0,
                                     "online_updates": True}
    assert config["models"]["b"]["half_life_seconds"] == 60.0
    assert config["stores"]["b"]["path"].endswith("b.csv")
    assert config["decision_log"] == {"sink": "parquet", "directory": "/logs"}
    assert config["feedback"] == {"journal": "/journal"}
