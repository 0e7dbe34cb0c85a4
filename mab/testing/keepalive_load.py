"""A keep-alive HTTP load client that accounts for every request and every close.

wrk counts errors, but cannot say whose they are: a connect refused by a
closed listening socket shows as a write error, exactly like a request
lost on a connection that was reset. To check what a stopping server
promises (``mab.testing.rollout``), this client keeps ``connections``
keep-alive connections busy, each sending the next request as soon as the
last answer is read, and sorts every end of a connection:

- ``closed_after_close``: the server closed after an answer that said
  ``Connection: close`` (clean; the client reconnects at once);
- ``refused``: a connect refused, so no request was sent (the client tries
  again after ``retry_seconds``);
- ``lost``: a request written, wholly or partly, and no complete answer
  before the connection ended (reset, or closed) -- a lost request;
- ``unclean``: the connection ended, by a reset or a close without
  ``Connection: close``, with no request out; a client that was about to
  reuse it would have lost that request.

Answers are counted by status. One thread, non-blocking sockets and a
selector; responses are parsed by httptools (llhttp). It sends one
prepared request (bytes) over and over.
"""

import errno
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field

import httptools


@dataclass
class Tally:
    """What happened to the requests and connections of a run; each event
    in ``events`` is (seconds since the start, kind, detail)."""

    sent: int = 0
    statuses: dict = field(default_factory=dict)
    shed: int = 0                   # of the non-2xx: 503 "overloaded" (mab's admission control)
    answers_with_close: int = 0
    connects: int = 0
    closed_after_close: int = 0
    refused: int = 0
    lost: int = 0
    unclean: int = 0
    events: list = field(default_factory=list)

    @property
    def answered(self):
        return sum(self.statuses.values())

    @property
    def non_2xx(self):
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300)


class _Response:
    """httptools callbacks for one response. The status and keep-alive are
    read when the message completes: llhttp resets them for the next one."""

    def __init__(self):
        self.parser = None
        self.complete = False
        self.status = None
        self.keep_alive = None
        self.body_start = b""            # enough of an error body for its code

    def on_body(self, body):
        if len(self.body_start) < 256:
            self.body_start += body[:256]

    def on_message_complete(self):
        self.complete = True
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()


class _Conn:
    __slots__ = ("sock", "state", "pending", "parser", "response", "retry_at")

    def __init__(self):
        self.sock = None
        self.state = "idle"         # idle -> connecting -> sending -> reading (-> draining) -> idle
        self.pending = b""
        self.parser = None
        self.response = None
        self.retry_at = 0.0


class KeepAliveLoad:
    """``connections`` keep-alive connections to ``(host, port)`` sending
    ``request`` (bytes, one complete HTTP/1.1 request) in a loop. ``start``
    runs it in a thread until ``stop``; ``tally`` holds the counts."""

    def __init__(self, host, port, request, *, connections=16, retry_seconds=0.01, timeout=30.0):
        self.address = (host, port)
        self.request = request
        self.connections = [_Conn() for _ in range(connections)]
        self.retry_seconds = retry_seconds
        self.timeout = timeout
        self.tally = Tally()
        self._stop = threading.Event()
        self._thread = None
        self._selector = selectors.DefaultSelector()
        self._started = None

    def start(self):
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="keepalive-load", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout=30.0):
        """Stop sending; wait up to ``timeout`` s for the answers still due; return the tally."""
        self._stop.set()
        self._thread.join(timeout)
        return self.tally

    def mark(self, what):
        """Note an outside event (a signal sent) among the events, for the timeline."""
        self._note("mark", what)

    def _note(self, kind, detail=""):
        self.tally.events.append((round(time.monotonic() - self._started, 4), kind, detail))

    # -- the loop ------------------------------------------------------------------

    def _run(self):
        stop_deadline = None
        try:
            while True:
                now = time.monotonic()
                if self._stop.is_set():
                    stop_deadline = stop_deadline or now + self.timeout
                    # No new request: wait for the answers that are due.
                    if not any(c.state in ("reading", "sending") for c in self.connections) or now > stop_deadline:
                        break
                else:
                    for conn in self.connections:
                        if conn.state == "idle" and now >= conn.retry_at:
                            self._connect(conn)
                for key, mask in self._selector.select(timeout=0.01):
                    self._ready(key.data, mask)
        finally:
            for conn in self.connections:
                if conn.state in ("reading", "sending"):
                    self.tally.lost += 1
                    self._note("lost", "no answer before the client stopped")
                self._close(conn)
            self._selector.close()

    def _connect(self, conn):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sock = sock
        conn.state = "connecting"
        err = sock.connect_ex(self.address)
        if err not in (0, errno.EINPROGRESS):
            self._connect_failed(conn, err)
            return
        self._selector.register(sock, selectors.EVENT_WRITE, conn)

    def _connect_failed(self, conn, err):
        self._close(conn)
        conn.retry_at = time.monotonic() + self.retry_seconds
        if err == errno.ECONNREFUSED:
            self.tally.refused += 1
            self._note("refused")
        else:
            # Not refused: the connect itself failed (a reset during the handshake).
            self.tally.unclean += 1
            self._note("unclean", f"connect failed: {errno.errorcode.get(err, err)}")

    def _ready(self, conn, mask):
        if conn.state == "connecting":
            err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._connect_failed(conn, err)
                return
            self.tally.connects += 1
            self._begin_request(conn)
        elif conn.state == "sending":
            self._send(conn)
        else:
            self._receive(conn)

    def _begin_request(self, conn):
        conn.state = "sending"
        conn.pending = self.request
        conn.response = _Response()
        conn.parser = conn.response.parser = httptools.HttpResponseParser(conn.response)
        self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
        self._send(conn)

    def _send(self, conn):
        try:
            sent = conn.sock.send(conn.pending)
        except BlockingIOError:
            return
        except OSError as exc:
            self._ended(conn, f"send: {exc.strerror}")
            return
        conn.pending = conn.pending[sent:]
        if not conn.pending:
            self.tally.sent += 1
            conn.state = "reading"
            self._selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def _receive(self, conn):
        try:
            data = conn.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError as exc:
            self._ended(conn, f"recv: {exc.strerror}")
            return
        if not data:
            self._ended(conn, "closed by the server")
            return
        if conn.state == "draining":
            self.tally.unclean += 1         # bytes after the last answer: nothing should come
            self._note("unclean", "data after an answer with Connection: close")
            self._reconnect(conn)
            return
        try:
            conn.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.tally.lost += 1
            self._note("lost", f"unparsable answer: {exc}")
            self._reconnect(conn)
            return
        if not conn.response.complete:
            return
        status = conn.response.status
        self.tally.statuses[status] = self.tally.statuses.get(status, 0) + 1
        if status == 503 and b'"overloaded"' in conn.response.body_start:
            self.tally.shed += 1
        if not conn.response.keep_alive:
            self.tally.answers_with_close += 1
            conn.state = "draining"         # wait for the server's close
        elif self._stop.is_set():
            self._close(conn)
        else:
            self._begin_request(conn)

    def _ended(self, conn, why):
        """The connection ended (EOF or an error) in its current state."""
        if conn.state in ("sending", "reading"):
            self.tally.lost += 1
            self._note("lost", why)
        elif conn.state == "draining" and why == "closed by the server":
            self.tally.closed_after_close += 1
        else:
            self.tally.unclean += 1
            self._note("unclean", f"{why} ({conn.state})")
        self._reconnect(conn)

    def _reconnect(self, conn):
        self._close(conn)
        conn.retry_at = 0.0

    def _close(self, conn):
        if conn.sock is not None:
            try:
                self._selector.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
            conn.sock.close()
            conn.sock = None
        conn.state = "idle"
