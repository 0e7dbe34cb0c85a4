"""End to end: gunicorn with gunicorn.conf.py and app.py, over real HTTP."""

import os
import socket
import subprocess
import sys
import time

import orjson
import pytest

from tests.serving import ROOT, Server, free_port  # noqa: F401 (Server is used by other test modules)

N_ITEMS = 2000


@pytest.fixture
def data_csv(tmp_path):
    path = tmp_path / "items.csv"
    subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "make_demo_data.py"), "--items", str(N_ITEMS), "--out", str(path)],
        check=True, capture_output=True,
    )
    return path


@pytest.fixture
def server(tmp_path, data_csv):
    server = Server(tmp_path, {"MAB_DATA": str(data_csv), "MAB_CACHE_DIR": str(tmp_path / "cache"), "WEB_CONCURRENCY": "2"})
    server.start()
    yield server
    server.stop()


def test_two_workers_serve_predictions(server):
    server.wait_ready()
    assert len(server.wait_for_workers(2)) == 2
    ids = [f"item-{i:06d}" for i in range(0, N_ITEMS, 5)] + ["not-in-the-data"]
    answers = {}
    for _ in range(200):       # new connection each time: the kernel spreads them
        worker, body = server.predict({"item_ids": ids, "top_k": 50})
        answers.setdefault(worker, body)
        if len(answers) == 2:
            break
    assert len(answers) == 2, "both workers answered"
    first, second = answers.values()
    assert first["missing"] == second["missing"] == 1
    assert first["seed"] != second["seed"], "workers drew different seeds"
    assert first["scores"] != second["scores"], "workers sampled different numbers"

    # Any worker replays any answer from its seed.
    for _ in range(20):
        _, replay = server.predict({"item_ids": ids, "top_k": 50, "seed": first["seed"]})
        assert replay == first


def test_errors_over_http(server):
    server.wait_ready()
    status, headers, body = server.request("POST", "/predict", b"{nope", {"Content-Type": "application/json"})
    assert status == 400 and orjson.loads(body)["error"]["code"] == "malformed_json"
    status, _, body = server.request("GET", "/absent")
    assert status == 404 and orjson.loads(body)["error"]["code"] == "not_found"
    # A request without Content-Length, written by hand.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
        response = b""
        while chunk := s.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 411") and orjson.loads(body)["error"]["code"] == "length_required"


def test_health_never_needs_the_store(server):
    server.wait_ready()
    status, _, body = server.request("GET", "/health")
    assert status == 200 and orjson.loads(body) == {"status": "ok"}


def test_logs_go_to_stdout_without_access_lines(server):
    server.wait_ready()
    server.predict({"item_ids": ["item-000001"]})
    output = server.output()
    assert "store 'default' ready" in output, "the app's records reach gunicorn's log"
    assert "POST /predict" not in output, "no access log unless MAB_ACCESS_LOG=1"


def test_stops_cleanly_by_pid(server):
    server.wait_ready()
    workers = server.wait_for_workers(2)
    assert server.stop() == 0
    time.sleep(0.2)
    assert not any(os.path.exists(f"/proc/{pid}") for pid in workers)


def test_bad_data_stops_the_start_with_the_row_named(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("item_id,successes,failures\nitem-1,1,2\nitem-2,-4,2\n")
    server = Server(tmp_path, {"MAB_DATA": str(bad), "MAB_CACHE_DIR": str(tmp_path / "cache")}).start()
    assert server.process.wait(60) != 0
    server.log.close()
    assert "line 3, column 'successes': -4.0 is not a count" in server.output()
    assert "Traceback" not in server.output()


def test_bad_configuration_stops_the_start(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAB_")}
    server = Server(tmp_path, {"MAB_MAX_ITEMS": "zero"})
    server.env = {**env, "GUNICORN_CMD_ARGS": server.env["GUNICORN_CMD_ARGS"], "MAB_MAX_ITEMS": "zero"}
    server.start()
    assert server.process.wait(60) != 0
    server.log.close()
    assert "MAB_MAX_ITEMS must be an integer" in server.output()
    assert "Traceback" not in server.output()
