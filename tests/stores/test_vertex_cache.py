"""The Vertex stores' stale-while-revalidate cache, through a store reading
from the stand-in, with the cache's clock injected instead of slept."""

import threading
import time

import numpy as np
import pytest

from mab.errors import WouldWait
from mab.stores import vertex, vertex_legacy
from tests.stores.conftest import numbered, timed
from tests.vertex import FEATURES, VARIANTS, vertex_config

TTL, REFRESH_AFTER, MISSING_TTL = 100.0, 10.0, 5.0


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def cached_store(standin):
    """``open(backend, **settings)``: a loaded store with the cache on and a
    Clock; closed after the test."""
    opened = []

    def open_store(backend="vertex", **settings):
        standin.reset()
        backend_name, _ = VARIANTS.get(backend, (backend, {}))
        table = dict(
            deadline_ms=5000, cache_ttl_seconds=TTL, cache_refresh_after_seconds=REFRESH_AFTER,
            cache_missing_ttl_seconds=MISSING_TTL,
        )
        table.update(settings)
        config = vertex_config(standin, backend, table)
        module = vertex if backend_name == "vertex" else vertex_legacy
        clock = Clock()
        store = module.Store(config.stores["default"], clock=clock)
        store.load()
        opened.append(store)
        return store, clock

    yield open_store
    for store in opened:
        store.close()
    standin.reset()
    assert standin.quiesce(), "the stand-in still receives calls from closed stores"


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.005)


def cache_info(store):
    return store.describe()["cache"]


def successes(store, ids):
    return store.fetch(ids, "", "", FEATURES).columns[0].tolist()


@pytest.mark.parametrize("backend", ["vertex", "vertex-fetch", "vertex-legacy"])
def test_staleness_bounds(standin, cached_store, backend):
    store, clock = cached_store(backend, deadline_ms=300)   # short: the end is about failing fetches
    original = dict(standin.data["item-1"])
    try:
        assert successes(store, ["item-1"]) == [90]
        standin.data["item-1"]["successes"] = 91
        standin._encoded.clear()
        calls = len(standin.calls) + standin.streams

        # Younger than refresh_after: served as it is, nothing fetched.
        clock.now += REFRESH_AFTER - 0.001
        assert successes(store, ["item-1"]) == [90]
        assert len(standin.calls) + standin.streams == calls

        # Between refresh_after and ttl: served as it is, refreshed in the background.
        clock.now += 0.001
        assert successes(store, ["item-1"]) == [90]
        wait_for(lambda: cache_info(store)["refreshed"] == 1)
        assert successes(store, ["item-1"]) == [91]
        info = cache_info(store)
        assert (info["hits"], info["stale_served"], info["misses"]) == (2, 1, 1)

        # Older than ttl with every refresh failing: never served.
        standin.fail_next = 10**9
        clock.now += TTL - 0.001
        assert successes(store, ["item-1"]) == [91], "stale, served; its refresh fails"
        wait_for(lambda: cache_info(store)["refresh_failures"] == 1)
        clock.now += 0.001
        batch = store.fetch(["item-1"], "", "", FEATURES)
        assert batch.failed == 1 and batch.columns[0][0] == 0, "expired: fetched, and the fetch failed"
        assert cache_info(store)["expired"] == 1
    finally:
        standin.data["item-1"] = original
        standin._encoded.clear()


def test_missing_entities_have_their_own_ttl(standin, cached_store):
    store, clock = cached_store()
    assert store.fetch(["brand-new"], "", "", FEATURES).missing == 1
    calls = len(standin.calls)
    # Refreshed at the same fraction of its TTL as found entities: 0.5 s.
    clock.now += MISSING_TTL * REFRESH_AFTER / TTL - 0.001
    assert store.fetch(["brand-new"], "", "", FEATURES).missing == 1
    assert cache_info(store)["stale_served"] == 0
    clock.now += 0.001
    assert store.fetch(["brand-new"], "", "", FEATURES).missing == 1
    wait_for(lambda: cache_info(store)["refreshed"] == 1)
    clock.now += MISSING_TTL
    batch = store.fetch(["brand-new"], "", "", FEATURES)
    assert batch.missing == 1 and cache_info(store)["expired"] == 1
    assert len(standin.calls) == calls + 2, "one refresh, then one fetch after the missing TTL"


def test_fifty_concurrent_requests_for_one_stale_key_make_one_fetch(standin, cached_store):
    store, clock = cached_store(pool_size=4)
    store.fetch(["item-1"], "", "", FEATURES)
    clock.now += REFRESH_AFTER + 1
    standin.latency = 0.3   # the refresh stays in flight while the requests come
    calls = len(standin.calls)
    barrier = threading.Barrier(50)
    answers = []

    def request():
        barrier.wait()
        answers.append(store.fetch(["item-1"], "", "", FEATURES).columns[0][0])

    threads = [threading.Thread(target=request) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert answers == [90] * 50
    wait_for(lambda: cache_info(store)["refreshed"] == 1)
    assert len(standin.calls) == calls + 1, "one fetch for fifty stale hits"
    info = cache_info(store)
    assert info["stale_served"] == 50 and info["refresh_fetches"] == 1


def test_no_request_waits_for_a_refresh(standin, cached_store):
    store, clock = cached_store()
    ids = numbered(400)
    store.fetch(ids, "", "", FEATURES)
    clock.now += REFRESH_AFTER + 1
    standin.latency = 2.0
    batch, elapsed = timed(lambda: store.fetch(ids, "", "", FEATURES))
    assert batch.failed == 0 and elapsed < 1.0, f"{elapsed:.2f} s: a request waited for the 2 s refresh"
    assert cache_info(store)["stale_served"] == 400


def test_the_entry_bound_holds(standin, cached_store):
    store, _ = cached_store(cache_max_entries=100)
    for start in range(0, 1000, 200):
        store.fetch(numbered(200, start), "", "", FEATURES)
    info = cache_info(store)
    assert info["entries"] == 100 and info["evictions"] == 900


def test_cached_answers_equal_fetched_ones(standin, cached_store, embedded_store):
    store, _ = cached_store()
    ids = ["item-00004", "gone", "item-00004"] + numbered(300, 50)
    first = store.fetch(ids, "", "", FEATURES)
    second = store.fetch(list(reversed(ids)), "", "", FEATURES)
    want = embedded_store.fetch(ids, "", "", FEATURES)
    for got, expected in zip(first.columns, want.columns):
        np.testing.assert_array_equal(got, expected)
    for got, expected in zip(second.columns, want.columns):
        np.testing.assert_array_equal(got[::-1], expected)
    assert first.missing == second.missing == want.missing == 1


def test_settings_of_the_cache(standin):
    settings = vertex_config(standin, "vertex", {"cache_ttl_seconds": 600}).stores["default"]
    assert (settings.cache_refresh_after_seconds, settings.cache_missing_ttl_seconds) == (300, 60)
    from mab.errors import ConfigError

    with pytest.raises(ConfigError, match="cache_refresh_after_seconds must be >= 0 and <= 10"):
        vertex_config(standin, "vertex", {"cache_ttl_seconds": 10, "cache_refresh_after_seconds": 11})



# -- fetches that must not wait (the worker's loop, MAB_INLINE_FIRST) -------------------


def test_a_fetch_that_must_not_wait_is_served_whole_by_the_cache_or_not_at_all(standin, cached_store):
    store, clock = cached_store()
    ids = ["item-1", "item-2", "brand-new"]
    calls = len(standin.calls) + standin.streams
    with pytest.raises(WouldWait):
        store.fetch(ids, "", "", FEATURES, wait=False)
    assert len(standin.calls) + standin.streams == calls, "no call"
    assert cache_info(store)["misses"] == 0, "nothing counted"
    fetched = store.fetch(ids, "", "", FEATURES)
    before = cache_info(store)
    served = store.fetch(ids, "", "", FEATURES, wait=False)
    assert [c.tolist() for c in served.columns] == [c.tolist() for c in fetched.columns]
    assert (served.missing, served.failed) == (1, 0)
    assert cache_info(store)["hits"] == before["hits"] + 3
    with pytest.raises(WouldWait):
        store.fetch(ids + ["item-3"], "", "", FEATURES, wait=False)
    with pytest.raises(WouldWait):
        store.fetch(ids, "user:", "", FEATURES, wait=False)      # other entity ids
    assert cache_info(store)["misses"] == before["misses"], "a lookup that does not serve all counts nothing"
    # Stale: served, and refreshed in the background.
    clock.now += REFRESH_AFTER
    assert store.fetch(ids[:2], "", "", FEATURES, wait=False).columns[0].tolist() == fetched.columns[0].tolist()[:2]
    wait_for(lambda: cache_info(store)["refreshed"] >= 2)
    # Expired (the missing entity's own TTL): it must be fetched again.
    clock.now += MISSING_TTL
    with pytest.raises(WouldWait):
        store.fetch(ids, "", "", FEATURES, wait=False)


def test_without_its_cache_a_remote_store_always_waits(standin, cached_store):
    store, _ = cached_store(cache_ttl_seconds=0, cache_refresh_after_seconds=0, cache_missing_ttl_seconds=0)
    store.fetch(["item-1"], "", "", FEATURES)
    assert not store.caching
    with pytest.raises(WouldWait):
        store.fetch(["item-1"], "", "", FEATURES, wait=False)
