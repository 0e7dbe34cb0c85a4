"""The compiled table of the Vertex stores' cache (mab.stores._cache.EntityCache),
against a plain dict that follows the same rules: its pipelined lookup must
answer exactly as one id at a time would, whatever the probe chains, the
key's prefix and suffix, the form of the ids, and ``whole``."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mab._wire import IdSpans, parse_predict_body
from mab.stores._cache import NOT_SERVED, SERVED, SERVED_MISSING, EntityCache

TTL, REFRESH_AFTER, MISSING_TTL = 100.0, 10.0, 20.0
MISSING_REFRESH_AFTER = MISSING_TTL * REFRESH_AFTER / TTL
COUNTERS = ("hits", "stale_served", "misses", "expired")


class Reference:
    """The cache's rules, one id at a time, in a dict (no eviction: the
    tests keep fewer keys than the table holds)."""

    def __init__(self):
        self.entries = {}          # key -> (values or None, fetched at)
        self.refreshing = set()
        self.counts = dict.fromkeys(COUNTERS, 0)

    def put(self, key, values, now):
        self.entries[key] = (values, now)
        self.refreshing.discard(key)

    def lookup(self, keys, now, n_features, whole=False):
        counts = dict.fromkeys(COUNTERS, 0)
        values = np.zeros((n_features, len(keys)))
        status = np.zeros(len(keys), dtype=np.uint8)
        refresh, marked = [], set()
        for i, key in enumerate(keys):
            entry = self.entries.get(key)
            if entry is None:
                counts["misses"] += 1
                continue
            stored, fetched = entry
            ttl, refresh_after = (MISSING_TTL, MISSING_REFRESH_AFTER) if stored is None else (TTL, REFRESH_AFTER)
            age = now - fetched
            if age >= ttl:
                counts["expired"] += 1
                counts["misses"] += 1
                continue
            if stored is None:
                status[i] = SERVED_MISSING
            else:
                status[i] = SERVED
                values[:, i] = stored
            if age < refresh_after:
                counts["hits"] += 1
                continue
            counts["stale_served"] += 1
            if key not in self.refreshing and key not in marked:
                marked.add(key)
                refresh.append(i)
        if whole and counts["misses"]:
            return None
        self.refreshing |= marked
        for name in COUNTERS:
            self.counts[name] += counts[name]
        return values, status, refresh


def spans_of(ids):
    """``ids`` as the IdSpans a request body gives (read in place)."""
    body = ('{"item_ids": [' + ", ".join(f'"{item}"' for item in ids) + "]}").encode()
    spans = parse_predict_body(body)[0]
    assert type(spans) is IdSpans and spans.n == len(ids)
    return spans


def check(cache, reference, ids, prefix, suffix, now, whole=False, as_spans=False):
    keys = [prefix + item + suffix for item in ids]
    got = cache.lookup(spans_of(ids) if as_spans else list(ids), prefix.encode(), suffix.encode(), now, whole)
    want = reference.lookup(keys, now, cache.n_features, whole)
    if want is None:
        assert got is None
    else:
        assert got is not None
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        assert got[2] == want[2]
    assert {name: getattr(cache, name) for name in COUNTERS} == reference.counts


ID = st.text(alphabet="abcdefghij-_0123456789", min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(
    universe=st.lists(ID, min_size=8, max_size=60, unique=True),
    data=st.data(),
    affix=st.sampled_from([("", ""), ("user-7:", ""), ("", "#v2"), ("a-much-longer-prefix-than-any-id/", ":s")]),
    as_spans=st.booleans(),
)
def test_lookups_agree_with_one_id_at_a_time(universe, data, affix, as_spans):
    # Room for every key and at most twice that: a table of n entries has
    # 2n-4n slots, so the probe chains are long enough for the pipeline's
    # first guess (a key's home slot) to be wrong for some keys.
    capacity = data.draw(st.integers(len(universe), 2 * len(universe)))
    prefix, suffix = affix
    cache, reference = EntityCache(2, ttl=TTL, refresh_after=REFRESH_AFTER, missing_ttl=MISSING_TTL,
                                   max_entries=capacity), Reference()
    now = 1000.0
    for _ in range(data.draw(st.integers(min_value=1, max_value=6))):
        for item in data.draw(st.lists(st.sampled_from(universe), max_size=60)):
            key = prefix + item + suffix
            values = data.draw(st.one_of(st.none(), st.tuples(st.floats(0, 1e6), st.floats(0, 1e6))))
            cache.put(key, values, now)
            reference.put(key, values, now)
        now += data.draw(st.sampled_from([0.0, 5.0, 12.0, 30.0, 150.0]))
        # Up to 70 ids: more than the pipeline's depth (3 x 8), repeats included.
        ids = data.draw(st.lists(st.one_of(st.sampled_from(universe), ID), max_size=70))
        check(cache, reference, ids, prefix, suffix, now, whole=data.draw(st.booleans()), as_spans=as_spans)


def test_keys_off_their_home_slot_are_found():
    # 8 keys in 16 slots: some share a home slot and sit further along.
    cache = EntityCache(1, ttl=TTL, refresh_after=REFRESH_AFTER, missing_ttl=MISSING_TTL, max_entries=8)
    keys = [f"k{i}" for i in range(8)]
    for i, key in enumerate(keys):
        cache.put(key, (float(i),), 0.0)
    values, status, _ = cache.lookup(keys * 5, b"", b"", 1.0)
    assert (status == SERVED).all() and values[0].tolist() == list(range(8)) * 5


def test_a_whole_lookup_that_cannot_serve_everything_leaves_no_trace():
    cache = EntityCache(2, ttl=TTL, refresh_after=REFRESH_AFTER, missing_ttl=MISSING_TTL, max_entries=100)
    for i in range(30):
        cache.put(f"item-{i}", (i, 1.0), 0.0)
    stale = [f"item-{i}" for i in range(30)]
    # Every entry is stale at 50 s; one id is absent.
    assert cache.lookup(stale + ["absent"], b"", b"", 50.0, True) is None
    assert [getattr(cache, name) for name in COUNTERS] == [0, 0, 0, 0]
    # Nothing was marked as being refreshed: a lookup now reports every stale id.
    values, status, refresh = cache.lookup(stale, b"", b"", 50.0, True)
    assert refresh == list(range(30))
    assert (status == SERVED).all() and values[0].tolist() == list(range(30))
    assert cache.stale_served == 30 and cache.misses == 0
    # ... once: they are now being refreshed.
    assert cache.lookup(stale, b"", b"", 50.0)[2] == []


def test_an_expired_entry_fails_a_whole_lookup():
    cache = EntityCache(1, ttl=TTL, refresh_after=REFRESH_AFTER, missing_ttl=MISSING_TTL, max_entries=10)
    cache.put("old", (1.0,), 0.0)
    cache.put("new", (2.0,), 150.0)
    assert cache.lookup(["new", "old"], b"", b"", 151.0, True) is None
    values, status, _ = cache.lookup(["new", "old"], b"", b"", 151.0)
    assert status.tolist() == [SERVED, NOT_SERVED] and values[0].tolist() == [2.0, 0.0]
    assert (cache.hits, cache.misses, cache.expired) == (1, 1, 1)


@pytest.mark.parametrize("bad", [[1], ["ok", None], ("a", "b")])
def test_ids_that_are_not_strings_are_refused(bad):
    cache = EntityCache(1, ttl=TTL, refresh_after=REFRESH_AFTER, missing_ttl=MISSING_TTL, max_entries=10)
    with pytest.raises(TypeError):
        cache.lookup(bad, b"p", b"", 0.0)
