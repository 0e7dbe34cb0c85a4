"""The Vertex AI backends against the local stand-in, over real gRPC."""

import logging
import math
import os
import re
import subprocess
import sys
import time

import numpy as np
import orjson
import pytest
from falcon import testing

from mab.config import config_from_document
from mab.errors import ConfigError
from mab.service import PredictionRequest, PredictionService
from mab.stores import create_store, embedded
from mab.stores._cache import NOT_SERVED, SERVED, SERVED_MISSING, EntityCache
from mab.testing.vertex_standin import VertexStandIn
from mab.web import create_app
from tests.conftest import ITEMS_CSV, USER_ITEMS_CSV
from tests.stores.conftest import RELAXED, best_of, numbered, timed
from tests.vertex import BACKENDS, FEATURES, VARIANTS, make_store, vertex_config

# -- settings ------------------------------------------------------------------


def test_settings_defaults_and_resource_names(standin):
    legacy = vertex_config(standin, "vertex-legacy").stores["default"]
    assert legacy.backend == "vertex-legacy"
    assert legacy.resource == "projects/local/locations/us-central1/featurestores/mab/entityTypes/items"
    assert (legacy.deadline_ms, legacy.attempt_timeout_ms, legacy.chunk_size, legacy.pool_size) == (300, 150, 100, 16)
    assert legacy.retry and legacy.cache_ttl_seconds == 0
    view = vertex_config(standin, "vertex", {"deadline_ms": 80}).stores["default"]
    assert view.resource == "projects/local/locations/us-central1/featureOnlineStores/mab/featureViews/items"
    assert view.attempt_timeout_ms == 40, "half the deadline unless set"
    regional = vertex_config(standin, "vertex", {"api_endpoint": None, "plaintext": False})
    assert regional.stores["default"].endpoint == "us-central1-aiplatform.googleapis.com"


def drop_none(table):
    return {key: value for key, value in table.items() if value is not None}


@pytest.mark.parametrize(
    "backend, change, message",
    [
        ("vertex-legacy", {"project": None}, "stores.default.project is required"),
        ("vertex-legacy", {"entity_type": None}, "stores.default.entity_type is required"),
        ("vertex", {"feature_view": "a/b"}, "stores.default.feature_view must be a non-empty id"),
        ("vertex", {"chunk_size": 101}, "stores.default.chunk_size must be >= 1 and <= 100"),
        ("vertex", {"chunk_size": 2.5}, "stores.default.chunk_size must be an integer"),
        ("vertex", {"deadline_ms": 10**400}, "stores.default.deadline_ms must be a number"),
        ("vertex", {"read_api": "batch"}, "stores.default.read_api must be one of 'streaming', 'fetch'"),
        ("vertex", {"pool_size": 0}, "stores.default.pool_size must be >= 1"),
        ("vertex", {"deadline_ms": 0}, "stores.default.deadline_ms must be > 0"),
        ("vertex", {"deadline_ms": 100, "attempt_timeout_ms": 150}, "attempt_timeout_ms must be > 0 and <= 100"),
        ("vertex", {"retry_initial_ms": 50, "retry_max_ms": 20}, "retry_max_ms must be >= 50"),
        ("vertex", {"retry": "yes"}, "stores.default.retry must be true or false"),
        ("vertex", {"cache_ttl_seconds": -1}, "cache_ttl_seconds must be >= 0"),
        ("vertex", {"api_endpoint": None}, "plaintext needs api_endpoint"),
        ("vertex", {"path": "x.csv"}, "stores.default: unknown setting(s) path"),
        ("vertex-legacy", {"feature_view": "items"}, "unknown setting(s) feature_view"),
    ],
)
def test_settings_errors_name_the_key(standin, backend, change, message):
    table = drop_none(dict(standin.store_settings(backend), **change))
    with pytest.raises(ConfigError) as raised:
        config_from_document({"stores": {"default": table}}, {"MAB_CACHE_DIR": os.devnull})
    assert message in raised.value.message


# -- parity with the embedded store ----------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_parity_with_the_embedded_store(standin, stores, embedded_store, backend):
    store = stores(standin, backend, **RELAXED)
    ids = ["item-2", "brand-new", "item-1", "item-00003", "item-2", "item-3", "also-new"] + numbered(300, 600)
    expected = embedded_store.fetch(ids, "", "", FEATURES)
    batch = store.fetch(ids, "", "", FEATURES)
    assert batch.missing == expected.missing == 2
    assert batch.failed == 0 and batch.failed_mask is None
    for got, want in zip(batch.columns, expected.columns):
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, want)
    assert batch.columns[1][3] == 39.5, "a double value arrives as it was stored"
    # The caller may write into the columns (the model adds its priors in place).
    batch.columns[0][:] = -1
    assert store.fetch(["item-1"], "", "", FEATURES).columns[0][0] == 90


@pytest.mark.parametrize("backend", BACKENDS)
def test_parity_with_prefix_and_feature_order(tmp_path, embedded_store, backend):
    path = tmp_path / "user_items.csv"
    path.write_text(USER_ITEMS_CSV)
    standin = VertexStandIn.from_csv(path).start()
    try:
        store = make_store(standin, backend, **RELAXED)
        local = embedded.Store(embedded.Settings(name="u", path=str(path)), cache_dir=str(tmp_path / "cache"))
        local.load()
        ids = ["item-2", "item-1", "item-3"]
        for prefix in ("u-1:", "u-2:", "u-3:"):
            got = store.fetch(ids, prefix, "", ("skips", "clicks"))
            want = local.fetch(ids, prefix, "", ("skips", "clicks"))
            assert got.missing == want.missing and got.failed == 0
            for g, w in zip(got.columns, want.columns):
                np.testing.assert_array_equal(g, w)
        store.close()
    finally:
        standin.stop()


# -- chunking --------------------------------------------------------------------


def test_legacy_chunks_of_at_most_100_ids(standin, stores, embedded_store):
    store = stores(standin, "vertex-legacy", **RELAXED)
    ids = numbered(1000)
    batch = store.fetch(ids, "", "", FEATURES)
    assert standin.ids_per_call() == [100] * 10
    np.testing.assert_array_equal(batch.columns[0], embedded_store.fetch(ids, "", "", FEATURES).columns[0])
    np.testing.assert_array_equal(batch.columns[0], [(i * 7) % 1000 for i in range(1000)])

    store = stores(standin, "vertex-legacy", chunk_size=30, **RELAXED)
    store.fetch(ids, "", "", FEATURES)
    assert len(standin.calls) == math.ceil(1000 / 30) and max(standin.ids_per_call()) == 30


def test_vertex_fetch_reads_one_key_per_call(standin, stores, embedded_store):
    store = stores(standin, "vertex-fetch", **RELAXED)
    ids = list(reversed(numbered(1000)))
    batch = store.fetch(ids, "", "", FEATURES)
    assert standin.ids_per_call("FetchFeatureValues") == [1] * 1000 and len(standin.calls) == 1000
    want = embedded_store.fetch(ids, "", "", FEATURES)
    for got, expected in zip(batch.columns, want.columns):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicates_are_fetched_once(standin, stores, backend):
    store = stores(standin, backend, **RELAXED)
    batch = store.fetch(["item-1", "item-2", "item-1", "gone", "gone"], "", "", FEATURES)
    assert sum(standin.ids_per_call()) == 3
    np.testing.assert_array_equal(batch.columns[0], [90, 10, 90, 0, 0])
    assert batch.missing == 2


# -- concurrency -------------------------------------------------------------------


def test_legacy_chunks_are_fetched_concurrently(standin, stores):
    # A relaxed deadline: on a busy machine a slow stream must not be cut
    # off and retried, which would change the calls counted here.
    store = stores(standin, "vertex-legacy", **RELAXED)
    ids = numbered(400)
    store.fetch(ids, "", "", FEATURES)   # connect first: the channel's setup is not the subject
    standin.latency = 0.05
    elapsed = best_of(5, lambda: store.fetch(ids, "", "", FEATURES))
    assert standin.ids_per_call() == [100] * 4 * 6
    assert standin.max_in_flight == 4, "all four chunks were in flight at once"
    assert elapsed < 4 * 0.05, f"{elapsed * 1000:.0f} ms: chunks waited for each other"


def test_vertex_fetch_calls_are_in_flight_together(standin, stores):
    # Four chunks of 100 single-key calls; one 0.3 s wait, not four (or 400).
    store = stores(standin, "vertex-fetch", deadline_ms=5000)
    ids = numbered(400)
    store.fetch(ids[:10], "", "", FEATURES)
    standin.latency = 0.3
    batch, elapsed = timed(lambda: store.fetch(ids, "", "", FEATURES))
    assert batch.failed == 0
    assert standin.max_in_flight > 100, "calls of different chunks overlapped"
    assert elapsed < 4 * 0.3, f"{elapsed * 1000:.0f} ms"


# -- deadlines and retries -----------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_deadline_bounds_a_hang(standin, stores, backend):
    # No breaker: three hung fetches in a row must each meet the deadline.
    store = stores(standin, backend, deadline_ms=200, attempt_timeout_ms=100, breaker_failures=0)
    standin.hang = True
    # The best of three: on a loaded machine one run's threads may wait for
    # the CPU (read_api "fetch" starts 150 calls), but a store that ignored
    # its deadline would overrun it every time.
    runs = [timed(lambda: store.fetch(numbered(150), "", "", FEATURES)) for _ in range(3)]
    batch, elapsed = min(runs, key=lambda run: run[1])
    assert 0.15 <= elapsed < 0.2 + 0.3, f"{elapsed * 1000:.0f} ms"
    assert batch.failed == 150 and batch.missing == 0 and batch.failed_mask.all()
    assert all(not column.any() for column in batch.columns)
    # The first attempt of each chunk (or the stream) timed out after 100 ms
    # and was tried again. Counted by the client: on a busy machine not every
    # call it started need have reached the stand-in by the deadline.
    fetches = store.describe()["fetches"]
    assert fetches["calls"] > {"vertex-legacy": 2, "vertex": 1, "vertex-fetch": 150}[backend]
    assert fetches["retries"] >= 2 and fetches["failed"] == 3 * 150
    assert "Deadline" in fetches["last_error"] or "deadline" in fetches["last_error"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_transient_errors_are_retried_within_the_deadline(standin, stores, embedded_store, backend):
    store = stores(standin, backend, **RELAXED)
    ids = numbered(10)
    standin.fail_next = 2
    batch = store.fetch(ids, "", "", FEATURES)
    assert batch.failed == 0
    np.testing.assert_array_equal(batch.columns[1], embedded_store.fetch(ids, "", "", FEATURES).columns[1])
    # legacy: the one chunk's call failed twice, the third answered;
    # vertex: the first two streams failed at their one request message, the third answered;
    # vertex-fetch: two of ten keys failed, and only they were asked again.
    assert len(standin.calls) == {"vertex-legacy": 3, "vertex": 3, "vertex-fetch": 12}[backend]
    if backend == "vertex":
        assert standin.streams == 3
    assert store.describe()["fetches"]["retries"] >= 1


@pytest.mark.parametrize("backend", ["vertex-legacy", "vertex"])
def test_a_broken_stream_keeps_what_it_delivered(standin, stores, embedded_store, backend):
    store = stores(standin, backend, **RELAXED)
    standin.keys_per_message = 10   # streaming fetch: the 40 keys come in 4 messages before the break
    ids = numbered(100)
    standin.break_stream_after = 40
    batch = store.fetch(ids, "", "", FEATURES)
    assert batch.failed == 0
    assert standin.ids_per_call() == [100, 60], "the retry asked only for the entities not yet delivered"
    np.testing.assert_array_equal(batch.columns[0], embedded_store.fetch(ids, "", "", FEATURES).columns[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_store_that_stays_unavailable_fails_by_the_deadline(standin, stores, backend):
    store = stores(standin, backend, deadline_ms=150)
    standin.fail_next = 10**9
    batch, elapsed = timed(lambda: store.fetch(numbered(20) + ["gone"], "", "", FEATURES))
    assert elapsed < 0.15 + 0.3
    assert batch.failed == 21 and batch.missing == 0, "an id the store never answered for is failed, not missing"
    assert store.describe()["fetches"]["retries"] >= 1


@pytest.mark.parametrize("backend", ["vertex-legacy", "vertex"])
def test_no_retries_when_disabled(standin, stores, backend):
    store = stores(standin, backend, retry=False, **RELAXED)
    standin.fail_next = 1
    batch = store.fetch(numbered(5), "", "", FEATURES)
    assert batch.failed == 5
    if backend == "vertex":
        assert standin.streams == 1
    else:
        assert len(standin.calls) == 1
    assert store.describe()["fetches"]["retries"] == 0
    assert store.describe()["fetches"]["calls"] == 1


def test_legacy_errors_that_are_not_transient_fail_at_once(standin, stores):
    store = stores(standin, "vertex-legacy", entity_type="users", **RELAXED)
    batch = store.fetch(numbered(150), "", "", FEATURES)
    assert batch.failed == 150 and batch.missing == 0
    assert len(standin.calls) == 2, "NOT_FOUND of the entity type is not retried"
    assert "does not exist" in store.describe()["fetches"]["last_error"]


def test_vertex_fetch_answers_a_misnamed_feature_view_like_missing_keys(standin, stores):
    # The real service's behaviour, which the stand-in copies: NOT_FOUND for
    # the view as for a key. /ready's fetches.missing is how to notice.
    store = stores(standin, "vertex-fetch", feature_view="no_such_view", **RELAXED)
    batch = store.fetch(["item-1", "item-2"], "", "", FEATURES)
    assert batch.missing == 2 and batch.failed == 0
    assert store.describe()["fetches"]["missing"] == 2


def test_vertex_streaming_fails_a_misnamed_feature_view(standin, stores):
    # A streaming read tells the view's NOT_FOUND (the whole call) from a
    # missing key (an entry without values): the items fail, and say why.
    store = stores(standin, "vertex", feature_view="no_such_view", **RELAXED)
    batch = store.fetch(["item-1", "item-2"], "", "", FEATURES)
    assert batch.failed == 2 and batch.missing == 0
    assert "not found" in store.describe()["fetches"]["last_error"]


# -- values ------------------------------------------------------------------------

BAD_CSV = """item_id,successes,failures
good,3,4
negative,-4,2
not-a-number,nan,1
infinite,inf,1
text,abc,1
half,5,
empty,,
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_invalid_values_fail_their_entity_and_are_logged(tmp_path, backend, caplog):
    path = tmp_path / "bad.csv"
    path.write_text(BAD_CSV)
    standin = VertexStandIn.from_csv(path).start()
    try:
        store = make_store(standin, backend, **RELAXED)
        ids = ["good", "negative", "not-a-number", "infinite", "text", "half", "empty", "absent"]
        with caplog.at_level(logging.WARNING, logger="mab.stores._vertex"):
            batch = store.fetch(ids, "", "", FEATURES)
        assert batch.failed_mask.tolist() == [False, True, True, True, True, True, False, False]
        assert batch.failed == 5
        assert batch.missing == 2, "no value at all, or no entity: missing"
        assert batch.columns[0].tolist() == [3, 0, 0, 0, 0, 0, 0, 0]
        assert batch.columns[1].tolist() == [4, 0, 0, 0, 0, 0, 0, 0]
        assert store.describe()["fetches"]["invalid_values"] == 5
        # Rate-limited: one warning (for whichever answer came first) names
        # the entity and the feature; the others are counted.
        assert len(caplog.records) == 1
        assert re.search(
            r"entity '(negative|not-a-number|infinite|text|half)', feature '(successes|failures)': "
            r"(-4.0|nan|inf|a string value|no value)",
            caplog.text,
        ), caplog.text
        store.close()
    finally:
        standin.stop()


# -- the cache ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_cache_serves_repeats_and_counts(standin, stores, backend):
    store = stores(standin, backend, cache_ttl_seconds=60, **RELAXED)
    ids = ["item-1", "item-2", "gone"]
    first = store.fetch(ids, "", "", FEATURES)
    calls = len(standin.calls)
    second = store.fetch(ids + ["item-3"], "", "", FEATURES)
    assert sum(standin.ids_per_call()[calls:]) == 1, "only item-3 was fetched again"
    assert second.columns[0].tolist() == first.columns[0].tolist() + [0]
    assert second.missing == 1, "a cached missing entity is still missing"
    cache = store.describe()["cache"]
    assert cache["enabled"] and cache["hits"] == 3 and cache["misses"] == 4 and cache["entries"] == 4


def test_cache_never_keeps_failures(standin, stores):
    store = stores(standin, "vertex-legacy", cache_ttl_seconds=60, retry=False, **RELAXED)
    standin.fail_next = 1
    assert store.fetch(["item-1"], "", "", FEATURES).failed == 1
    assert store.fetch(["item-1"], "", "", FEATURES).columns[0][0] == 90
    assert store.describe()["cache"]["hits"] == 0


def test_cache_off_by_default(standin, stores):
    store = stores(standin, "vertex", **RELAXED)
    store.fetch(["item-1"], "", "", FEATURES)
    store.fetch(["item-1"], "", "", FEATURES)
    assert len(standin.calls) == 2 and store.describe()["cache"] == {"enabled": False}


def test_entity_cache_freshness_with_injected_time():
    cache = EntityCache(2, ttl=10, refresh_after=4, missing_ttl=3, max_entries=8)
    cache.put("a", (1.0, 2.0), 100)
    cache.put("b", None, 100)
    values, status, refresh = cache.lookup(["a", "b", "c"], b"", b"", 101.0)
    assert status.tolist() == [SERVED, SERVED_MISSING, NOT_SERVED] and refresh == []
    assert values.tolist() == [[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]]
    # Past refresh_after: served, and reported for a refresh once (single flight).
    values, status, refresh = cache.lookup(["a", "a", "b"], b"", b"", 104.0)
    assert status.tolist() == [SERVED, SERVED, NOT_SERVED], "b: missing_ttl (3 s) is over"
    assert refresh == [0] and cache.refreshing("a")
    assert cache.lookup(["a"], b"", b"", 109.9)[2] == [], "still refreshing: not reported again"
    assert cache.lookup(["a"], b"", b"", 110.0)[1].tolist() == [NOT_SERVED], "never served at ttl"
    cache.release("a")
    assert not cache.refreshing("a")
    cache.put("a", (5.0, 6.0), 110.0)
    values, status, refresh = cache.lookup(["a"], b"", b"", 111)
    assert values[:, 0].tolist() == [5.0, 6.0] and refresh == []
    assert (cache.hits, cache.stale_served, cache.expired) == (3, 3, 2)


def test_entity_cache_keys_prefix_suffix_and_spans():
    from mab._wire import parse_predict_body

    cache = EntityCache(1, ttl=10, refresh_after=10, missing_ttl=10, max_entries=8)
    cache.put("u1:item-1:x", (7.0,), 0)
    assert cache.lookup(["item-1", "item-2"], b"u1:", b":x", 1)[0].tolist() == [[7.0, 0.0]]
    assert cache.lookup(["item-1"], b"u2:", b":x", 1)[1].tolist() == [NOT_SERVED]
    spans = parse_predict_body(b'{"item_ids": ["item-1", "item-9"]}')[0]
    cache.put("u1:item-9:x", (3.0,), 0)
    cache.put("u1:caf\u00e9:x", (4.0,), 0)
    assert cache.lookup(["caf\u00e9"], b"u1:", b":x", 1)[0].tolist() == [[4.0]], "UTF-8 bytes, as put"
    assert cache.lookup(spans, b"u1:", b":x", 1)[0].tolist() == [[7.0, 3.0]]
    with pytest.raises(TypeError):
        cache.lookup(["ok", 5], b"", b"", 1)


def test_entity_cache_holds_its_bound_and_evicts_the_least_recently_used():
    cache = EntityCache(1, ttl=100, refresh_after=100, missing_ttl=100, max_entries=64)
    for i in range(64):
        cache.put(f"k{i}", (float(i),), 0)
    nbytes = cache.nbytes()
    hot = [f"k{i}" for i in range(0, 64, 2)]
    for round_ in range(1000):
        cache.lookup(hot, b"", b"", 1)   # the even keys stay in use
        cache.put(f"new{round_}", (1.0,), 1)
        assert cache.entries <= 64
    assert cache.evictions == 1000
    assert (cache.lookup(hot, b"", b"", 2)[1] == SERVED).all(), "entries in use were not evicted"
    # Every key still held is found, and the memory did not grow with the churn.
    assert cache.nbytes() <= nbytes * 1.1
    present = [f"new{i}" for i in range(1000) if cache.lookup([f"new{i}"], b"", b"", 2)[1][0] == SERVED]
    assert len(present) + len(hot) == 64


def test_entity_cache_index_survives_churn_against_a_model():
    # Backward-shift deletion must never lose a key: compare with a dict.
    import random

    rng = random.Random(7)
    cache = EntityCache(1, ttl=1e9, refresh_after=1e9, missing_ttl=1e9, max_entries=50)
    model = {}
    for step in range(20_000):
        key = f"e{rng.randrange(200)}"
        cache.put(key, (float(step),), 0)
        model[key] = float(step)
        if step % 97 == 0:
            keys = list(model)
            values, status, _ = cache.lookup(keys, b"", b"", 0)
            held = {k: v for k, v, s in zip(keys, values[0], status) if s == SERVED}
            assert len(held) == cache.entries <= 50
            assert all(model[k] == v for k, v in held.items())


# -- lifecycle ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_describe_and_close(standin, backend):
    store = make_store(standin, backend, **RELAXED)
    store.fetch(["item-1", "gone"], "", "", FEATURES)
    info = store.describe()
    assert info["backend"] == VARIANTS.get(backend, (backend,))[0] and info["client_initialised"] is True
    assert info["endpoint"] == standin.address and info["credentials"] == "none (plaintext)"
    assert info["resource"] in (standin.entity_type_name, standin.feature_view_name)
    assert info["fetches"]["found"] == 1 and info["fetches"]["missing"] == 1
    orjson.dumps(info)   # /ready serializes it
    store.close()
    assert store.describe()["client_initialised"] is False
    store.close()   # idempotent


def test_without_credentials_the_load_fails_and_ready_says_why(standin, monkeypatch, tmp_path):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    config = vertex_config(standin, "vertex", {"api_endpoint": None, "plaintext": False})
    store = create_store(config.stores["default"], config.cache_dir)
    with pytest.raises(ConfigError, match="no Google credentials"):
        store.load()
    app = create_app(config, load="no")
    with pytest.raises(ConfigError):
        app.service.load()
    client = testing.TestClient(app)
    ready = client.simulate_get("/ready")
    assert ready.status_code == 503 and ready.json["status"] == "failed"
    assert "no Google credentials" in ready.json["error"]
    assert client.simulate_get("/health").status_code == 200


def test_importing_the_service_does_not_load_google(tmp_path):
    # The embedded default never pays for the Google libraries, and the
    # gunicorn master parses Vertex settings without importing them either.
    (tmp_path / "items.csv").write_text(ITEMS_CSV)
    code = f"""
import sys
from mab.config import config_from_document
from mab.web import create_app
app = create_app(config_from_document({{}}, {{"MAB_DATA": {str(tmp_path / 'items.csv')!r}, "MAB_CACHE_DIR": {str(tmp_path / 'cache')!r}}}), load="now")
assert app.service.ready
config_from_document({{"stores": {{"default": {{"backend": "vertex", "project": "p", "location": "l",
    "feature_online_store": "s", "feature_view": "v"}}}}}}, {{}})
config_from_document({{"stores": {{"default": {{"backend": "vertex-legacy", "project": "p", "location": "l",
    "featurestore": "s", "entity_type": "t"}}}}}}, {{}})
# google and google.cloud themselves are empty namespace packages that a
# .pth file of google-cloud-aiplatform creates at every interpreter start.
loaded = sorted(
    name for name in sys.modules
    if name.startswith(("google.", "grpc", "proto.")) and name != "google.cloud" or name == "proto"
)
print(loaded)
assert not loaded, loaded
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# -- through the service: deadlines and the on_store_error policies --------------------

MODELS = {"default": {}, "lenient": {"on_store_error": "prior"}}
DEADLINE_MS = 400


@pytest.fixture
def vertex_app(standin):
    standin.reset()
    app = create_app(vertex_config(standin, "vertex-legacy", {"deadline_ms": DEADLINE_MS}, MODELS), load="now")
    yield app
    app.service.close()
    standin.reset()


def post(client, doc):
    return client.simulate_post("/predict", body=orjson.dumps(doc), headers={"Content-Type": "application/json"})


def test_store_errors_follow_the_model_policy(standin, vertex_app):
    client = testing.TestClient(vertex_app)
    ids = ["item-1", "item-2", "brand-new"]
    healthy = post(client, {"item_ids": ids, "seed": 5}).json
    assert healthy["missing"] == 1 and healthy["degraded"] is False and healthy["degraded_items"] == 0

    standin.hang = True
    start = time.monotonic()
    failing = post(client, {"item_ids": ids})
    assert time.monotonic() - start < DEADLINE_MS / 1000 + 0.5
    assert failing.status_code == 503 and failing.headers["Retry-After"] == "1"
    assert failing.json["error"]["code"] == "store_unavailable"
    assert "3 of 3 items" in failing.json["error"]["message"]

    lenient = post(client, {"item_ids": ids, "model": "lenient", "seed": 5})
    assert lenient.status_code == 200
    body = lenient.json
    assert body["degraded"] is True and body["degraded_items"] == 3
    assert body["missing"] == 0, "a failed fetch is degraded, never missing"
    # Every item was scored from the prior Beta(1, 1): the same draws as an empty store.
    expected = post(client, {"item_ids": ["x-1", "x-2", "x-3"], "model": "lenient", "seed": 5}).json
    assert body["scores"] == expected["scores"]

    assert client.simulate_get("/health").status_code == 200
    ready = client.simulate_get("/ready")
    assert ready.status_code == 200
    assert ready.json["stores"]["default"]["client_initialised"] is True
    assert ready.json["stores"]["default"]["fetches"]["failed"] >= 6


def test_some_items_degraded(standin, vertex_app):
    standin.reset()
    client = testing.TestClient(vertex_app)
    standin.fail_next = 10**9
    standin.latency = 0.0
    ids = numbered(150)   # two chunks; both fail
    body = post(client, {"item_ids": ids, "model": "lenient"}).json
    assert body["degraded_items"] == 150 and body["missing"] == 0


def test_the_service_passes_the_request_deadline(standin):
    standin.reset()
    config = vertex_config(standin, "vertex", {"deadline_ms": 10_000}, MODELS)
    service = PredictionService(config, {"default": create_store(config.stores["default"], config.cache_dir)})
    service.load()
    try:
        standin.hang = True
        start = time.monotonic()
        prediction = service.predict(
            PredictionRequest(item_ids=["item-1", "item-2"], model="lenient"), deadline=time.monotonic() + 0.1
        )
        assert time.monotonic() - start < 0.1 + 0.5
        assert prediction.degraded and prediction.failed == 2
    finally:
        service.close()
        standin.reset()
