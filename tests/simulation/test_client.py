"""The simulator's HTTP client against the real server (gunicorn, started here, stopped by PID).

Before issue 11's merge the server has neither ``decision_id`` nor
``POST /feedback``, and the client must say so; after it, it must use them.
Both states are checked, each by what the package holds.
"""

import importlib.util

import pytest

from mab.simulation.client import HttpService, ServiceError
from tests.conftest import ITEMS_CSV
from tests.serving import Server, free_port

HAS_FEEDBACK = importlib.util.find_spec("mab.feedback") is not None
HAS_DECISION_LOG = importlib.util.find_spec("mab.decisions") is not None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("client")
    (tmp_path / "items.csv").write_text(ITEMS_CSV)
    server = Server(tmp_path, {"MAB_DATA": str(tmp_path / "items.csv"), "MAB_CACHE_DIR": str(tmp_path / "cache"),
                               "WEB_CONCURRENCY": "1"})
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_feedback_endpoint_is_detected(server):
    client = HttpService(f"http://127.0.0.1:{server.port}")
    try:
        assert client.has_feedback() == HAS_FEEDBACK
    finally:
        client.close()


def test_predict_needs_a_decision_id(server):
    client = HttpService(f"http://127.0.0.1:{server.port}")
    try:
        for _ in range(3):                   # one keep-alive connection for all
            if HAS_DECISION_LOG:
                answer = client.predict(["item-1", "item-2", "item-3"], 2, "default", "u")
                assert len(answer["decision_id"]) == 32 and len(answer["item_ids"]) == 2
            else:
                with pytest.raises(ServiceError, match="no decision_id"):
                    client.predict(["item-1", "item-2", "item-3"], 2, "default", "u")
        with pytest.raises(ServiceError, match="404"):
            client.predict(["item-1"], 1, "no-such-model")
    finally:
        client.close()


def test_bad_urls_and_unreachable_servers():
    with pytest.raises(ValueError):
        HttpService("https://example.invalid")
    client = HttpService(f"http://127.0.0.1:{free_port()}", timeout=5)
    with pytest.raises(ServiceError):
        client.predict(["a"], 1, "default")
