"""The circuit breaker of the Vertex stores: its states with an injected
clock, and a store that stays down, which then gets no more calls."""

import time

import pytest

from mab.stores import vertex
from mab.stores._vertex.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from tests.stores.conftest import numbered, timed
from tests.vertex import FEATURES, vertex_config


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_states():
    clock = Clock()
    breaker = CircuitBreaker(3, 2.0, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record(False)
    assert breaker.state == CLOSED
    assert breaker.allow()
    breaker.record(True)
    assert breaker.describe()["failed_in_a_row"] == 0, "a success resets the count"
    for _ in range(3):
        assert breaker.allow()
        breaker.record(False)
    assert breaker.state == OPEN and breaker.opened == 1
    assert not breaker.allow() and not breaker.allow()
    assert breaker.short_circuited == 2
    clock.now += 1.999
    assert not breaker.allow(), "still open"
    clock.now += 0.001
    assert breaker.allow(), "the probe"
    assert breaker.state == HALF_OPEN
    assert not breaker.allow(), "one probe at a time"
    breaker.record(False)
    assert breaker.state == OPEN and breaker.opened == 2, "a failed probe opens it again"
    clock.now += 2.0
    assert breaker.allow()
    breaker.record(True)
    assert breaker.state == CLOSED and breaker.allow()


def test_settings():
    with pytest.raises(ValueError):
        CircuitBreaker(0, 1.0)
    with pytest.raises(ValueError):
        CircuitBreaker(1, 0)


@pytest.fixture
def store_with_clock(standin):
    opened = []

    def open_store(**settings):
        standin.reset()
        table = dict(deadline_ms=200, breaker_failures=3, breaker_reset_seconds=5)
        table.update(settings)
        config = vertex_config(standin, "vertex", table)
        clock = Clock()
        store = vertex.Store(config.stores["default"], clock=clock)
        store.load()
        opened.append(store)
        return store, clock

    yield open_store
    for store in opened:
        store.close()
    standin.reset()
    assert standin.quiesce()


def test_a_store_that_stays_down_is_not_hammered(standin, store_with_clock):
    store, clock = store_with_clock()
    standin.fail_next = 10**9
    for _ in range(3):
        assert store.fetch(numbered(10), "", "", FEATURES).failed == 10
    calls = len(standin.calls)
    assert store.describe()["circuit_breaker"]["state"] == OPEN
    # Open: every item fails at once, and the store hears nothing.
    for _ in range(50):
        batch, elapsed = timed(lambda: store.fetch(numbered(10), "", "", FEATURES))
        assert batch.failed == 10 and batch.missing == 0 and elapsed < 0.05
    assert len(standin.calls) == calls
    info = store.describe()
    assert info["circuit_breaker"]["short_circuited"] == 50 and info["fetches"]["short_circuited"] == 50
    # After reset_seconds: one probe; the store is still down, so it opens again.
    clock.now += 5
    assert store.fetch(numbered(10), "", "", FEATURES).failed == 10
    assert len(standin.calls) > calls and store.describe()["circuit_breaker"]["opened"] == 2
    # The store comes back: the next probe closes the breaker.
    standin.fail_next = 0
    clock.now += 5
    assert store.fetch(numbered(10), "", "", FEATURES).failed == 0
    assert store.describe()["circuit_breaker"]["state"] == CLOSED
    assert store.fetch(numbered(10, 10), "", "", FEATURES).failed == 0


def test_some_answers_keep_it_closed(standin, store_with_clock):
    store, _ = store_with_clock()
    standin.error_keys = frozenset(numbered(5))   # per-key errors: the store itself answers
    for _ in range(10):
        batch = store.fetch(numbered(10), "", "", FEATURES)
        assert batch.failed == 5
    assert store.describe()["circuit_breaker"]["state"] == CLOSED


def test_off_with_zero_failures(standin, store_with_clock):
    store, _ = store_with_clock(breaker_failures=0)
    standin.fail_next = 10**9
    for _ in range(6):
        store.fetch(numbered(3), "", "", FEATURES)
    assert store.describe()["circuit_breaker"] == {"enabled": False}
    assert store.describe()["fetches"]["short_circuited"] == 0


def test_the_model_policy_answers_at_once_while_open(standin):
    from mab.service import PredictionRequest, PredictionService
    from mab.stores import create_store
    from mab.errors import StoreUnavailable

    standin.reset()
    config = vertex_config(
        standin, "vertex", {"deadline_ms": 300, "breaker_failures": 2},
        {"default": {}, "lenient": {"on_store_error": "prior"}},
    )
    service = PredictionService(config, {"default": create_store(config.stores["default"], config.cache_dir)})
    service.load()
    try:
        standin.hang = True
        for _ in range(2):
            service.predict(PredictionRequest(item_ids=["item-1"], model="lenient"))
        start = time.monotonic()
        with pytest.raises(StoreUnavailable):
            service.predict(PredictionRequest(item_ids=["item-1", "item-2"]))
        prediction = service.predict(PredictionRequest(item_ids=["item-1", "item-2"], model="lenient"))
        assert prediction.degraded and prediction.failed == 2
        assert time.monotonic() - start < 0.1, "no deadline waited for while the breaker is open"
    finally:
        service.close()
        standin.reset()
