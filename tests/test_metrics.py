"""GET /metrics and the worker's recorder (mab.metrics), in process.

Without PROMETHEUS_MULTIPROC_DIR the app exports its own registry; the
multiprocess mode under gunicorn is tested in tests/test_gunicorn_conf.py.
"""

import hashlib

import orjson
import pytest
from falcon import testing
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

import mab
from mab import metrics

JSON_HEADERS = {"Content-Type": "application/json"}


@pytest.fixture(autouse=True)
def no_multiprocess(monkeypatch):
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)


@pytest.fixture
def client(app):
    return testing.TestClient(app)


def samples(text):
    """{(sample name, sorted label items): value} of an exposition."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scraped, name, **labels):
    return scraped[name, tuple(sorted(labels.items()))]


def scrape(client):
    result = client.simulate_get("/metrics")
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(result.text)


def test_predictions_show_in_the_metrics(client):
    ids = ["item-1", "item-2", "new", "unknown"]   # two ids absent from items.csv
    for seed in range(3):
        result = client.simulate_post("/predict", body=orjson.dumps({"item_ids": ids, "seed": seed}), headers=JSON_HEADERS)
        assert result.status_code == 200
    assert client.simulate_post("/predict", body=orjson.dumps({"item_ids": ids, "model": "nope"}),
                                headers=JSON_HEADERS).status_code == 404
    assert client.simulate_get("/health").status_code == 200
    assert client.simulate_get("/no/such/path").status_code == 404

    scraped = scrape(client)
    assert value(scraped, "mab_http_requests_total", route="/predict", status="200", model="default") == 3
    assert value(scraped, "mab_http_requests_total", route="/predict", status="404", model="nope") == 1
    assert value(scraped, "mab_http_requests_total", route="/health", status="200", model="") == 1
    assert value(scraped, "mab_http_requests_total", route="other", status="404", model="") == 1
    assert value(scraped, "mab_http_request_duration_seconds_count", route="/predict") == 4
    assert value(scraped, "mab_http_request_duration_seconds_sum", route="/predict") > 0
    # Items, missing and stages: the three answered predictions only.
    assert value(scraped, "mab_predict_items_count") == 3
    assert value(scraped, "mab_predict_items_sum") == 3 * len(ids)
    assert value(scraped, "mab_predict_missing_items_total") == 3 * 2
    assert value(scraped, "mab_predict_degraded_items_total") == 0
    for stage in metrics.STAGES:
        assert value(scraped, "mab_predict_stage_seconds_count", stage=stage) == 3
        assert value(scraped, "mab_predict_stage_seconds_sum", stage=stage) >= 0
    # Nothing runs now but the scrape, which is not counted in flight.
    assert value(scraped, "mab_http_requests_in_flight") == 0
    build = [labels for (name, labels) in scraped if name == "mab_build_info"]
    assert len(build) == 1 and dict(build[0])["version"] == mab.__version__
    assert dict(build[0])["sampler_threads"] == str(client.app.service.sampler_threads)
    # The embedded stores' snapshots: identity, rows, and when the file was written.
    store = client.app.service.stores["default"].describe()
    assert value(scraped, "mab_snapshot_rows", store="default") == store["items"]
    assert value(scraped, "mab_snapshot_created_timestamp_seconds", store="default") == store["source_mtime"]
    info = [dict(labels) for (name, labels) in scraped if name == "mab_snapshot_info" and ("store", "default") in labels]
    assert info == [{"store": "default", "snapshot": store["snapshot"], "source": store["source"],
                     "sha256": store["sha256"]}]
    assert value(scraped, "mab_snapshot_info", **info[0]) == 1
    with open(store["source"], "rb") as f:
        assert store["sha256"] == hashlib.sha256(f.read()).hexdigest()

    # The scrape itself is counted by the next one.
    assert value(scrape(client), "mab_http_requests_total", route="/metrics", status="200", model="") == 1


def test_an_invalid_body_counts_with_its_status(client):
    assert client.simulate_post("/predict", body=b"{", headers=JSON_HEADERS).status_code == 400
    scraped = scrape(client)
    assert value(scraped, "mab_http_requests_total", route="/predict", status="400", model="") == 1
    assert ("mab_predict_items_count", ()) not in scraped or value(scraped, "mab_predict_items_count") == 0


def test_flushed_histograms_match_prometheus_own_observations():
    """Recorder batches observations in plain Python and adds them to the
    histogram values at flush; the result must equal observe() one by one."""
    recorder = metrics.Recorder()
    reference = Histogram("reference", "r", buckets=metrics.LATENCY_BUCKETS, registry=CollectorRegistry())
    durations = [0.0001, 0.0005, 0.0005000001, 0.003, 0.2, 0.99, 1.0, 7.5, 11.0, 400.0]
    for index, seconds in enumerate(durations):
        recorder.request("/predict", "200", seconds, {}, counted_in_flight=False)
        reference.observe(seconds)
        if index == 4:
            recorder.flush()      # two flushes add up
    recorder.flush()
    exported = samples(recorder.exposition()[0].decode())
    expected = {
        (name, labels): v
        for (name, labels), v in samples(_exposition_of(reference)).items()
        if not name.endswith("_created")
    }
    for (name, labels), v in expected.items():
        ours = dict(labels, route="/predict")
        assert value(exported, name.replace("reference", "mab_http_request_duration_seconds"), **ours) == pytest.approx(v)


def _exposition_of(histogram):
    registry = CollectorRegistry()
    registry.register(histogram)
    from prometheus_client import generate_latest
    return generate_latest(registry).decode()


class FakeVertexStore:
    """A store whose describe() gives counters as the Vertex stores do."""

    def __init__(self):
        self.fetches = dict(requests=0, calls=0, retries=0, failed=0)
        self.cache = dict(enabled=True, hits=0, misses=0, evictions=0, stale_served=0)
        self.state = "closed"

    def describe(self):
        return {
            "backend": "vertex",
            "fetches": dict(self.fetches, last_error=None),
            "cache": dict(self.cache),
            "circuit_breaker": {"state": self.state, "opened": 0},
        }


def test_store_counters_are_exported_as_totals():
    store = FakeVertexStore()
    recorder = metrics.Recorder({"remote": store})
    store.fetches.update(requests=3, calls=7, retries=1)
    store.cache.update(hits=5, misses=2)
    recorder.flush()
    store.fetches.update(requests=10, calls=20, retries=1, failed=4)
    store.cache.update(hits=9, misses=2, evictions=1)
    store.state = "open"
    scraped = samples(recorder.exposition()[0].decode())
    events = {"requests": 10, "calls": 20, "retries": 1, "failed": 4,
              "cache_hits": 9, "cache_misses": 2, "cache_evictions": 1}
    for event, total in events.items():
        assert value(scraped, "mab_store_events_total", store="remote", event=event) == total, event
    assert value(scraped, "mab_store_breaker_open", store="remote") == 1
    store.state = "closed"
    assert value(samples(recorder.exposition()[0].decode()), "mab_store_breaker_open", store="remote") == 0


def test_shed_requests_are_read_from_the_admission_count():
    recorder = metrics.Recorder()
    shed = [0]
    recorder.watch_shed(lambda: shed[0])
    shed[0] = 4
    recorder.flush()
    shed[0] = 6
    assert value(samples(recorder.exposition()[0].decode()), "mab_http_requests_shed_total") == 6


def test_in_flight_counts_started_requests_until_answered():
    recorder = metrics.Recorder()
    recorder.started()
    recorder.started()
    assert value(samples(recorder.exposition()[0].decode()), "mab_http_requests_in_flight") == 2
    recorder.request("/predict", "200", 0.01, {}, counted_in_flight=True)
    recorder.request("/predict", "200", 0.01, {}, counted_in_flight=True)
    assert value(samples(recorder.exposition()[0].decode()), "mab_http_requests_in_flight") == 0


def test_queue_time_is_read_from_the_worker_environ(client):
    import time

    environ_extra = {"mab.received": time.monotonic() - 0.2}
    assert client.simulate_get("/health", extras=environ_extra).status_code == 200
    assert client.simulate_get("/health").status_code == 200      # no mab worker: no queue time
    scraped = scrape(client)
    assert value(scraped, "mab_http_queue_seconds_count") == 1
    assert value(scraped, "mab_http_queue_seconds_sum") >= 0.2
    assert value(scraped, "mab_http_queue_seconds_bucket", le="0.1") == 0


def test_an_app_without_metrics_records_nothing_and_has_no_route(two_model_config):
    from mab.web import create_app

    app = create_app(two_model_config, load="now", metrics=False)
    try:
        client = testing.TestClient(app)
        result = client.simulate_post("/predict", body=orjson.dumps({"item_ids": ["item-1"]}), headers=JSON_HEADERS)
        assert result.status_code == 200 and len(result.headers["x-request-id"]) == 32
        assert app.metrics is None
        assert client.simulate_get("/metrics").status_code == 404
    finally:
        app.service.close()
