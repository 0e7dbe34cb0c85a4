"""mab.worker.HttptoolsWorker (mab.http.worker) under a real gunicorn master, over raw sockets.

The HTTP conformance cases, side by side with gunicorn's sync worker, are in
test_conformance.py."""

import os
import signal
import socket
import threading
import time

import orjson
import pytest

from tests.http.rawclient import Client, error_code
from tests.serving import Server

WORKER = "mab.worker.HttptoolsWorker"
BODY = orjson.dumps({"item_ids": ["item-000001", "item-000002", "nope"], "seed": 1})


def start(tmp_path, data_csv, app="app:app", **env):
    settings = {
        "MAB_DATA": str(data_csv),
        "MAB_CACHE_DIR": str(tmp_path / "cache"),
        "MAB_WORKER_CLASS": WORKER,
        "WEB_CONCURRENCY": "1",
    }
    settings.update(env)
    server = Server(tmp_path, settings, app=app).start()
    server.wait_ready()
    return server


@pytest.fixture
def server(tmp_path, data_csv):
    server = start(tmp_path, data_csv)
    yield server
    server.stop()


def post(body=BODY, *, path="/predict", extra=b"", close=False):
    return (
        b"POST %s HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s%s\r\n%s"
        % (path.encode(), len(body), extra, b"Connection: close\r\n" if close else b"", body)
    )


# -- keep-alive, pipelining, framing ------------------------------------------------


def test_keep_alive_serves_many_requests_on_one_connection(server):
    client = Client(server.port)
    seen = set()
    for _ in range(20):
        client.send(post())
        status, headers, body = client.response()
        assert status == 200 and "connection" not in headers
        seen.add(orjson.loads(body)["scores"][0])
    assert len(seen) == 1, "seeded: the same answer every time"
    client.send(post(close=True))
    status, headers, _ = client.response()
    assert status == 200 and headers["connection"] == "close"
    assert client.closed()


def test_pipelined_requests_are_answered_in_order(server):
    client = Client(server.port)
    bodies = [orjson.dumps({"item_ids": [f"item-{i:06d}"], "seed": i}) for i in range(10)]
    client.send(b"".join(post(b) for b in bodies))
    for i in range(10):
        status, _, body = client.response()
        assert status == 200 and orjson.loads(body)["item_ids"] == [f"item-{i:06d}"]


def test_requests_split_across_packets(server):
    client = Client(server.port)
    data = post()
    for i in range(0, len(data), 7):
        client.send(data[i:i + 7])
        time.sleep(0.001)
    assert client.response()[0] == 200


def test_chunked_request_body(server):
    client = Client(server.port)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(BODY[i:i + 10]), BODY[i:i + 10]) for i in range(0, len(BODY), 10))
    client.send(
        b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    )
    status, _, body = client.response()
    assert status == 200 and len(orjson.loads(body)["item_ids"]) == 3


def test_expect_100_continue(server):
    client = Client(server.port)
    head = post().split(b"\r\n\r\n", 1)[0] + b"\r\nExpect: 100-continue\r\n\r\n"
    client.send(head)
    status, _, _ = client.response()
    assert status == 100
    client.send(BODY)
    assert client.response()[0] == 200


def test_http_1_0_closes_unless_asked_to_keep_alive(server):
    client = Client(server.port)
    client.send(b"GET /health HTTP/1.0\r\n\r\n")
    status, headers, _ = client.response()
    assert status == 200 and headers["connection"] == "close"
    assert client.closed()
    client = Client(server.port)
    client.send(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    status, headers, _ = client.response()
    assert status == 200 and headers["connection"] == "keep-alive"
    client.send(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert client.response()[0] == 200


def test_application_errors_keep_the_connection(server):
    client = Client(server.port)
    client.send(post(b"{not json"))
    status, _, body = client.response()
    assert status == 400 and error_code(body) == "malformed_json"
    client.send(post())
    assert client.response()[0] == 200


def test_response_headers(server):
    client = Client(server.port)
    client.send(post())
    status, headers, body = client.response()
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    assert headers["date"].endswith("GMT")
    assert headers["x-served-by"].endswith(f"/{next(iter(server.worker_pids()))}")


# -- limits and hostile input ---------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414, "uri_too_long"),
        (b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, "header_too_large"),
        (b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(120)) + b"\r\n", 431,
         "too_many_headers"),
        (b"POST /predict HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400,
         "bad_request"),
        (b"POST /predict HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400, "bad_request"),
        (b"POST /predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "bad_request"),
        (b"GARBAGE\r\n\r\n", 400, "bad_request"),
        (b"POST /predict HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 2\r\n\r\n{}", 400,
         "upgrade_not_supported"),
        (b"POST /predict HTTP/1.1\r\nExpect: something-else\r\nContent-Length: 1\r\n\r\n", 417, "expectation_failed"),
    ],
)
def test_refused_requests_close_the_connection(server, raw, status, code):
    client = Client(server.port)
    client.send(raw)
    got, headers, body = client.response()
    assert (got, error_code(body)) == (status, code)
    assert headers["connection"] == "close"
    assert client.closed()


def test_body_over_the_limit_is_refused_before_it_is_read(tmp_path, data_csv):
    server = start(tmp_path, data_csv, MAB_MAX_BODY_BYTES="1000")
    try:
        client = Client(server.port)
        # Only the head is sent: the answer must not wait for the 2,000 bytes.
        client.send(b"POST /predict HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2000\r\n\r\n")
        status, _, body = client.response()
        assert status == 413 and error_code(body) == "body_too_large"
        chunked = Client(server.port)
        chunked.send(b"POST /predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n" + b"x" * 0x800 + b"\r\n")
        status, _, body = chunked.response()
        assert status == 413 and error_code(body) == "body_too_large"
    finally:
        server.stop()


def test_slow_and_idle_connections_are_closed(tmp_path, data_csv):
    server = start(tmp_path, data_csv, MAB_TIMEOUT="2", MAB_KEEPALIVE="1")
    try:
        slow = Client(server.port)
        slow.send(b"POST /predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")   # and then nothing
        idle = Client(server.port)
        idle.send(b"GET /health HTTP/1.1\r\n\r\n")
        assert idle.response()[0] == 200
        started = time.monotonic()
        assert idle.closed(timeout=5), "idle keep-alive connection closed after keepalive seconds"
        assert time.monotonic() - started < 4
        status, _, body = slow.response()
        assert status == 408 and error_code(body) == "request_timeout"
    finally:
        server.stop()


# -- gunicorn's supervision -----------------------------------------------------------


def test_graceful_stop_finishes_requests_in_flight(tmp_path, data_csv):
    server = start(tmp_path, data_csv, MAB_GRACEFUL_TIMEOUT="10")
    client = Client(server.port)
    head, body = post().split(b"\r\n\r\n", 1)
    client.send(head + b"\r\n\r\n" + body[:5])       # a request half sent
    time.sleep(0.2)
    os.kill(server.process.pid, signal.SIGTERM)
    time.sleep(0.5)
    client.send(body[5:])
    status, headers, _ = client.response()
    assert status == 200 and headers["connection"] == "close"
    assert server.process.wait(15) == 0
    server.log.close()


def wait_for(condition, timeout=30, what="the condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        time.sleep(0.05)


def refused(port):
    """Whether a connect to `port` is refused (nothing listens there any more)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def clean_eof(client):
    """The server closed the connection with nothing more to say: a FIN, not a reset."""
    client.sock.settimeout(10)
    return client.buffer == b"" and client.sock.recv(65536) == b""


def test_a_stopping_worker_answers_an_idle_connection_instead_of_closing_it(tmp_path, data_csv):
    # HTTP/1.1 cannot tell a client not to reuse an idle connection, so a
    # drain that closed it would race the client's next request (a reset,
    # or a close before the answer). It stays open; the next request is
    # answered with Connection: close, and then the connection closes.
    server = start(tmp_path, data_csv, MAB_GRACEFUL_TIMEOUT="20")
    client = Client(server.port)
    client.send(post())
    assert client.response()[0] == 200            # kept alive, and now idle
    os.kill(server.process.pid, signal.SIGTERM)
    # Every copy of the listening socket is closed once the worker drains.
    wait_for(lambda: refused(server.port), what="refused connect")
    time.sleep(1.0)                               # idle, during the drain
    assert server.process.poll() is None
    client.send(post())
    status, headers, _ = client.response()
    assert status == 200 and headers["connection"] == "close"
    assert clean_eof(client)
    assert server.process.wait(15) == 0
    server.log.close()


def test_connections_waiting_to_be_accepted_are_served_when_the_server_stops(tmp_path, data_csv):
    # The kernel completes a handshake before any process accepts the
    # connection, and the client sends its request at once. A worker that
    # stopped accepting and exited would leave such connections to be reset
    # with their requests; it accepts them first, then closes its copy of the
    # listening socket, after which connects are refused (nothing is sent).
    server = start(tmp_path, data_csv, MAB_GRACEFUL_TIMEOUT="20")
    (worker,) = server.wait_for_workers(1)
    os.kill(worker, signal.SIGSTOP)               # accepts nothing meanwhile
    try:
        waiting = [Client(server.port) for _ in range(3)]
        for client in waiting:
            client.send(post())
        os.kill(server.process.pid, signal.SIGTERM)
        wait_for(lambda: "Handling signal: term" in server.output(), what="TERM in the log")
    finally:
        os.kill(worker, signal.SIGCONT)
    for client in waiting:
        status, headers, _ = client.response()
        assert status == 200
        if headers.get("connection") != "close":
            # Answered before the worker had its TERM (the master logs the
            # signal before it sends TERM on to the workers): the connection
            # was kept, and once the worker drains, the next request on it is
            # answered with Connection: close.
            wait_for(lambda: "draining" in server.output(), what="the drain in the log")
            client.send(post())
            status, headers, _ = client.response()
            assert status == 200 and headers["connection"] == "close"
        assert clean_eof(client)
    assert server.process.wait(15) == 0
    server.log.close()
    assert refused(server.port)


def test_reload_replaces_workers(tmp_path, data_csv):
    server = start(tmp_path, data_csv, WEB_CONCURRENCY="2")
    try:
        before = server.wait_for_workers(2)
        os.kill(server.process.pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = server.worker_pids()
            if len(now) == 2 and not now & before:
                break
            time.sleep(0.1)
        assert len(now) == 2 and not now & before
        server.wait_ready()
        assert server.predict({"item_ids": ["item-000001"]})[1]["item_ids"] == ["item-000001"]
    finally:
        server.stop()


def test_max_requests_recycles_the_worker(tmp_path, data_csv):
    server = start(tmp_path, data_csv, MAB_MAX_REQUESTS="5", MAB_MAX_REQUESTS_JITTER="0")
    try:
        first = server.worker_pids()
        workers = set()
        for _ in range(12):
            worker, _ = server.predict({"item_ids": ["item-000001"]})
            workers.add(worker)
            time.sleep(0.05)
        assert len(workers) >= 2, "a new worker took over after 5 requests"
        assert server.worker_pids() != first
        assert "Autorestarting worker" in server.output()
    finally:
        server.stop()


def test_access_log_when_asked(tmp_path, data_csv):
    server = start(tmp_path, data_csv, MAB_ACCESS_LOG="1")
    try:
        server.predict({"item_ids": ["item-000001"]})
    finally:
        server.stop()
    # One JSON object a line (mab.access_log.JsonAccessLogger).
    records = [orjson.loads(line) for line in server.output().splitlines() if line.startswith('{"time"')]
    assert ("POST", "/predict", 200) in [(r["method"], r["path"], r["status"]) for r in records]


def test_threads_serve_concurrent_connections(tmp_path, data_csv):
    server = start(tmp_path, data_csv, MAB_WORKER_THREADS="4")
    try:
        errors = []

        def hammer():
            try:
                client = Client(server.port)
                for i in range(30):
                    client.send(post(orjson.dumps({"item_ids": [f"item-{i:06d}"], "seed": i})))
                    status, _, body = client.response()
                    assert status == 200 and orjson.loads(body)["item_ids"] == [f"item-{i:06d}"]
            except Exception as exc:      # collected for the main thread
                errors.append(exc)

        threads = [threading.Thread(target=hammer) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
    finally:
        server.stop()


def test_recycling_under_keep_alive_load_loses_no_request(tmp_path, data_csv):
    # A worker that reaches max_requests answers with Connection: close and
    # closes idle connections only after they stay idle: clients that keep
    # sending never meet a reset.
    server = start(tmp_path, data_csv, MAB_MAX_REQUESTS="40", MAB_MAX_REQUESTS_JITTER="0")
    try:
        failures, answered, workers = [], [0], set()

        def client_loop():
            client = Client(server.port)
            for _ in range(60):
                try:
                    client.send(post())
                    status, headers, _ = client.response()
                except (ConnectionError, OSError) as exc:
                    failures.append(repr(exc))
                    client = Client(server.port)
                    continue
                assert status == 200
                answered[0] += 1
                workers.add(headers["x-served-by"])
                if headers.get("connection") == "close":
                    client.close()
                    client = Client(server.port)

        threads = [threading.Thread(target=client_loop) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not failures, failures
        assert answered[0] == 240 and len(workers) >= 3, "the worker was recycled several times"
    finally:
        server.stop()


def test_a_full_worker_makes_room_for_a_new_client(tmp_path, data_csv):
    """At worker_connections, a new client still gets in: the connection
    dawdling longest over its request is told 503 and closed."""
    server = Server(tmp_path, {
        "MAB_DATA": str(data_csv), "MAB_CACHE_DIR": str(tmp_path / "cache"), "MAB_WORKER_CLASS": WORKER,
        "WEB_CONCURRENCY": "1",
    })
    server.env["GUNICORN_CMD_ARGS"] += " --worker-connections 4"
    server.start()
    try:
        server.wait_ready()
        slow = []
        for _ in range(4):
            client = Client(server.port)
            client.send(b"GET /health HTTP/1.1\r\nHost: t\r\nX-A: ")     # and no more
            slow.append(client)
            time.sleep(0.05)
        fresh = Client(server.port)
        fresh.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        assert fresh.response()[0] == 200
        # An idle keep-alive connection would hold the stop below for
        # graceful_timeout (a stopping worker does not close one sooner).
        fresh.close()
        status, headers, body = slow[0].response()
        assert (status, error_code(body), headers["retry-after"]) == (503, "overloaded", "1")
        assert slow[0].closed()
        for client in slow[1:]:
            assert not client.ready(0.2), "only the oldest made room"
            client.close()
    finally:
        server.stop()



# -- MAB_INLINE_FIRST -----------------------------------------------------------------


@pytest.mark.parametrize("inline_first", ["1", "0"])
def test_inline_first_runs_in_the_loop_what_does_not_wait(tmp_path, data_csv, inline_first):
    # With a pool and MAB_INLINE_FIRST=1, the app's inline_first_paths run in
    # the loop thread first; one that raises RunOnThread runs again, once, on
    # the pool; pipelined, everything is still answered in order.
    server = start(tmp_path, data_csv, MAB_WORKER_THREADS="4", MAB_INLINE_FIRST=inline_first,
                   app="tests.http.thread_app:app")
    try:
        client = Client(server.port)
        paths = ["/inline", "/pool", "/waits", "/inline", "/waits", "/pool"]
        client.send(b"".join(
            b"GET %s HTTP/1.1\r\nHost: test\r\nX-Key: %d\r\n\r\n" % (path.encode(), i) for i, path in enumerate(paths)
        ))
        answers = []
        for _ in paths:
            status, _, body = client.response()
            assert status == 200
            answers.append(orjson.loads(body))
        assert [a["path"] for a in answers] == paths
        for answer in answers:
            tried_inline = inline_first == "1" and answer["path"] != "/pool"
            in_loop = tried_inline and answer["path"] == "/inline"
            assert answer["thread"].startswith("mab-request") != in_loop, answer
            assert answer["inline"] == in_loop, answer
            assert answer["calls"] == (2 if tried_inline and answer["path"] == "/waits" else 1), answer
    finally:
        server.stop()


def test_run_on_thread_outside_the_loop_is_a_500(tmp_path, data_csv):
    server = start(tmp_path, data_csv, MAB_WORKER_THREADS="4", MAB_INLINE_FIRST="1", app="tests.http.thread_app:app")
    try:
        client = Client(server.port)
        client.send(b"GET /rogue HTTP/1.1\r\nHost: test\r\n\r\n")
        status, headers, _ = client.response()
        assert status == 500 and headers.get("connection") == "close"
        assert "raised RunOnThread for /rogue outside the loop" in server.output()
    finally:
        server.stop()
