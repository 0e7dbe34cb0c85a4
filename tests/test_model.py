"""The model's serve-time decay: counts * 2**(-age / half_life), the prior unchanged, exactly."""

import math

import numpy as np
import pytest

from mab.errors import ConfigError
from mab.model import BetaModel
from mab.stores import create_store
from mab.testing.vertex_standin import VertexStandIn
from tests.vertex import BACKENDS, vertex_config

H = 3600.0
NOW = 1_715_000_000.0          # 2024-05-06T12:53:20Z
# item, successes, failures, updated_at (as the CSV may write it), its age at NOW
ROWS = [
    ("fresh", 40, 8, "1715000000", 0.0),
    ("one-half-life", 40, 8, "2024-05-06T11:53:20Z", H),
    ("two-half-lives", 40, 8, "2024-05-06T12:53:20+02:00", 2 * H),  # 10:53:20Z
    ("ten-half-lives", 1024, 2048, f"{NOW - 10 * H:.0f}", 10 * H),
    ("half-a-half-life", 40, 8, f"{NOW - H / 2:.1f}", H / 2),
    ("from-the-future", 40, 8, "2024-05-06T13:00:00Z", -400.0),
]
CSV = "item_id,successes,failures,updated_at\n" + "".join(f"{i},{s},{f},{t}\n" for i, s, f, t, _ in ROWS)


def model(make_config, path, clock, **settings):
    config = make_config({"models": {"default": {"prior_alpha": 2.0, "prior_beta": 3.0, **settings}}}, MAB_DATA=str(path))
    store = create_store(config.stores["default"], config.cache_dir)
    store.load()
    built = BetaModel(config.models["default"], store, clock=clock)
    built.check()
    return built


@pytest.fixture
def decaying_csv(tmp_path):
    path = tmp_path / "decaying.csv"
    path.write_text(CSV)
    return path


def test_counts_decay_exactly_by_their_age(make_config, decaying_csv):
    m = model(make_config, decaying_csv, lambda: NOW, half_life_seconds=H)
    ids = [row[0] for row in ROWS] + ["missing"]
    params = m.parameters(ids)
    # Whole half-lives: exact powers of two; a time ahead of the clock: no decay.
    expected_alpha = [2 + 40, 2 + 20, 2 + 10, 2 + 1, None, 2 + 40, 2.0]
    expected_beta = [3 + 8, 3 + 4, 3 + 2, 3 + 2, None, 3 + 8, 3.0]
    for i, (a, b) in enumerate(zip(expected_alpha, expected_beta)):
        if a is not None:
            assert (params.alpha[i], params.beta[i]) == (a, b), ids[i]
    # Half a half-life: 2**-0.5, to the last bit of libm's pow (numpy's exp2 may differ by an ulp).
    assert params.alpha[4] == pytest.approx(2 + 40 * 2**-0.5, rel=2**-52)
    assert params.beta[4] == pytest.approx(3 + 8 * 2**-0.5, rel=2**-52)
    assert params.age_seconds.tolist()[:6] == [row[4] for row in ROWS]
    assert math.isnan(params.age_seconds[6])
    assert params.missing == 1


def test_the_clock_moves_the_discount(make_config, decaying_csv):
    now = [NOW]
    m = model(make_config, decaying_csv, lambda: now[0], half_life_seconds=H)
    assert m.parameters(["fresh"]).alpha.tolist() == [42.0]
    now[0] = NOW + 3 * H
    assert m.parameters(["fresh"]).alpha.tolist() == [2 + 5.0]
    now[0] = NOW + 2000 * H          # decayed to nothing (underflow to 0): the prior alone
    params = m.parameters(["fresh"])
    assert (params.alpha.tolist(), params.beta.tolist()) == ([2.0], [3.0])


def test_no_half_life_means_no_decay(make_config, decaying_csv):
    m = model(make_config, decaying_csv, lambda: NOW + 1e9)
    params = m.parameters(["ten-half-lives"])
    assert (params.alpha.tolist(), params.beta.tolist(), params.age_seconds) == ([1026.0], [2051.0], None)


def test_a_half_life_needs_the_updated_at_column(make_config, items_csv):
    with pytest.raises(ConfigError, match="no 'updated_at' column"):
        model(make_config, items_csv, lambda: NOW, half_life_seconds=H)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vertex_counts_decay_by_their_generate_time(tmp_path, decaying_csv, backend):
    """The stand-in serves the CSV's updated_at as each value's
    metadata.generate_time, as Vertex AI Feature Store does."""
    standin = VertexStandIn.from_csv(decaying_csv).start()
    try:
        config = vertex_config(standin, backend, {"deadline_ms": 20_000},
                               models={"default": {"prior_alpha": 2.0, "prior_beta": 3.0, "half_life_seconds": H}})
        store = create_store(config.stores["default"], config.cache_dir)
        store.load()
        try:
            m = BetaModel(config.models["default"], store, clock=lambda: NOW)
            params = m.parameters(["fresh", "one-half-life", "two-half-lives", "ten-half-lives", "from-the-future", "missing"])
            assert params.alpha.tolist() == [42.0, 22.0, 12.0, 3.0, 42.0, 2.0]
            assert params.beta.tolist() == [11.0, 7.0, 5.0, 5.0, 11.0, 3.0]
            assert params.failed == 0 and params.missing == 1
        finally:
            store.close()
    finally:
        standin.stop()


@pytest.mark.parametrize("backend", ["vertex", "vertex-legacy"])
def test_vertex_counts_without_generate_time_fail(tmp_path, items_csv, backend, caplog):
    standin = VertexStandIn.from_csv(items_csv).start()
    try:
        config = vertex_config(standin, backend, {"deadline_ms": 20_000},
                               models={"default": {"half_life_seconds": H, "on_store_error": "prior"}})
        store = create_store(config.stores["default"], config.cache_dir)
        store.load()
        try:
            params = BetaModel(config.models["default"], store, clock=lambda: NOW).parameters(["item-1", "item-2"])
            assert params.failed == 2
            assert np.all(params.alpha == 1.0)
            assert "generate_time" in caplog.text
        finally:
            store.close()
    finally:
        standin.stop()
