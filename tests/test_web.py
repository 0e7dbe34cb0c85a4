"""The HTTP edge, in process, through falcon.testing."""

import re

import numpy as np
import orjson
import pytest
from falcon import testing

from mab import _wire
from mab.sampling import sample_beta
from mab.web import create_app

JSON_HEADERS = {"Content-Type": "application/json"}


@pytest.fixture
def client(app):
    return testing.TestClient(app)


def predict(client, doc=None, *, body=None, headers=JSON_HEADERS):
    return client.simulate_post("/predict", body=body if body is not None else orjson.dumps(doc), headers=headers)


def error_of(result, status):
    assert result.status_code == status, result.text
    assert result.headers["content-type"] == "application/json"
    error = result.json["error"]
    assert set(error) == {"code", "message"} and error["message"]
    assert "Traceback" not in result.text
    return error["code"]


# -- 200 -----------------------------------------------------------------------


def test_prediction_shape(client):
    result = predict(client, {"user_id": "u-17", "item_ids": ["item-1", "item-2", "new"], "seed": 12345})
    assert result.status_code == 200
    body = result.json
    assert set(body) == {"model", "decision_id", "item_ids", "scores", "seed", "missing", "degraded", "degraded_items"}
    assert re.fullmatch("[0-9a-f]{32}", body["decision_id"])
    assert body["model"] == "default" and body["seed"] == 12345
    assert body["missing"] == 1 and body["degraded"] is False and body["degraded_items"] == 0
    assert sorted(body["item_ids"]) == ["item-1", "item-2", "new"]
    assert body["scores"] == sorted(body["scores"], reverse=True)
    assert all(0.0 <= s <= 1.0 for s in body["scores"])


def test_scores_are_the_posterior_samples_of_each_item(client):
    # Replays the whole pipeline by hand: alpha = 1 + successes, beta = 1 + failures
    # from the CSV (prior 1, 1 for the unknown item), sampled with the same seed.
    ids = ["item-5", "item-1", "nope", "item-4", "item-1"]
    counts = {"item-1": (90, 10), "item-4": (500, 500), "item-5": (1, 1000), "nope": (0, 0)}
    alpha = np.array([1.0 + counts[i][0] for i in ids])
    beta = np.array([1.0 + counts[i][1] for i in ids])
    expected = sample_beta(alpha, beta, seed=99)
    body = predict(client, {"item_ids": ids, "seed": 99}).json
    order = np.argsort(-expected, kind="stable")
    assert body["item_ids"] == [ids[i] for i in order]
    assert body["scores"] == expected[order].tolist()


def test_ranking_follows_the_counts(client):
    # item-1 (90 successes, 10 failures) beats item-2 (10, 90) in essentially
    # every draw: P(Beta(91, 11) < Beta(11, 91)) is below 1e-30.
    wins = sum(
        predict(client, {"item_ids": ["item-2", "item-1"], "seed": seed}).json["item_ids"][0] == "item-1"
        for seed in range(50)
    )
    assert wins == 50


def test_top_k(client):
    full = predict(client, {"item_ids": ["item-1", "item-2", "item-3", "item-4"], "seed": 7}).json
    cut = predict(client, {"item_ids": ["item-1", "item-2", "item-3", "item-4"], "seed": 7, "top_k": 2}).json
    assert cut["item_ids"] == full["item_ids"][:2] and cut["scores"] == full["scores"][:2]
    more = predict(client, {"item_ids": ["item-1"], "top_k": 5}).json
    assert more["item_ids"] == ["item-1"]


def test_duplicates_are_scored_independently(client):
    body = predict(client, {"item_ids": ["item-3"] * 20, "seed": 1}).json
    assert body["item_ids"] == ["item-3"] * 20
    assert len(set(body["scores"])) == 20


def test_seeded_replay_and_fresh_seeds(client):
    doc = {"item_ids": ["item-1", "item-2", "item-3", "item-4", "new"]}
    first = predict(client, doc).json
    second = predict(client, doc).json
    assert first["seed"] != second["seed"]
    assert first["scores"] != second["scores"]
    replay = predict(client, dict(doc, seed=first["seed"])).json
    # The same answer; a new decision (its own id).
    assert replay.pop("decision_id") != first.pop("decision_id")
    assert replay == first


def test_several_models(client):
    doc = {"item_ids": ["item-3"] * 50, "seed": 5}
    plain = predict(client, doc).json
    optimistic = predict(client, dict(doc, model="optimistic")).json
    assert optimistic["model"] == "optimistic"
    # item-3 has no counts, so each model samples its prior: Beta(51, 1)
    # (mean 51/52, sd 0.0189) and Beta(1, 1) (mean 1/2, sd 0.289). Means of
    # 50 draws lie within 5 standard errors; the two intervals are disjoint.
    assert abs(np.mean(optimistic["scores"]) - 51 / 52) < 5 * 0.0189 / np.sqrt(50)
    assert abs(np.mean(plain["scores"]) - 0.5) < 5 * 0.289 / np.sqrt(50)


def test_per_user_model(client):
    doc = {"item_ids": ["item-1", "item-2"], "model": "per_user", "seed": 3}
    assert predict(client, dict(doc, user_id="u-1")).json["item_ids"] == ["item-2", "item-1"]
    assert predict(client, dict(doc, user_id="u-2")).json["item_ids"][0] == "item-1"
    unknown_user = predict(client, dict(doc, user_id="u-9")).json
    assert unknown_user["missing"] == 2


def test_content_type_with_charset(client):
    result = predict(client, {"item_ids": ["item-1"]}, headers={"Content-Type": "application/json; charset=utf-8"})
    assert result.status_code == 200


# -- errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{", 400, "malformed_json"),
        (b" ", 400, "malformed_json"),
        (b'{"item_ids": ["a"]} trailing', 400, "malformed_json"),
        (b"[1, 2]", 400, "wrong_type"),
        (b'{"item_ids": "item-1"}', 400, "wrong_type"),
        (b'{"item_ids": ["item-1", 2]}', 400, "wrong_type"),
        (b'{"item_ids": ["item-1"], "top_k": "2"}', 400, "wrong_type"),
        (b'{"item_ids": ["item-1"], "model": "nope"}', 404, "unknown_model"),
        (b'{"item_ids": ["x"] ' + b', "user_id": "u"}', 200, None),
        (orjson.dumps({"item_ids": ["item-1"] * 51}), 413, "too_many_items"),
        (b'{"item_ids": []}', 422, "invalid_value"),
        (b'{"item_ids": ["item-1"], "top_k": 0}', 422, "invalid_value"),
        (b'{"item_ids": ["item-1"], "seed": -5}', 422, "invalid_value"),
        (b'{"item_ids": ["item-1"], "extra": 1}', 422, "unknown_field"),
        (b'{"item_ids": ["item-1"], "item_ids": ["item-2"]}', 422, "duplicate_field"),
        (b'{"user_id": "u"}', 422, "missing_field"),
        (b'{"item_ids": ["item-1"], "model": "per_user"}', 422, "user_id_required"),
    ],
)
def test_request_errors(client, body, status, code):
    result = predict(client, body=body)
    if code is None:
        assert result.status_code == status
    else:
        assert error_of(result, status) == code


@pytest.mark.parametrize(
    "body",
    [
        b'{"item_ids": ["item-1", "item-2", "new"], "seed": 5, "top_k": 2}',
        b'{"item_ids": ["item-1"], "seed": -9223372036854775809}',
        b'{"item_ids": ["item-1"], "item_ids": ["item-2"], "seed": 1}',
        b'{"item_ids": ["item-1"], "top_k": 0, "seed": 1}',
        b'{"item_ids": [], "seed": 1}',
        b'{"item_ids": ["item-1"], "model": "nope", "seed": 1}',
        b'{"item_ids": ["item-1"],}',
    ],
)
def test_the_compiled_parser_changes_no_answer(client, monkeypatch, body):
    # The same answer, status and body, whether the compiled parser takes
    # the body or the general path does (tests/test_wire_properties.py holds
    # the parsers to it on generated bodies). Each answer is a decision of
    # its own, with its own decision_id.
    compiled = predict(client, body=body)
    monkeypatch.setattr(_wire, "parse_predict_body", lambda body: None)
    general = predict(client, body=body)
    answers = [compiled.json, general.json]
    if compiled.status_code == 200:
        assert answers[0].pop("decision_id") != answers[1].pop("decision_id")
    assert (compiled.status_code, answers[0]) == (general.status_code, answers[1])


def test_body_over_the_limit_is_refused_before_reading(make_config, items_csv):
    app = create_app(make_config(MAB_DATA=str(items_csv), MAB_MAX_BODY_BYTES="100"), load="now")
    result = predict(testing.TestClient(app), {"item_ids": ["item-1"] * 20})
    assert error_of(result, 413) == "body_too_large"


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_not_json_is_415(client, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    assert error_of(predict(client, {"item_ids": ["item-1"]}, headers=headers), 415) == "unsupported_media_type"


def test_missing_length_is_411(client):
    # falcon.testing, like a real server, sets no CONTENT_LENGTH for a POST without a body.
    assert error_of(predict(client, body=b""), 411) == "length_required"


def test_unknown_path_is_404(client):
    result = client.simulate_get("/nothing/here")
    assert error_of(result, 404) == "not_found"
    assert "/nothing/here" in result.json["error"]["message"]


@pytest.mark.parametrize(("method", "path"), [("GET", "/predict"), ("DELETE", "/predict"), ("POST", "/health")])
def test_wrong_method_is_405(client, method, path):
    result = client.simulate_request(method, path)
    assert error_of(result, 405) == "method_not_allowed"
    assert "allowed" in result.json["error"]["message"]


def test_internal_errors_are_json_without_traceback(app, client, monkeypatch):
    def explode(request):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(app.service, "predict", explode)
    result = predict(client, {"item_ids": ["item-1"]})
    assert error_of(result, 500) == "internal_error"
    assert "secret" not in result.text


# -- health and readiness ---------------------------------------------------------


def test_health(client):
    result = client.simulate_get("/health")
    assert result.status_code == 200 and result.json == {"status": "ok"}


def test_ready_when_loaded(client):
    result = client.simulate_get("/ready")
    assert result.status_code == 200
    body = result.json
    assert body["status"] == "ready"
    assert set(body["models"]) == {"default", "optimistic", "per_user"}
    assert body["stores"]["default"]["backend"] == "embedded" and body["stores"]["default"]["items"] == 5
    assert body["sampler"]["compiled"] is True and body["sampler"]["threads"] == 1
    assert "openmp" in body["sampler"] and body["version"]
    # The snapshot served: its compiled copy, the file's SHA-256, its age.
    store = body["stores"]["default"]
    assert store["snapshot"].startswith("items.csv-") and len(store["sha256"]) == 64
    assert 0 <= store["age_seconds"] < 3600 and store["compiled_at"] >= store["source_mtime"]
    assert "reload" not in body                 # no reload happened (nor gunicorn)


def test_ready_says_a_reload_was_refused(client, monkeypatch):
    from mab import preflight

    refused = {"status": "refused", "at": 1.0, "error": "/srv/items.csv: line 3: ...",
               "serving": {"/srv/items.csv": "/cache/items.csv-0123"}}
    monkeypatch.setattr(preflight, "_last_reload", refused)
    result = client.simulate_get("/ready")
    # Still ready: the data checked before is served.
    assert result.status_code == 200 and result.json["reload"] == refused


def test_not_ready_before_loading(two_model_config):
    app = create_app(two_model_config, load="no")
    client = testing.TestClient(app)
    ready = client.simulate_get("/ready")
    assert ready.status_code == 503 and ready.json["status"] == "loading"
    assert ready.headers["retry-after"] == "1"
    result = predict(client, {"item_ids": ["item-1"]})
    assert error_of(result, 503) == "not_ready"
    assert result.headers["retry-after"] == "1"
    assert client.simulate_get("/health").status_code == 200
    app.service.load()
    assert client.simulate_get("/ready").status_code == 200
    app.service.close()


def test_background_loading_becomes_ready(two_model_config):
    app = create_app(two_model_config)
    assert app.service.wait_until_ready(10)
    assert testing.TestClient(app).simulate_get("/ready").status_code == 200
    app.service.close()


def test_openapi_document_is_served_with_the_configured_limit(client):
    result = client.simulate_get("/openapi.json")
    assert result.status_code == 200
    item_ids = result.json["components"]["schemas"]["PredictionRequest"]["properties"]["item_ids"]
    assert item_ids["maxItems"] == 50


def test_fast_and_general_parsers_give_the_same_answer(client):
    # The escape makes the compiled parser decline; orjson reads the same ids.
    fast = predict(client, body=b'{"item_ids": ["item-1", "item-2", "new"], "seed": 5, "top_k": 2}').json
    general = predict(client, body=b'{"item_ids": ["item\\u002d1", "item-2", "new"], "seed": 5, "top_k": 2}').json
    assert fast.pop("decision_id") != general.pop("decision_id")
    assert fast == general



# -- in the worker's loop (INLINE_KEY, MAB_INLINE_FIRST) -----------------------------------


def test_in_the_loop_a_prediction_that_would_wait_goes_back_to_the_worker(tmp_path):
    from mab.http.wsgi import INLINE_KEY, RunOnThread
    from mab.testing.vertex_standin import VertexStandIn
    from tests.conftest import ITEMS_CSV
    from tests.vertex import vertex_config

    path = tmp_path / "items.csv"
    path.write_text(ITEMS_CSV)
    standin = VertexStandIn.from_csv(path).start()
    try:
        config = vertex_config(standin, "vertex", {"cache_ttl_seconds": 600, "deadline_ms": 5000})
        app = create_app(config, load="now")
        assert app.inline_first_paths >= {"/predict", "/health"}
        client = testing.TestClient(app)
        body = orjson.dumps({"item_ids": ["item-1", "item-2", "new"], "seed": 3})
        inline = {INLINE_KEY: True}
        try:
            with pytest.raises(RunOnThread):
                client.simulate_post("/predict", body=body, headers=JSON_HEADERS, extras=inline)
            recorder = app.metrics
            assert recorder._running == 0 and not recorder._counts, "not answered: neither in flight nor counted"
            answered = predict(client, body=body)          # where it may wait: fetched, and now cached
            assert answered.status_code == 200
            again = client.simulate_post("/predict", body=body, headers=JSON_HEADERS, extras=inline)
            assert again.status_code == 200 and again.json["scores"] == answered.json["scores"]
            assert sum(recorder._counts.values()) == 2
            # Errors found before any fetch are answered in the loop too.
            assert client.simulate_post("/predict", body=b"{nope", headers=JSON_HEADERS,
                                        extras=inline).status_code == 400
        finally:
            app.service.close()
    finally:
        standin.stop()


def test_without_a_remote_cache_nothing_is_tried_in_the_loop(app):
    assert app.inline_first_paths == frozenset()
