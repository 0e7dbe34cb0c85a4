"""End to end: gunicorn with gunicorn.conf.py and app.py, over real HTTP."""

import os
import re
import signal
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
    # A new connection each time: the kernel spreads them. Until a deadline,
    # not a count: on a busy machine one worker may still be loading its
    # stores (it takes no connection until then) while the other answers
    # hundreds of requests.
    deadline = time.monotonic() + 60
    while len(answers) < 2 and time.monotonic() < deadline:
        worker, body = server.predict({"item_ids": ids, "top_k": 50})
        answers.setdefault(worker, body)
    assert len(answers) == 2, "both workers answered"
    first, second = answers.values()
    assert first["missing"] == second["missing"] == 1
    assert first["seed"] != second["seed"], "workers drew different seeds"
    assert first["scores"] != second["scores"], "workers sampled different numbers"

    # Any worker replays any answer from its seed (as a new decision, with its own id).
    first.pop("decision_id")
    for _ in range(20):
        _, replay = server.predict({"item_ids": ids, "top_k": 50, "seed": first["seed"]})
        assert len(replay.pop("decision_id")) == 32
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
    assert '"request_id"' not in output, "no JSON access log unless MAB_ACCESS_LOG=1"


def test_stops_cleanly_by_pid(server):
    server.wait_ready()
    workers = server.wait_for_workers(2)
    assert server.stop() == 0
    time.sleep(0.2)
    assert not any(os.path.exists(f"/proc/{pid}") for pid in workers)


BAD_FILES = {
    "a bad count": (b"item_id,successes,failures\nitem-1,1,2\nitem-2,-4,2\n", "line 3, column 'successes': '-4'"),
    # The three samples of issue 9, and siblings.
    "CR-only line endings": (
        b"item_id,successes,failures,note\rA,9,1,x\rB,2,8,y\r", "line 1: a carriage return (CR) not followed",
    ),
    "Latin-1 ids": (b"item_id,successes,failures\ncaf\xe9,1,2\n", "line 2 (byte offset 30): invalid UTF-8"),
    "the model's features absent": (
        b'"item_id","wins","losses"\nA,1,2\n', "has no feature(s) 'successes', 'failures'; it has 'wins', 'losses'",
    ),
    "mixed line endings": (b"item_id,successes,failures\nA,1,2\r\n", "line 2: ends in CRLF"),
    "an unterminated quote": (b'item_id,successes,failures\n"A,1,2\n', "line 2, column 'item_id': a quoted field"),
    "UTF-16": ("item_id,successes,failures\nA,1,2\n".encode("utf-16"), "UTF-16 byte order mark"),
    "an empty file": (b"", "the file is empty"),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_bad_data_stops_the_start_with_one_message(tmp_path, case):
    data, message = BAD_FILES[case]
    bad = tmp_path / "bad.csv"
    bad.write_bytes(data)
    server = Server(tmp_path, {"MAB_DATA": str(bad), "MAB_CACHE_DIR": str(tmp_path / "cache"), "WEB_CONCURRENCY": "2"})
    server.start()
    try:
        # Generous: a loaded machine; the refusal itself takes milliseconds.
        status = server.process.wait(60)
    finally:
        server.stop()
    output = server.output()
    assert status != 0
    assert output.count(message) == 1, output
    assert "Traceback" not in output
    # Refused in the master, before any worker or socket: nothing ever
    # answered, so nothing answered 503.
    assert "Booting worker" not in output and "Listening at" not in output, output


def ready_items(server):
    status, _, body = server.request("GET", "/ready")
    assert status == 200, body
    return orjson.loads(body)["stores"]["default"]["items"]


def replace(path, data):
    """Write a new version of a file the safe way: elsewhere, then rename."""
    partial = path.with_suffix(".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def test_a_quoted_header_is_served_by_every_worker(tmp_path):
    data = tmp_path / "items.csv"
    data.write_bytes(b'\xef\xbb\xbf"item_id","successes","failures"\r\n"A","9","1"\r\n"B,2","2","8"\r\n')
    server = Server(tmp_path, {"MAB_DATA": str(data), "MAB_CACHE_DIR": str(tmp_path / "cache"), "WEB_CONCURRENCY": "2"})
    server.start()
    try:
        server.wait_ready()
        assert len(server.wait_for_workers(2)) == 2
        for _ in range(20):
            _, body = server.predict({"item_ids": ["A", "B,2", "C"]})
            assert body["missing"] == 1
        assert ready_items(server) == 2
    finally:
        server.stop()


def test_workers_serve_the_data_the_master_checked(tmp_path):
    data = tmp_path / "items.csv"
    data.write_bytes(b"item_id,successes,failures\nA,9,1\n")
    server = Server(tmp_path, {
        "MAB_DATA": str(data), "MAB_CACHE_DIR": str(tmp_path / "cache"), "WEB_CONCURRENCY": "2",
        "MAB_MAX_REQUESTS": "4", "MAB_MAX_REQUESTS_JITTER": "0",
    })
    server.start()
    try:
        server.wait_ready()
        first = server.wait_for_workers(2)
        # A file broken after the start never reaches a worker, not even one
        # that replaces a recycled worker.
        replace(data, b"item_id,successes,failures\rA,9,1\rB,2,8\r")
        for _ in range(12):
            _, body = server.predict({"item_ids": ["A", "B"]})
            assert body["missing"] == 1
        assert server.worker_pids() != first, "workers were recycled meanwhile"
        # A reload checks the file again: refused, and the new workers keep
        # the data checked before.
        before = server.worker_pids()
        os.kill(server.process.pid, signal.SIGHUP)
        wait_for_new_workers(server, before)
        server.wait_ready()
        assert "reload refused: " in server.output() and "line 1: a carriage return" in server.output()
        assert ready_items(server) == 1
        # Fixed: the next reload serves the new file.
        replace(data, b"item_id,successes,failures\nA,9,1\nB,2,8\n")
        before = server.worker_pids()
        os.kill(server.process.pid, signal.SIGHUP)
        wait_for_new_workers(server, before)
        server.wait_ready()
        for _ in range(8):
            _, body = server.predict({"item_ids": ["A", "B"]})
            assert body["missing"] == 0
    finally:
        server.stop()


def wait_for_new_workers(server, before, count=2, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = server.worker_pids()
        if len(now) == count and not now & before:
            return now
        time.sleep(0.1)
    raise AssertionError(f"workers not replaced:\n{server.output()}")


def test_bad_configuration_stops_the_start(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAB_")}
    server = Server(tmp_path, {"MAB_MAX_ITEMS": "zero"})
    server.env = {**env, "GUNICORN_CMD_ARGS": server.env["GUNICORN_CMD_ARGS"], "MAB_MAX_ITEMS": "zero"}
    server.start()
    assert server.process.wait(60) != 0
    server.log.close()
    assert "MAB_MAX_ITEMS must be an integer" in server.output()
    assert "Traceback" not in server.output()


# -- GET /metrics across workers (mab.metrics, prometheus-client's multiprocess mode) --


def scrape(server):
    """(the worker that answered, {(name, sorted labels): value})."""
    from prometheus_client.parser import text_string_to_metric_families

    status, headers, body = server.request("GET", "/metrics")
    assert status == 200, body
    values = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }
    return headers["X-Served-By"], values


def predictions_counted(values):
    return values.get(("mab_http_requests_total", (("model", "default"), ("route", "/predict"), ("status", "200"))), 0)


def in_flight(values):
    return values[("mab_http_requests_in_flight", ())]


def wait_for_scrape(server, condition, timeout=30):
    """The first scrape whose values meet `condition`, within `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        worker, values = scrape(server)
        if condition(values):
            return worker, values
        assert time.monotonic() < deadline, f"no scrape met the condition in {timeout}s: {values}"
        time.sleep(0.2)


def test_every_scrape_sees_the_requests_of_both_workers(tmp_path, data_csv):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"left by an earlier server")
    server = Server(tmp_path, {"MAB_DATA": str(data_csv), "MAB_CACHE_DIR": str(tmp_path / "cache"),
                               "WEB_CONCURRENCY": "2", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    server.start()
    try:
        server.wait_ready()
        assert len(server.wait_for_workers(2)) == 2
        assert not (metrics_dir / "counter_999999.db").exists(), "the master empties the directory it is given"
        ids = [f"item-{i:06d}" for i in range(0, 400)]
        answered_by, n = set(), 0
        deadline = time.monotonic() + 60
        while (len(answered_by) < 2 or n < 30) and time.monotonic() < deadline:
            worker, _ = server.predict({"item_ids": ids})
            answered_by.add(worker)
            n += 1
        assert len(answered_by) == 2, "both workers answered predictions"

        # Each worker flushes within a second; then every scrape, whichever
        # worker answers it, counts all n.
        wait_for_scrape(server, lambda values: predictions_counted(values) == n)
        scraped_by = set()
        deadline = time.monotonic() + 60
        while len(scraped_by) < 2 and time.monotonic() < deadline:
            worker, values = scrape(server)
            scraped_by.add(worker)
            assert predictions_counted(values) == n
            assert values[("mab_predict_items_sum", ())] == 400 * n
            assert values[("mab_snapshot_rows", (("store", "default"),))] == N_ITEMS
        assert scraped_by == answered_by, "both workers answered scrapes"
    finally:
        returncode = server.stop()
    assert returncode == 0, server.output()
    assert "Traceback" not in server.output()


def test_in_flight_gauge_follows_a_slow_request_and_forgets_killed_workers(tmp_path):
    """A Vertex stand-in that answers after 3 s holds a request in flight."""
    import threading

    from mab.testing.vertex_standin import toml_table
    from tests.vertex import StandInProcess

    data = tmp_path / "items.csv"
    data.write_text("item_id,successes,failures\n" + "".join(f"item-{i},{i},{i + 1}\n" for i in range(50)))
    standin = StandInProcess(tmp_path, data, "--latency-ms", "3000").start()
    config = tmp_path / "mab.toml"
    config.write_text(toml_table("stores.default", dict(standin.settings, deadline_ms=20000, attempt_timeout_ms=20000)))
    server = Server(tmp_path, {"MAB_CONFIG": str(config), "MAB_CACHE_DIR": str(tmp_path / "cache"), "WEB_CONCURRENCY": "2"})
    answers = []

    def slow_request():
        try:
            answers.append(server.request("POST", "/predict", orjson.dumps({"item_ids": ["item-1", "item-2"]}),
                                          {"Content-Type": "application/json"})[0])
        except OSError as exc:
            answers.append(exc)

    try:
        server.start()
        server.wait_ready()
        workers = server.wait_for_workers(2)
        assert len(workers) == 2
        assert in_flight(wait_for_scrape(server, lambda values: ("mab_http_requests_in_flight", ()) in values)[1]) == 0

        request = threading.Thread(target=slow_request)
        request.start()
        wait_for_scrape(server, lambda values: in_flight(values) == 1, timeout=20)
        request.join(30)
        assert answers == [200]
        wait_for_scrape(server, lambda values: in_flight(values) == 0)

        # A request in flight, then both workers killed: neither may stay counted.
        request = threading.Thread(target=slow_request)
        request.start()
        wait_for_scrape(server, lambda values: in_flight(values) == 1, timeout=20)
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        request.join(30)
        deadline = time.monotonic() + 30
        while not (server.worker_pids() and server.worker_pids().isdisjoint(workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        server.wait_ready()
        _, values = wait_for_scrape(server, lambda values: values.get(("mab_worker_restarts_total", ()), 0) >= 2)
        assert in_flight(values) == 0
        # And it stays 0 while the new workers flush (a dead worker's file would be summed in again).
        time.sleep(1.5)
        assert in_flight(scrape(server)[1]) == 0
    finally:
        standin.stop()
        server.stop()
    assert "Traceback" not in server.output()
    # No PROMETHEUS_MULTIPROC_DIR given: the master made one of its own, and removed it.
    (made,) = re.findall(r"metrics: multiprocess files in (\S+)", server.output())
    assert os.path.basename(made).startswith("mab-metrics-") and not os.path.exists(made)


def test_the_access_log_has_a_json_line_per_request_with_its_id(tmp_path, data_csv):
    server = Server(tmp_path, {"MAB_DATA": str(data_csv), "MAB_CACHE_DIR": str(tmp_path / "cache"),
                               "WEB_CONCURRENCY": "1", "MAB_ACCESS_LOG": "1"})
    server.start()
    try:
        server.wait_ready()
        ids = [f"item-{i:06d}" for i in range(7)]
        status, headers, _ = server.request("POST", "/predict", orjson.dumps({"item_ids": ids}),
                                            {"Content-Type": "application/json", "X-Request-ID": "trace-42"})
        assert status == 200 and headers["X-Request-ID"] == "trace-42"
        status, headers, _ = server.request("GET", "/health")
        generated = headers["X-Request-ID"]
        assert len(generated) == 32
        deadline = time.monotonic() + 10
        while generated not in server.output() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        assert server.stop() == 0
    lines = {}
    for line in server.output().splitlines():
        if line.startswith("{"):
            record = orjson.loads(line)
            lines[record["request_id"]] = record
    predict = lines["trace-42"]
    assert predict["method"] == "POST" and predict["path"] == "/predict" and predict["status"] == 200
    assert predict["model"] == "default" and predict["items"] == 7 and predict["duration_seconds"] > 0
    assert lines[generated]["path"] == "/health" and lines[generated]["status"] == 200


def test_metrics_can_be_turned_off(tmp_path, data_csv):
    server = Server(tmp_path, {"MAB_DATA": str(data_csv), "MAB_CACHE_DIR": str(tmp_path / "cache"),
                               "WEB_CONCURRENCY": "1", "MAB_METRICS": "0"})
    server.start()
    try:
        server.wait_ready()
        server.predict({"item_ids": ["item-000001"]})
        assert server.request("GET", "/metrics")[0] == 404
    finally:
        assert server.stop() == 0


def test_a_ready_worker_freezes_what_it_loaded(tmp_path):
    # post_worker_init moves the loaded worker's objects out of the garbage
    # collector's reach (gc.freeze); run in a fresh interpreter, as a worker.
    script = """
import gc, json, runpy
from importlib.util import find_spec

hooks = runpy.run_path(find_spec("mab.gunicorn_conf").origin)

class Log:
    def info(self, *args): pass
    def warning(self, *args): pass

class Worker:
    wsgi, timeout, age, log = object(), 30, 1, Log()

before = gc.get_freeze_count()
hooks["post_worker_init"](Worker())
print(json.dumps([before, gc.get_freeze_count()]))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path, env=dict(os.environ, MAB_CACHE_DIR=str(tmp_path)))
    assert run.returncode == 0, run.stderr
    before, after = orjson.loads(run.stdout.splitlines()[-1])
    assert before == 0 and after > 1000
