"""mab.http.admission: when a request may start, and when its bytes arrived."""

import socket
import sys
import time

import orjson
import pytest

from mab.http.admission import (
    CMSG_SIZE,
    SO_TIMESTAMPNS,
    Admission,
    _TIMESPEC,
    arrival,
    enable_receive_timestamps,
)
from mab.http.protocol import HttpConnection
from mab.http.request import Limits
from mab.http.wsgi import DEADLINE_KEY, RECEIVED_KEY, build_environ


def request_at(received, extra=b"", version=b"1.1"):
    conn = HttpConnection(Limits())
    conn.receive(b"GET / HTTP/%s\r\n%s\r\n" % (version, extra), received)
    return conn.next_request()


def test_a_request_may_wait_while_the_worker_keeps_up():
    admission = Admission(max_queue=0.040, interval=0.100, now=0.0)
    # The queue emptied 50 ms ago: a burst or a stall, not an overload.
    admission.note_empty(9.95)
    assert admission.admits(request_at(9.0), now=10.0)
    assert admission.shed == 0


def test_a_standing_queue_turns_old_requests_away():
    admission = Admission(max_queue=0.040, interval=0.100, now=0.0)
    admission.note_empty(9.85)                # 150 ms without an empty queue
    assert admission.overloaded(10.0)
    assert admission.admits(request_at(9.97), now=10.0), "30 ms is within the limit"
    assert not admission.admits(request_at(9.95), now=10.0), "50 ms is not"
    assert admission.shed == 1


def test_a_deadline_applies_at_any_load():
    admission = Admission(max_queue=0.040, interval=0.100, now=10.0)
    assert not admission.overloaded(10.0)
    late = request_at(9.99, b"x-envoy-expected-rq-timeout-ms: 5\r\n")
    assert late.deadline == pytest.approx(9.995)
    assert not admission.admits(late, now=10.0)
    assert admission.admits(request_at(9.99, b"x-envoy-expected-rq-timeout-ms: 50\r\n"), now=10.0)
    off = Admission(max_queue=0, interval=0.100, now=0.0)
    assert off.admits(request_at(0.0), now=100.0), "0: no queue limit"
    assert not off.admits(late, now=10.0), "but deadlines hold"


@pytest.mark.parametrize(("extra", "version", "keep", "connection"), [
    (b"", b"1.1", True, None),
    (b"Connection: close\r\n", b"1.1", False, "close"),
    (b"", b"1.0", False, "close"),
    (b"Connection: keep-alive\r\n", b"1.0", True, "keep-alive"),
])
def test_the_refusal(extra, version, keep, connection):
    admission = Admission(0.04, 0.1, 0.0)
    data, keep_alive = admission.refusal(request_at(0.0, extra, version), keep_alive=True)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    assert headers["Retry-After"] == "1" and headers.get("Connection") == connection
    assert int(headers["Content-Length"]) == len(body)
    assert orjson.loads(body)["error"]["code"] == "overloaded"
    assert keep_alive is keep
    assert admission.refusal(request_at(0.0, extra, version), keep_alive=False)[1] is False, "a stopping worker closes"


def test_settings_from_the_environment():
    admission = Admission.from_environ(0.0, {})
    assert (admission.max_queue, admission.interval) == (0.040, 0.100)
    admission = Admission.from_environ(0.0, {"MAB_MAX_QUEUE_MS": "0", "MAB_OVERLOAD_INTERVAL_MS": "250"})
    assert (admission.max_queue, admission.interval) == (0.0, 0.250)
    with pytest.raises(ValueError, match="MAB_MAX_QUEUE_MS"):
        Admission.from_environ(0.0, {"MAB_MAX_QUEUE_MS": "-1"})


def stamp(real):
    seconds = int(real)
    return [(socket.SOL_SOCKET, SO_TIMESTAMPNS, _TIMESPEC.pack(seconds, int((real - seconds) * 1e9)))]


def test_arrival_from_the_kernel_stamp():
    # real time = monotonic time + 1000
    assert arrival(stamp(1009.75), now=10.0, real_minus_monotonic=1000.0) == pytest.approx(9.75)
    assert arrival(stamp(1010.5), now=10.0, real_minus_monotonic=1000.0) == 10.0, "never later than now"
    assert arrival(stamp(900.0), now=10.0, real_minus_monotonic=1000.0) == 10.0, "a clock step, not a wait"
    assert arrival([], now=10.0, real_minus_monotonic=1000.0) == 10.0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_TIMESTAMPNS is Linux's")
def _wait_until_stamping(listener, timeout=5.0):
    """Linux turns receive stamping on lazily, from a work queue, when the
    first socket asks for it (net/core/dev.c, netstamp_work): until then a
    packet is stamped when it is read. A server enables it at start, long
    before its first request; a test that sends at once must wait for it."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.create_connection(listener.getsockname()) as client:
            client.sendall(b"x")
            time.sleep(0.02)
            server, _ = listener.accept()
            with server:
                now = time.monotonic()
                _, ancillary, _, _ = server.recvmsg(16, CMSG_SIZE)
                if arrival(ancillary, now, time.time() - now) < now:
                    return
        assert time.monotonic() < deadline, "the kernel never stamped a received packet"


def test_the_kernel_stamps_bytes_waiting_in_the_backlog():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        assert enable_receive_timestamps(listener)
        _wait_until_stamping(listener)
        with socket.create_connection(listener.getsockname()) as client:
            client.sendall(b"GET / HTTP/1.1\r\n\r\n")
            time.sleep(0.3)                   # not accepted yet: in the backlog
            server, _ = listener.accept()
            with server:
                now = time.monotonic()
                data, ancillary, _, _ = server.recvmsg(4096, CMSG_SIZE)
                arrived = arrival(ancillary, now, time.time() - now)
    assert data.startswith(b"GET")
    assert 0.25 < now - arrived < 5, "the wait in the backlog is seen"


def test_the_environ_carries_arrival_and_deadline():
    request = request_at(7.5, b"x-envoy-expected-rq-timeout-ms: 250\r\n")
    environ = build_environ(request, ("h", "80"), ("1.2.3.4", 5), multithread=False, multiprocess=False)
    assert environ[RECEIVED_KEY] == 7.5 and environ[DEADLINE_KEY] == pytest.approx(7.75)
    assert environ["HTTP_X_ENVOY_EXPECTED_RQ_TIMEOUT_MS"] == "250"
    environ = build_environ(request_at(7.5), ("h", "80"), ("1.2.3.4", 5), multithread=False, multiprocess=False)
    assert DEADLINE_KEY not in environ
