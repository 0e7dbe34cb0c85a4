"""mab.testing.keepalive_load tells a clean close from a lost request.

The TERM drill (tests/testing/test_rollout.py) passes only if this client
would have seen a loss, so it runs here against a small server that
misbehaves on purpose."""

import socket
import threading
import time

import pytest

from mab.testing.keepalive_load import KeepAliveLoad
from mab.testing.processes import free_port

BODY = b'{"item_ids": ["a"]}'
REQUEST = (b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
           % (len(BODY), BODY))
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
OK_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
OVERLOADED = (b'HTTP/1.1 503 Service Unavailable\r\nContent-Length: 38\r\n\r\n'
              b'{"error":{"code":"overloaded","m":""}}')


class Server:
    """Answers each connection's requests with `script(n)`: the bytes to
    send for its n-th request (from 0), or "drop" (close without an
    answer), "reset" (close with a reset)."""

    def __init__(self, script):
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock):
        buffer, n = b"", 0
        with sock:
            while True:
                while len(buffer) < len(REQUEST):
                    data = sock.recv(65536)
                    if not data:
                        return
                    buffer += data
                buffer = buffer[len(REQUEST):]
                action = self.script(n)
                n += 1
                if action == "drop":
                    return
                if action == "reset":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                    return
                sock.sendall(action)
                if action.endswith(b"{}") and b"Connection: close" in action:
                    sock.shutdown(socket.SHUT_WR)
                    while sock.recv(65536):
                        pass
                    return

    def close(self):
        self.stopped = True
        self.listener.close()


def run(port, seconds=0.5, connections=4):
    client = KeepAliveLoad("127.0.0.1", port, REQUEST, connections=connections, timeout=5).start()
    time.sleep(seconds)
    return client.stop()


@pytest.fixture
def serve():
    servers = []

    def start(script):
        servers.append(Server(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_keep_alive_answers_are_counted(serve):
    tally = run(serve(lambda n: OK).port)
    assert tally.statuses[200] == tally.answered > 20
    assert tally.connects == 4 and tally.lost == tally.unclean == tally.refused == 0


def test_a_close_after_connection_close_is_clean(serve):
    tally = run(serve(lambda n: OK if n < 3 else OK_CLOSE).port)
    assert tally.answers_with_close >= 4 and tally.closed_after_close >= 4
    assert tally.connects > 4, "it reconnects"
    assert tally.lost == tally.unclean == 0


@pytest.mark.parametrize("ending", ["drop", "reset"])
def test_a_request_without_an_answer_is_lost(serve, ending):
    tally = run(serve(lambda n: OK if n < 3 else ending).port)
    assert tally.lost >= 4 and tally.statuses[200] >= 12
    assert {kind for _, kind, _ in tally.events} == {"lost"}


def test_refused_connects_are_not_lost():
    tally = run(free_port(), seconds=0.3, connections=2)
    assert tally.refused >= 2 and tally.sent == tally.lost == tally.unclean == 0


def test_an_overloaded_503_is_counted_as_shed(serve):
    tally = run(serve(lambda n: OVERLOADED).port)
    assert tally.non_2xx == tally.statuses[503] == tally.shed > 0
