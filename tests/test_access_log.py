"""X-Request-ID and the JSON access log (mab.access_log)."""

import datetime
import logging
import uuid

import orjson
import pytest
from falcon import testing
from gunicorn.config import Config

from mab import access_log
from mab.metrics import MODEL_KEY, PREDICTION_KEY

JSON_HEADERS = {"Content-Type": "application/json"}


@pytest.fixture
def client(app):
    return testing.TestClient(app)


@pytest.mark.parametrize("given", ["abc", "req-1/2:3@x", "A" * 128, "{\"quoted\"}"])
def test_a_sane_request_id_is_echoed(client, given):
    for result in (client.simulate_get("/health", headers={"X-Request-ID": given}),
                   client.simulate_post("/predict", body=b"{", headers=dict(JSON_HEADERS, **{"X-Request-ID": given}))):
        assert result.headers["x-request-id"] == given


@pytest.mark.parametrize("given", [None, "", "A" * 129, "has space", "tab\there", "caf\u00e9"])
def test_otherwise_a_new_uuid4_is_given(client, given):
    headers = {} if given is None else {"X-Request-ID": given}
    ids = {client.simulate_get("/health", headers=headers).headers["x-request-id"] for _ in range(20)}
    assert len(ids) == 20, "a new id each time"
    for rid in ids:
        assert len(rid) == 32 and uuid.UUID(hex=rid).version == 4 and uuid.UUID(hex=rid).hex == rid


def test_generated_ids_are_uuid4_with_random_bits():
    ids = [uuid.UUID(hex=access_log.new_request_id()) for _ in range(2000)]
    assert all(u.version == 4 and u.variant == uuid.RFC_4122 for u in ids)
    # Each of the 122 random bits is set in about half the ids (binomial,
    # n = 2000: sd 22; 6 sd either side).
    for bit in range(128):
        if 76 <= bit < 80 or 62 <= bit < 64:
            continue
        ones = sum(u.int >> bit & 1 for u in ids)
        assert abs(ones - 1000) < 6 * 22.4, bit


class Resp:
    status = "200 OK"
    headers = [("X-Request-ID", "r-1")]
    sent = 123


def test_the_access_logger_writes_one_json_object_a_line(caplog):
    cfg = Config()
    cfg.set("accesslog", "-")
    logger = access_log.JsonAccessLogger(cfg)
    logger.access_log.propagate = True        # for caplog
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": '/predict"x', "QUERY_STRING": "", "REMOTE_ADDR": "127.0.0.1",
               access_log.REQUEST_ID_KEY: "r-1", MODEL_KEY: "default", PREDICTION_KEY: (400, 0, 0, ())}
    with caplog.at_level(logging.INFO, logger="gunicorn.access"):
        logger.access(Resp(), None, environ, datetime.timedelta(microseconds=1500))
    (record,) = [r for r in caplog.records if r.name == "gunicorn.access"]
    line = orjson.loads(record.getMessage())
    assert line["request_id"] == "r-1" and line["method"] == "POST" and line["path"] == '/predict"x'
    assert line["status"] == 200 and line["duration_seconds"] == 0.0015 and line["bytes"] == 123
    assert line["model"] == "default" and line["items"] == 400
