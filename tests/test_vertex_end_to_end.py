"""End to end: gunicorn with two workers reading features from the Vertex AI
stand-in (its command, a process of its own) over gRPC, asked over HTTP."""

import threading
import time

import orjson
import pytest
from falcon import testing

from mab.config import config_from_document
from mab.testing.vertex_standin import toml_table
from mab.web import create_app
from tests.serving import Server
from tests.vertex import StandInProcess

N_ITEMS = 600


@pytest.fixture
def data_csv(tmp_path):
    path = tmp_path / "items.csv"
    rows = "".join(f"item-{i:04d},{(i * 37) % 1000},{(i * 7919) % 100_000}\n" for i in range(N_ITEMS))
    path.write_text("item_id,successes,failures\n" + rows)
    return path


def embedded_answer(data_csv, tmp_path, doc):
    """What the embedded store answers for the same data and seed (but
    the decision_id, which is new in every answer)."""
    config = config_from_document({}, {"MAB_DATA": str(data_csv), "MAB_CACHE_DIR": str(tmp_path / "cache")})
    app = create_app(config, load="now")
    try:
        result = testing.TestClient(app).simulate_post(
            "/predict", body=orjson.dumps(doc), headers={"Content-Type": "application/json"}
        )
        answer = result.json
        del answer["decision_id"]
        return answer
    finally:
        app.service.close()


def write_config(path, legacy):
    timing = {"deadline_ms": 1000}   # generous: this machine also runs both servers
    view = {key: value for key, value in legacy.items() if key not in ("featurestore", "entity_type")}
    view.update(backend="vertex", feature_online_store="mab", feature_view="items")
    path.write_text(
        "\n\n".join(
            [
                toml_table("stores.default", dict(legacy, **timing)),
                toml_table("stores.view", dict(view, **timing)),
                toml_table("models.default", {"store": "default"}),
                toml_table("models.view", {"store": "view"}),
                toml_table("models.lenient", {"store": "default", "on_store_error": "prior"}),
            ]
        )
        + "\n"
    )


def post(server, doc):
    status, headers, body = server.request("POST", "/predict", orjson.dumps(doc), {"Content-Type": "application/json"})
    return status, headers, orjson.loads(body)


def test_gunicorn_serves_from_the_standin_and_degrades_without_it(tmp_path, data_csv):
    standin = StandInProcess(tmp_path, data_csv).start()
    config_path = tmp_path / "mab.toml"
    write_config(config_path, standin.settings)
    server = Server(
        tmp_path, {"MAB_CONFIG": str(config_path), "MAB_CACHE_DIR": str(tmp_path / "cache"), "WEB_CONCURRENCY": "2"}
    )
    try:
        server.start()
        server.wait_ready()
        assert len(server.wait_for_workers(2)) == 2
        status, _, ready = server.request("GET", "/ready")
        stores = orjson.loads(ready)["stores"]
        assert stores["default"]["backend"] == "vertex-legacy" and stores["view"]["backend"] == "vertex"
        assert stores["default"]["client_initialised"] and stores["view"]["client_initialised"]

        ids = [f"item-{i:04d}" for i in range(0, N_ITEMS, 4)] + ["item-0004", "not-in-the-data"]
        doc = {"item_ids": ids, "top_k": 40, "seed": 20261122}
        expected = embedded_answer(data_csv, tmp_path, doc)
        assert expected["missing"] == 1
        answered_by = set()
        # A new connection each time: the kernel spreads them over the workers.
        # Until a deadline: on a busy machine a worker may still be loading.
        deadline = time.monotonic() + 60
        while len(answered_by) < 2 and time.monotonic() < deadline:
            for model in ("default", "view"):
                worker, body = server.predict(dict(doc, model=model))
                answered_by.add(worker)
                assert len(body.pop("decision_id")) == 32
                assert body == dict(expected, model=model), "the same features as the embedded store"
        assert len(answered_by) == 2, "both workers answered"

        # The store goes away: liveness holds, each model follows its policy.
        assert standin.stop() == 0
        assert server.request("GET", "/health")[0] == 200
        status, headers, body = post(server, {"item_ids": ids})
        assert status == 503 and body["error"]["code"] == "store_unavailable" and headers["Retry-After"] == "1"
        status, _, body = post(server, {"item_ids": ids, "model": "lenient"})
        assert status == 200 and body["degraded"] is True
        assert body["degraded_items"] == len(ids) and body["missing"] == 0
        assert server.request("GET", "/ready")[0] == 200, "the client is still initialised"
    finally:
        standin.stop()
        returncode = server.stop() if server.process else None
    assert returncode == 0, server.output()
    assert "Traceback" not in server.output()


def test_a_hanging_store_answers_by_the_client_deadline_and_health_stays_up(tmp_path, data_csv):
    """The store never answers; the model's deadline is long (5 s), the
    client's (x-envoy-expected-rq-timeout-ms) short: the answer comes by the
    client's deadline, degraded, and /health answers meanwhile."""
    standin = StandInProcess(tmp_path, data_csv, "--backend", "vertex", "--hang").start()
    config_path = tmp_path / "mab.toml"
    config_path.write_text(
        toml_table("stores.default", dict(standin.settings, deadline_ms=5000, breaker_failures=0)) + "\n\n"
        + toml_table("models.default", {"on_store_error": "prior"}) + "\n"
    )
    server = Server(tmp_path, {"MAB_CONFIG": str(config_path), "MAB_CACHE_DIR": str(tmp_path / "cache"),
                               "WEB_CONCURRENCY": "1"})
    ids = [f"item-{i:04d}" for i in range(100)]
    try:
        server.start()
        server.wait_ready()
        health = []

        def probe_health():
            for _ in range(10):
                start = time.monotonic()
                health.append((server.request("GET", "/health")[0], time.monotonic() - start))
                time.sleep(0.05)

        prober = threading.Thread(target=probe_health)
        prober.start()
        elapsed = []
        for _ in range(3):
            start = time.monotonic()
            status, _, body = server.request(
                "POST", "/predict", orjson.dumps({"item_ids": ids}),
                {"Content-Type": "application/json", "x-envoy-expected-rq-timeout-ms": "300"},
            )
            elapsed.append(time.monotonic() - start)
            body = orjson.loads(body)
            assert status == 200 and body["degraded"] is True and body["degraded_items"] == 100
        prober.join(30)
        # Deadline + 50 ms, for the best of three (one run may meet a slow
        # wake-up on a busy machine; a server that overran would every time).
        assert min(elapsed) < 0.3 + 0.05, elapsed
        assert max(elapsed) < 0.3 + 0.5, elapsed
        assert [status for status, _ in health] == [200] * 10
        assert min(seconds for _, seconds in health) < 0.05, "liveness never waits for the store"
    finally:
        standin.stop()
        server.stop()
    assert "Traceback" not in server.output()


def test_inline_first_answers_from_the_cache_in_the_loop_and_the_rest_on_threads(tmp_path, data_csv):
    # MAB_INLINE_FIRST=1: a prediction the cache serves whole runs in the
    # worker's loop, any other on a thread; the answers are the same.
    standin = StandInProcess(tmp_path, data_csv).start()
    view = {key: value for key, value in standin.settings.items() if key not in ("featurestore", "entity_type")}
    view.update(backend="vertex", feature_online_store="mab", feature_view="items", deadline_ms=1000,
                cache_ttl_seconds=600)
    config_path = tmp_path / "mab.toml"
    config_path.write_text(toml_table("stores.default", view) + "\n")
    server = Server(tmp_path, {"MAB_CONFIG": str(config_path), "MAB_CACHE_DIR": str(tmp_path / "cache"),
                               "WEB_CONCURRENCY": "1", "MAB_INLINE_FIRST": "1"})
    try:
        server.start()
        server.wait_ready()
        ids = [f"item-{i:04d}" for i in range(0, N_ITEMS, 3)] + ["not-in-the-data"]
        doc = {"item_ids": ids, "top_k": 30, "seed": 7}
        expected = embedded_answer(data_csv, tmp_path, doc)
        for _ in range(3):   # fetched on a thread, then served from the cache in the loop
            status, _, body = post(server, doc)
            assert status == 200
            del body["decision_id"]
            assert body == expected
        cache = orjson.loads(server.request("GET", "/ready")[2])["stores"]["default"]["cache"]
        assert cache["hits"] == 2 * len(ids) and cache["misses"] == len(ids), cache
        # Without the store, what the cache holds is still answered; the rest is not.
        assert standin.stop() == 0
        status, _, body = post(server, doc)
        assert status == 200 and body["degraded"] is False
        status, _, body = post(server, {"item_ids": ids + ["item-0001"]})
        assert status == 503 and body["error"]["code"] == "store_unavailable"
    finally:
        standin.stop()
        returncode = server.stop() if server.process else None
    assert returncode == 0, server.output()
    assert "Traceback" not in server.output()
