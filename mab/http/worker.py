"""A gunicorn worker that parses HTTP with httptools and keeps connections alive.

    gunicorn -k mab.worker.HttptoolsWorker app:app

gunicorn's own workers parse HTTP in pure Python; for this service that cost
more CPU per request than the application itself (docs/benchmarks.md). This
worker keeps everything gunicorn does around a worker (forking, supervision
through the heartbeat file, graceful reload and shutdown, max_requests,
timeouts, the server hooks, the access log) and replaces the request loop:
one epoll loop per worker over its listening sockets and keep-alive
connections. The HTTP/1.1 of each connection (parsing, framing, limits,
response order) is ``mab.http.protocol``; this module does the I/O, the
timers and gunicorn's part.

Requests run inline in the loop thread by default (``threads = 1``): the
application is CPU-bound on the embedded store. With ``threads > 1`` (for a
remote feature store, where a request waits on the network) complete
requests run on a pool of that many threads while the loop keeps reading
and writing; a connection's requests still run one at a time, in order.
With ``MAB_INLINE_FIRST=1``, a request to a path the application lists in
``inline_first_paths`` first runs in the loop, told not to wait
(``INLINE_KEY`` in its environ); it goes to a thread only if the
application raises ``RunOnThread`` (a remote store's cache lacks some of its
items, say). Requests are then answered in arrival order rather than as
threads take turns with the interpreter's lock, which shortens the latency's
tail while the cache serves nearly everything; but the loop then shares the
lock with the cache's refreshes, and sending each answer at once costs more
CPU than sending them in batches. Measured side by side (docs/benchmarks.md,
"Third pass"): p99 1.15x against 1.4x the embedded store's, CPU 1.07x
against 0.95x, and with refreshes running all the time worse on both; so it
is off by default.

Overload (``mab.http.admission``): once the worker's queue has not emptied
for ``MAB_OVERLOAD_INTERVAL_MS`` (100 ms), a request that waited more than
``MAB_MAX_QUEUE_MS`` (40 ms) to start, counted from when its bytes reached
the machine, is answered 503 with Retry-After at once, without the
application; so is a request past its client's deadline
(``x-envoy-expected-rq-timeout-ms``), which the application finds in
``environ["mab.deadline"]``.

Timeouts: a request head must arrive within ``MAB_HEAD_TIMEOUT`` (10 s) of
its first byte and the whole request within gunicorn's ``timeout`` (408);
a response must drain within ``timeout``; an idle keep-alive connection is
closed after ``keepalive``. At ``worker_connections``, the connection idle
(or dawdling over a request) the longest makes room for a new client, so
slow clients cannot lock out new ones. A connection closed after a
response first shuts its sending side and discards what the client still
sends, for at most ``LINGER_SECONDS`` and ``LINGER_BYTES`` (RFC 9112
section 9.6): closing with unread input would reset the connection and
could destroy the response in flight. TLS is not supported: terminate it in
front, or use a stock gunicorn worker.

Stopping (TERM from the master: the server stops, a reload replaces the
worker, or ``max_requests`` recycles it; ``_shutdown_step``): on a reload
the worker first serves on until its replacements are ready
(``mab.handover``). Then it drains: it accepts the connections already
queued on the listening sockets and closes its copies of them, so that
once every process has, new connections are refused rather than queued
and reset; it answers every request with ``Connection: close``; and it
closes a connection after that answer (lingering as above), when the
client closes it, when it has idled ``keepalive`` seconds, or at the
latest ``graceful_timeout`` after the drain began. An idle connection is
not closed sooner: HTTP/1.1 cannot tell a client not to reuse it, so the
close would race the client's next request.
"""

import collections
import errno
import os
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from gunicorn.workers import base

from mab import handover
from mab.http.admission import CMSG_SIZE, Admission, arrival, enable_receive_timestamps
from mab.http.protocol import HttpConnection
from mab.http.request import Limits, ProtocolError
from mab.http.response import error_response
from mab.http.wsgi import INLINE_KEY, build_environ, run_application

READ_SIZE = 256 * 1024
# How often an old worker waiting for its replacements (mab.handover) looks
# whether they are ready.
HANDOVER_POLL_SECONDS = 0.05
# How long, and how much, a closing connection reads and discards of what
# the client still sends (as gunicorn's util.close_graceful).
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024
DEFAULT_HEAD_TIMEOUT = 10.0
# How often a busy loop checks whether any work is waiting (admission control
# needs to know when its queue was last empty).
EMPTY_PROBE_SECONDS = 0.01

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE


def _env_seconds(name, default):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    seconds = float(value)
    if not seconds > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return seconds


class Connection:
    """A client socket, its HTTP state (``http``) and its timers."""

    __slots__ = ("sock", "addr", "server", "http", "events", "last_activity", "write_started",
                 "linger_until", "lingered", "eof")

    def __init__(self, sock, addr, server, limits, now):
        self.sock = sock
        self.addr = addr
        self.server = server                # (SERVER_NAME, SERVER_PORT)
        self.http = HttpConnection(limits)
        self.events = 0                     # what the selector watches for
        self.last_activity = now
        self.write_started = None
        self.linger_until = None            # set once the sending side is shut
        self.lingered = 0                   # bytes discarded since
        self.eof = False                    # the client has shut its sending side


class HttptoolsWorker(base.Worker):
    """gunicorn worker: an epoll loop, httptools parsing, keep-alive."""

    def init_process(self):
        if self.cfg.is_ssl:
            # The listeners would hand us TLS bytes we cannot read.
            raise RuntimeError("mab.worker.HttptoolsWorker does not do TLS; terminate TLS in front of it")
        self.keepalive = self.cfg.keepalive
        self.max_connections = max(1, self.cfg.worker_connections)
        self.head_timeout = min(_env_seconds("MAB_HEAD_TIMEOUT", DEFAULT_HEAD_TIMEOUT), self.cfg.timeout or 1e9)
        self.connections = {}
        self.selector = selectors.DefaultSelector()
        self.finished = collections.deque()      # (connection, bytes, keep_alive) from pool threads
        self.pool = None
        self.inline_paths = frozenset()          # with a pool: paths tried in the loop first
        self.now = time.monotonic()
        self.admission = Admission.from_environ(self.now)
        self.pool_waiting = 0                    # requests submitted to the pool, not yet started
        self.pool_lock = threading.Lock()
        self.real_minus_monotonic = time.time() - self.now
        # None while serving, then "handover" and "drain" (_shutdown_step).
        self.stopping = None
        super().init_process()   # loads the app, then calls run()

    def load_wsgi(self):
        super().load_wsgi()
        # The body limit follows the application's, so both refuse alike.
        self.limits = Limits.from_gunicorn(self.cfg, getattr(self.wsgi, "max_body_bytes", None))
        # The app's metrics (mab.metrics) export the requests turned away here.
        recorder = getattr(self.wsgi, "metrics", None)
        if recorder is not None:
            recorder.watch_shed(lambda: self.admission.shed_total)
        # gunicorn >= 24 knows whether any access log is configured; older ones log always.
        self.access_logging = getattr(self.log, "access_log_enabled", True)
        # Read once: every cfg attribute is a lookup through gunicorn's Config.
        self.pre_request = self.cfg.pre_request
        self.post_request = self.cfg.post_request
        self.multiprocess = self.cfg.workers > 1
        if os.environ.get("MAB_INLINE_FIRST", "0") == "1":
            self.inline_paths = frozenset(getattr(self.wsgi, "inline_first_paths", ()))

    # -- the loop --------------------------------------------------------------------

    def run(self):
        if self.cfg.threads > 1:
            self.pool = ThreadPoolExecutor(self.cfg.threads, thread_name_prefix="mab-request")
        for listener in self.sockets:
            listener.setblocking(False)
            enable_receive_timestamps(listener)
            self.selector.register(listener, READ, self.accept)
        # gunicorn's own pipe: signal handlers write to it (set_wakeup_fd), and
        # so do pool threads when a response is ready.
        self.selector.register(self.PIPE[0], READ, self.wake)
        last_notify = last_sweep = 0.0
        last_report = time.monotonic()
        # What waited while the app loaded is a backlog to drain, not yet an overload.
        self.admission.note_empty(last_report)
        try:
            while True:
                now = time.monotonic()
                if now - last_notify >= 1.0:
                    self.notify()
                    last_notify = now
                if not self.alive and not self._shutdown_step(now):
                    break
                events = None
                if ((self.pool is None or self.inline_paths) and not self.pool_waiting
                        and now - self.admission.last_empty > EMPTY_PROBE_SECONDS):
                    # Is anything waiting? If not, the queue is empty (and the
                    # poll below waits); if so, these are the events to serve.
                    events = self.selector.select(timeout=0)
                    if not events:
                        self.admission.note_empty(time.monotonic())
                if not events:
                    events = self.selector.select(timeout=1.0 if self.alive else HANDOVER_POLL_SECONDS)
                # Requests read in this pass without a kernel stamp count
                # their wait from here.
                self.now = time.monotonic()
                self.real_minus_monotonic = time.time() - self.now
                for key, mask in events:
                    key.data(key.fileobj, mask)
                if self.now - last_sweep >= 1.0:
                    self._sweep(time.monotonic())
                    last_sweep = self.now
                    if self.admission.shed and self.now - last_report >= 10.0:
                        self.log.warning("overloaded: %d requests answered 503 in the last %.0fs (they waited too "
                                         "long to start, or past their deadline)", self.admission.shed,
                                         self.now - last_report)
                        self.admission.shed = 0
                        last_report = self.now
                if self.ppid != os.getppid():
                    self.log.info("Parent changed, shutting down: %s", self)
                    break
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=False, cancel_futures=True)
            for conn in list(self.connections.values()):
                self._close(conn)

    # -- stopping ---------------------------------------------------------------------

    def _shutdown_step(self, now):
        """Once gunicorn has asked the worker to stop (``alive`` False): one
        step of the stop, each pass of the loop. False when the loop ends.

        1. Handover: while a reload is replacing this worker and its
           replacements are not ready (``mab.handover``), serve as before.
        2. Drain: take the connections already queued on the listening
           sockets, close this worker's copies of them (once every process
           has, the kernel refuses new connections: no request is sent on
           them), and from then on answer every request with ``Connection:
           close``, so each client leaves after an answer. A connection is
           closed after such an answer, when its client closes it, when it
           has been idle for ``keepalive`` seconds (the rule at all times),
           or at the end: ``graceful_timeout`` after the drain began. An
           idle connection is not closed sooner. HTTP/1.1 has no way to
           tell a client not to reuse it (HTTP/2's GOAWAY), so closing it
           would race the client's next request, which would meet a reset
           or a close (wrk counts either as an error; docs/deploy.md).
        3. The loop ends when no connection is left, or at that deadline.
        """
        if self.stopping is None:
            self.stopping = "handover"
            self.next_handover_check = 0.0
        if self.stopping == "handover":
            if now < self.next_handover_check:
                return True
            if handover.replacements_pending(self.age):
                if not self.next_handover_check:
                    self.log.info("serving until the new workers are ready")
                self.next_handover_check = now + HANDOVER_POLL_SECONDS
                return True
            self.stopping = "drain"
            self.shutdown_deadline = now + self.cfg.graceful_timeout
            self._stop_accepting()
            self.log.info("draining: %d connections; each closes after its next answer", len(self.connections))
        return bool(self.connections) and now <= self.shutdown_deadline

    def _stop_accepting(self):
        """Take every connection already waiting on the listening sockets,
        then close this process's copies of them."""
        for listener in self.sockets:
            try:
                self.selector.unregister(listener)
            except (KeyError, ValueError):
                pass
            while True:
                try:
                    sock, addr = listener.accept()
                except OSError:         # BlockingIOError: the queue is empty
                    break
                self._adopt(sock, addr)
            listener.close()

    def _sweep(self, now):
        """Close connections that idled, dawdled or stopped reading too long."""
        timeout = self.cfg.timeout
        for conn in list(self.connections.values()):
            http = conn.http
            if http.running:
                continue
            if conn.linger_until is not None:
                if now > conn.linger_until:
                    self._close(conn)
            elif http.out and conn.write_started is not None and now - conn.write_started > timeout:
                self._close(conn)
            elif http.message_started is not None and not http.closing:
                waited = now - http.message_started
                if not http.head_complete and waited > self.head_timeout:
                    self._refuse(conn, ProtocolError(408, "request_timeout",
                                                     f"no complete request head within {self.head_timeout:g}s"))
                elif waited > timeout:
                    self._refuse(conn, ProtocolError(408, "request_timeout",
                                                     f"no complete request within {timeout}s"))
            elif http.idle and now - conn.last_activity > self.keepalive:
                self._close(conn)

    # -- connections ------------------------------------------------------------------

    def accept(self, listener, mask):
        # One connection per wake-up: the listener is shared by all workers,
        # and a worker that accepted every waiting connection at once would
        # keep long-lived keep-alive connections (a load balancer's) to itself
        # while its siblings idle. Level-triggered epoll calls again if more wait.
        if len(self.connections) >= self.max_connections and not self._make_room():
            return
        try:
            sock, addr = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno in (errno.ECONNABORTED, errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self.log.warning("accept failed: %s", exc)
                return
            raise
        self._adopt(sock, addr)

    def _adopt(self, sock, addr):
        """Serve an accepted connection from now on."""
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server = sock.getsockname()
        server = (server[0], str(server[1])) if isinstance(server, tuple) else (str(server), "")
        conn = Connection(sock, addr, server, self.limits, time.monotonic())
        self.connections[sock.fileno()] = conn
        self.selector.register(sock, READ, self.readable)
        conn.events = READ

    def _make_room(self):
        """At worker_connections: close the connection that has waited
        longest without a request to run (lingering, idle, or sending a
        request slowly), so that a new client gets in. False if every
        connection has a request running or an answer to send."""
        now = time.monotonic()
        victim, longest = None, -1.0
        for conn in self.connections.values():
            http = conn.http
            if conn.linger_until is not None:
                victim = conn
                break
            if http.running or http.requests or http.out:
                continue
            since = http.message_started if http.message_started is not None else conn.last_activity
            if now - since > longest:
                victim, longest = conn, now - since
        if victim is None:
            return False
        if victim.http.message_started is not None and victim.linger_until is None:
            # A request in progress gets told why, if its socket takes it now.
            try:
                victim.sock.send(error_response(503, "overloaded", "too many connections; retry", extra=b"Retry-After: 1\r\n"))
            except OSError:
                pass
        self._close(victim)
        return True

    def readable(self, sock, mask):
        conn = self.connections.get(sock.fileno())
        if conn is None:
            return
        http = conn.http
        if mask & WRITE:
            self._flush(conn)
            if conn.sock is None or http.out:
                return
        if not mask & READ or http.running:
            return
        try:
            data, ancillary, _, _ = sock.recvmsg(READ_SIZE, CMSG_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if conn.linger_until is not None:
            conn.lingered += len(data)
            if not data or conn.lingered > LINGER_BYTES:
                self._close(conn)
            return                          # discarded: the connection is closing
        conn.last_activity = time.monotonic()
        if not data:
            conn.eof = True
        try:
            http.receive(data, arrival(ancillary, self.now, self.real_minus_monotonic) if ancillary else self.now)
        except Exception:
            self.log.exception("the HTTP protocol failed on input from %s", conn.addr)
            http.refuse(ProtocolError(500, "internal_error", "internal server error"))
        self._dispatch(conn)

    def _dispatch(self, conn):
        """Run the connection's complete requests, inline or on the pool, and send."""
        http = conn.http
        # Pipelined requests are answered in order; those run inline are sent together.
        while True:
            request = http.next_request()
            if request is None:
                break
            if self.pool is None:
                http.respond(*self.handle(conn, request))
                continue
            tried = request.path in self.inline_paths
            if tried:
                answer = self.handle(conn, request, inline=True)
                if answer is not None:
                    http.respond(*answer)
                    continue
            if http.out:
                self._send(conn)            # earlier answers go out before this one runs
            # No reading while a thread has the connection: the loop would spin
            # on a readable socket it must not touch.
            self._set_events(conn, 0)
            with self.pool_lock:
                if not self.pool_waiting:
                    self.admission.note_empty(time.monotonic())   # no request waits for a thread
                self.pool_waiting += 1
            self.pool.submit(self._handle_on_pool, conn, request, tried)
            return
        self._flush(conn)

    def _handle_on_pool(self, conn, request, tried):
        with self.pool_lock:
            self.pool_waiting -= 1
        try:
            self.finished.append((conn, *self.handle(conn, request, again=tried)))
        finally:
            try:
                os.write(self.PIPE[1], b"\0")
            except BlockingIOError:
                pass    # the pipe is full: the loop is already due to wake

    def wake(self, fd, mask):
        try:
            while os.read(fd, 4096):
                pass
        except BlockingIOError:
            pass
        while self.finished:
            conn, data, keep_alive = self.finished.popleft()
            conn.http.respond(data, keep_alive)
            if conn.sock is not None:
                self._dispatch(conn)        # the next pipelined request, or just the flush

    def _set_events(self, conn, events):
        if conn.events == events:
            return
        if events == 0:
            self.selector.unregister(conn.sock)
        elif conn.events == 0:
            self.selector.register(conn.sock, events, self.readable)
        else:
            self.selector.modify(conn.sock, events, self.readable)
        conn.events = events

    def _send(self, conn):
        """Send what the socket takes now; False if the connection failed."""
        out = conn.http.out
        try:
            sent = conn.sock.send(out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(conn)
            return False
        del out[:sent]
        return True

    def _flush(self, conn):
        """Send what we can, then watch for what the connection needs next."""
        http = conn.http
        if http.out and not self._send(conn):
            return
        if http.out:
            if conn.write_started is None:
                conn.write_started = time.monotonic()
            if not http.running:
                self._set_events(conn, READ | WRITE if http.reading else WRITE)
            return
        if conn.write_started is not None:
            conn.write_started = None
            conn.last_activity = time.monotonic()
        if http.closing:
            self._linger(conn)
        elif not http.running:
            if http.reading:
                self._set_events(conn, READ)
            else:
                # No more input wanted (the client shut its side): nothing to
                # wait for but the answer of a request not yet run.
                self._set_events(conn, 0)

    def _linger(self, conn):
        """Close after the last answer: shut our side, then read and discard
        until the client closes too (or LINGER_SECONDS pass)."""
        if conn.eof or conn.linger_until is not None:
            if conn.eof:
                self._close(conn)
            return
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.linger_until = time.monotonic() + LINGER_SECONDS
        self._set_events(conn, READ)

    def _refuse(self, conn, error):
        """Answer a protocol error (after any answer due first) and close."""
        if error.status >= 500 or error.status == 408:
            self.log.info("closing %s: %s", conn.addr, error.message)
        conn.http.refuse(error)
        if not conn.http.running:
            self._dispatch(conn)

    def _close(self, conn):
        if conn.sock is None:
            return
        self.connections.pop(conn.sock.fileno(), None)
        if conn.events:
            try:
                self.selector.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
            conn.events = 0
        try:
            conn.sock.close()
        except OSError:
            pass
        conn.sock = None

    # -- one request ------------------------------------------------------------------

    def handle(self, conn, request, inline=False, again=False):
        """Run the application on one request: (response bytes, keep the connection).

        A request that waited too long to start (mab.http.admission) is
        answered 503 without the application, the hooks or the access log.
        ``inline``: in the loop, told not to wait; returns None when the
        application raised RunOnThread. ``again``: the second run of such a
        request, on a thread (counted and hooked once, in the first)."""
        started = time.monotonic()
        # Answers keep their connection while the worker serves, and while it
        # hands over to its replacements (mab.handover); not from the TERM
        # until the worker knows which, nor in the drain.
        if not self.admission.admits(request, started):
            return self.admission.refusal(request, self.alive or self.stopping == "handover")
        if not again:
            self.nr += 1
            if self.nr >= self.max_requests:
                if self.alive:
                    self.log.info("Autorestarting worker after current request.")
                self.alive = False
        environ = build_environ(request, conn.server, conn.addr,
                                multithread=self.pool is not None, multiprocess=self.multiprocess)
        if inline:
            environ[INLINE_KEY] = True
        keep_alive = request.keep_alive and (self.alive or self.stopping == "handover")
        answer = run_application(self, request, environ, keep_alive, started, pre_request=not again)
        if answer is None and not inline:
            self.log.error("the application raised RunOnThread for %s outside the loop", request.uri)
            return error_response(500, "internal_error", "internal server error"), False
        return answer
