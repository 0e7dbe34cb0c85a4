"""A gunicorn worker that parses HTTP with httptools and keeps connections alive.

    gunicorn -k mab.worker.HttptoolsWorker app:app

gunicorn's own workers parse HTTP in pure Python; for this service that cost
more CPU per request than the application itself (docs/benchmarks.md). This
worker keeps everything gunicorn does around a worker (forking, supervision
through the heartbeat file, graceful reload and shutdown, max_requests,
timeouts, the server hooks, the access log) and replaces the request loop:
one epoll loop per worker over its listening sockets and keep-alive
connections, with requests parsed by httptools (the Node.js llhttp parser,
also used by uvicorn) and handed to the same WSGI application.

Requests run inline in the loop thread by default (``threads = 1``): the
application is CPU-bound on the embedded store, and threads would only add
switching. With ``threads > 1`` (for a remote feature store, where a request
waits on the network) complete requests run on a pool of that many threads
while the loop keeps reading and writing.

What it enforces, with gunicorn's settings where gunicorn has one:

* request line at most ``limit_request_line`` bytes (414), at most
  ``limit_request_fields`` headers of at most ``limit_request_field_size``
  bytes each (431);
* a body of at most the application's ``max_body_bytes`` (or 16 MiB),
  refused with 413 before it is read, for fixed-length and chunked bodies;
  ``Expect: 100-continue`` answered with 100 or 413 (other expectations 417);
* conflicting or malformed framing (Content-Length with Transfer-Encoding,
  two different Content-Lengths, bad chunk sizes) rejected by llhttp: 400,
  and the connection is closed;
* a request must arrive within ``timeout`` seconds of its first byte, a
  response must drain within ``timeout`` seconds, and an idle keep-alive
  connection is closed after ``keepalive`` seconds;
* at most ``worker_connections`` open connections.

Responses whose length the application does not give are sent with chunked
transfer coding (HTTP/1.1) or closed after the body (HTTP/1.0). The body of
every response is assembled in memory before it is sent. TLS is not
supported: terminate it in front (a load balancer or sidecar) or use a
stock gunicorn worker.
"""

import collections
import datetime
import errno
import io
import os
import selectors
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from urllib.parse import unquote_to_bytes

import httptools
from gunicorn.workers import base

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
READ_SIZE = 256 * 1024
# Bytes of a request's head (request line and headers together) held at most.
MAX_HEAD_BYTES = 64 * 1024
# When the worker stops, a keep-alive connection is closed once it has been
# idle this long. Closing it at once would race a client that is about to
# reuse it (its request would meet a reset); a request that arrives in time
# is answered with Connection: close.
SHUTDOWN_IDLE_SECONDS = 0.5

_REASONS = {
    100: "Continue", 200: "OK", 204: "No Content", 304: "Not Modified", 400: "Bad Request",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required",
    413: "Content Too Large", 414: "URI Too Long", 415: "Unsupported Media Type", 417: "Expectation Failed",
    422: "Unprocessable Content", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
    503: "Service Unavailable",
}


class ProtocolError(Exception):
    """A request this worker refuses before the application sees it."""

    def __init__(self, status, code, message):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status, code, message):
    """A complete response for a worker-level error; the connection then closes."""
    body = b'{"error":{"code":"%s","message":"%s"}}' % (
        code.encode(), message.replace("\\", "\\\\").replace('"', '\\"').encode()
    )
    return b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (
        status, _REASONS.get(status, "Error").encode(), len(body), body
    )


class Request:
    """One parsed request: what the WSGI environ, the hooks and the access log need."""

    __slots__ = ("method", "uri", "version", "headers", "body", "keep_alive", "path", "query")

    def __init__(self, method, uri, version, headers, body, keep_alive):
        self.method = method
        self.uri = uri
        self.version = version
        self.headers = headers          # [(name, value)] as str, in arrival order
        self.body = body
        self.keep_alive = keep_alive
        if uri.startswith("/") and "%" not in uri and "?" not in uri and "#" not in uri:
            self.path, self.query = uri, ""     # the usual case, nothing to decode
        else:
            parsed = httptools.parse_url(uri.encode("latin-1"))
            self.path = unquote_to_bytes(parsed.path or b"/").decode("latin-1")
            self.query = (parsed.query or b"").decode("latin-1")


class Response:
    """What gunicorn's access log and post_request hook read of a response."""

    __slots__ = ("status", "headers", "sent")

    def __init__(self, status, headers, sent):
        self.status = status
        self.headers = headers
        self.sent = sent


class Connection:
    """A client connection: parser callbacks, pending requests, unsent output."""

    def __init__(self, worker, sock, addr, now):
        self.worker = worker
        self.sock = sock
        self.addr = addr
        self.parser = httptools.HttpRequestParser(self)
        self.pending = collections.deque()     # complete requests not yet handled
        self.out = bytearray()                 # response bytes not yet sent
        self.busy = False                      # a request of ours is being handled
        self.closing = False                   # close once `out` is sent
        self.events = 0                        # what the selector watches for
        self.server = ("", "")                 # (SERVER_NAME, SERVER_PORT)
        self.last_activity = now
        self.request_started = None            # first byte of a partial request
        self.write_started = None
        self._reset_message()

    def _reset_message(self):
        self.url = b""
        self.headers = []
        self.head_bytes = 0
        self.body = []
        self.body_bytes = 0

    # -- httptools callbacks ------------------------------------------------------

    def on_message_begin(self):
        self.request_started = time.monotonic()
        self._reset_message()

    def on_url(self, url):
        self.url += url
        if len(self.url) > self.worker.limit_request_line:
            raise ProtocolError(414, "uri_too_long", f"the request line is over {self.worker.limit_request_line} bytes")

    def on_header(self, name, value):
        if len(name) + len(value) + 2 > self.worker.limit_request_field_size:
            raise ProtocolError(431, "header_too_large",
                                f"a header is over {self.worker.limit_request_field_size} bytes")
        self.headers.append((name, value))
        self.head_bytes += len(name) + len(value)
        if len(self.headers) > self.worker.limit_request_fields:
            raise ProtocolError(431, "too_many_headers", f"more than {self.worker.limit_request_fields} headers")
        if self.head_bytes > MAX_HEAD_BYTES:
            raise ProtocolError(431, "headers_too_large", f"the headers are over {MAX_HEAD_BYTES} bytes")

    def on_headers_complete(self):
        limit = self.worker.max_body_bytes
        expect = None
        length = None
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == b"content-length":
                length = int(value)         # llhttp has checked it is a number
            elif lowered == b"expect":
                expect = value.lower()
        if length is not None and length > limit:
            raise ProtocolError(413, "body_too_large", f"the body has {length} bytes; the limit is {limit}")
        if expect is not None:
            if expect != b"100-continue" or self.parser.get_http_version() != "1.1":
                raise ProtocolError(417, "expectation_failed", "only Expect: 100-continue is supported")
            self.out += b"HTTP/1.1 100 Continue\r\n\r\n"

    def on_body(self, body):
        self.body_bytes += len(body)
        if self.body_bytes > self.worker.max_body_bytes:
            raise ProtocolError(413, "body_too_large", f"the body is over {self.worker.max_body_bytes} bytes")
        self.body.append(body)

    def on_message_complete(self):
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self.headers]
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.pending.append(
            Request(
                self.parser.get_method().decode("latin-1"),
                self.url.decode("latin-1"),
                self.parser.get_http_version(),
                headers,
                body,
                self.parser.should_keep_alive(),
            )
        )
        self.request_started = None
        self._reset_message()


class HttptoolsWorker(base.Worker):
    """gunicorn worker: an epoll loop, httptools parsing, keep-alive."""

    def init_process(self):
        if self.cfg.is_ssl:
            # The listeners would hand us TLS bytes we cannot read.
            raise RuntimeError("mab.worker.HttptoolsWorker does not do TLS; terminate TLS in front of it")
        self.limit_request_line = self.cfg.limit_request_line or sys.maxsize
        self.limit_request_fields = self.cfg.limit_request_fields or sys.maxsize
        self.limit_request_field_size = self.cfg.limit_request_field_size or sys.maxsize
        self.keepalive = self.cfg.keepalive
        self.max_connections = self.cfg.worker_connections
        self.connections = {}
        self.selector = selectors.DefaultSelector()
        self.finished = collections.deque()      # (connection, bytes, keep_alive) from pool threads
        self.pool = None
        self._date = (0, b"")
        super().init_process()   # loads the app, then calls run()

    def load_wsgi(self):
        super().load_wsgi()
        # The body limit follows the application's, so both refuse alike.
        self.max_body_bytes = getattr(self.wsgi, "max_body_bytes", None) or DEFAULT_MAX_BODY_BYTES
        # gunicorn >= 24 knows whether any access log is configured; older ones log always.
        self.access_logging = getattr(self.log, "access_log_enabled", True)
        # Read once: every cfg attribute is a lookup through gunicorn's Config.
        self.pre_request = self.cfg.pre_request
        self.post_request = self.cfg.post_request
        self.multiprocess = self.cfg.workers > 1

    # -- the loop --------------------------------------------------------------------

    def run(self):
        if self.cfg.threads > 1:
            self.pool = ThreadPoolExecutor(self.cfg.threads, thread_name_prefix="mab-request")
        for listener in self.sockets:
            listener.setblocking(False)
            self.selector.register(listener, selectors.EVENT_READ, self.accept)
        # gunicorn's own pipe: signal handlers write to it (set_wakeup_fd), and
        # so do pool threads when a response is ready.
        self.selector.register(self.PIPE[0], selectors.EVENT_READ, self.wake)
        last_notify = last_sweep = 0.0
        accepting = True
        try:
            while self.alive or self.connections:
                now = time.monotonic()
                if now - last_notify >= 1.0:
                    self.notify()
                    last_notify = now
                if not self.alive and accepting:
                    self._stop_accepting()
                    accepting = False
                    shutdown_deadline = now + self.cfg.graceful_timeout
                if not self.alive:
                    if now > shutdown_deadline:
                        break
                    self._close_idle(now - SHUTDOWN_IDLE_SECONDS)
                for key, mask in self.selector.select(timeout=1.0 if self.alive else 0.1):
                    key.data(key.fileobj, mask)
                if now - last_sweep >= 1.0:
                    self._sweep(now)
                    last_sweep = now
                if self.ppid != os.getppid():
                    self.log.info("Parent changed, shutting down: %s", self)
                    break
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=False, cancel_futures=True)
            for conn in list(self.connections.values()):
                self._close(conn)

    def _stop_accepting(self):
        for listener in self.sockets:
            try:
                self.selector.unregister(listener)
            except (KeyError, ValueError):
                pass

    def _close_idle(self, idle_since):
        """Close connections with nothing in progress and no activity since `idle_since`."""
        for conn in list(self.connections.values()):
            if not (conn.busy or conn.out or conn.pending or conn.request_started) and conn.last_activity <= idle_since:
                self._close(conn)

    def _sweep(self, now):
        """Close connections that idled, dawdled or stopped reading too long."""
        timeout = self.cfg.timeout
        for conn in list(self.connections.values()):
            if conn.busy:
                continue
            if conn.out and conn.write_started and now - conn.write_started > timeout:
                self._close(conn)
            elif conn.request_started and now - conn.request_started > timeout:
                self._refuse(conn, ProtocolError(408, "request_timeout", f"no complete request within {timeout}s"))
            elif not conn.out and not conn.request_started and now - conn.last_activity > self.keepalive:
                self._close(conn)

    # -- connections ------------------------------------------------------------------

    def accept(self, listener, mask):
        # One connection per wake-up: the listener is shared by all workers,
        # and a worker that accepted every waiting connection at once would
        # keep long-lived keep-alive connections (a load balancer's) to itself
        # while its siblings idle. Level-triggered epoll calls again if more wait.
        if len(self.connections) < self.max_connections:
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.log.warning("accept failed: %s", exc)
                    return
                raise
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(self, sock, addr, time.monotonic())
            server = sock.getsockname()
            conn.server = (server[0], str(server[1])) if isinstance(server, tuple) else (str(server), "")
            self.connections[sock.fileno()] = conn
            self.selector.register(sock, selectors.EVENT_READ, self.readable)
            conn.events = selectors.EVENT_READ

    def readable(self, sock, mask):
        conn = self.connections.get(sock.fileno())
        if conn is None:
            return
        if mask & selectors.EVENT_WRITE:
            self._flush(conn)
            if conn.sock is None or conn.out:
                return
        if not mask & selectors.EVENT_READ or conn.busy:
            return
        try:
            data = sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        conn.last_activity = time.monotonic()
        try:
            conn.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            # Our callbacks raise ProtocolError; httptools wraps it.
            error = exc.__context__
            if not isinstance(error, ProtocolError):
                self.log.exception("parser callback failed")
                error = ProtocolError(500, "internal_error", "internal server error")
            self._refuse(conn, error)
            return
        except httptools.HttpParserUpgrade:
            self._refuse(conn, ProtocolError(400, "upgrade_not_supported", "protocol upgrades are not supported"))
            return
        except httptools.HttpParserError as exc:
            self._refuse(conn, ProtocolError(400, "bad_request", f"malformed request: {exc}"))
            return
        self._dispatch(conn)                # also sends a 100 Continue

    def _dispatch(self, conn):
        """Handle the connection's complete requests, inline or on the pool."""
        if self.pool is None:
            # Pipelined requests are answered in order and sent together.
            while conn.pending and conn.sock is not None and not conn.closing:
                data, keep_alive = self.handle(conn, conn.pending.popleft())
                conn.out += data
                if not keep_alive:
                    conn.closing = True
            if conn.sock is not None and (conn.out or conn.closing):
                self._flush(conn)
            return
        if conn.busy or not conn.pending or conn.sock is None or conn.closing:
            if conn.sock is not None and conn.out:
                self._flush(conn)
            return
        conn.busy = True
        # No reading while a thread has the connection: the loop would spin
        # on a readable socket it must not touch.
        self.selector.unregister(conn.sock)
        conn.events = 0
        self.pool.submit(self._handle_on_pool, conn, conn.pending.popleft())

    def _handle_on_pool(self, conn, request):
        try:
            self.finished.append((conn, *self.handle(conn, request)))
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
            conn.busy = False
            if conn.sock is None:
                continue
            conn.out += data
            if not keep_alive:
                conn.closing = True
            self._set_events(conn, selectors.EVENT_READ)
            self._dispatch(conn)     # the next pipelined request, or just the flush

    def _set_events(self, conn, events):
        if conn.events == events:
            return
        if conn.events == 0:
            self.selector.register(conn.sock, events, self.readable)
        else:
            self.selector.modify(conn.sock, events, self.readable)
        conn.events = events

    def _flush(self, conn):
        """Send what we can; wait for EVENT_WRITE for the rest."""
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(conn)
            return
        del conn.out[:sent]
        now = time.monotonic()
        if conn.out:
            if conn.write_started is None:
                conn.write_started = now
            if not conn.busy:
                self._set_events(conn, selectors.EVENT_READ | selectors.EVENT_WRITE)
            return
        conn.write_started = None
        conn.last_activity = now
        if conn.closing:
            self._close(conn)
            return
        if not conn.busy:
            self._set_events(conn, selectors.EVENT_READ)

    def _refuse(self, conn, error):
        """Answer a protocol error and close once it is sent."""
        if error.status >= 500 or error.status == 408:
            self.log.info("closing %s: %s", conn.addr, error.message)
        conn.pending.clear()
        conn.out += error_response(error.status, error.code, error.message)
        conn.closing = True
        if not conn.busy:
            self._flush(conn)

    def _close(self, conn):
        if conn.sock is None:
            return
        self.connections.pop(conn.sock.fileno(), None)
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        try:
            conn.sock.close()
        except OSError:
            pass
        conn.sock = None

    # -- one request ------------------------------------------------------------------

    def _http_date(self):
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True).encode())
        return self._date[1]

    def environ(self, conn, request):
        server_name, server_port = conn.server
        environ = {
            "REQUEST_METHOD": request.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": request.path,
            "QUERY_STRING": request.query,
            "RAW_URI": request.uri,
            "REQUEST_URI": request.uri,
            "SERVER_PROTOCOL": f"HTTP/{request.version}",
            "SERVER_NAME": server_name,
            "SERVER_PORT": server_port,
            "REMOTE_ADDR": conn.addr[0] if isinstance(conn.addr, tuple) else "",
            "REMOTE_PORT": str(conn.addr[1]) if isinstance(conn.addr, tuple) else "",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(request.body),
            "wsgi.input_terminated": True,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": self.pool is not None,
            "wsgi.multiprocess": self.multiprocess,
            "wsgi.run_once": False,
        }
        for name, value in request.headers:
            key = name.upper().replace("-", "_")
            if "_" in name:
                continue    # as gunicorn does: X_Forwarded_For must not pose as X-Forwarded-For
            if key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
                environ[key] = value
                continue
            key = "HTTP_" + key
            if key in environ:
                environ[key] += "," + value
            else:
                environ[key] = value
        if "CONTENT_LENGTH" not in environ and request.body:
            environ["CONTENT_LENGTH"] = str(len(request.body))   # a chunked body, now whole
        return environ

    def handle(self, conn, request):
        """Run the application on one request: (response bytes, keep the connection)."""
        started = time.monotonic() if self.access_logging else 0.0
        self.nr += 1
        if self.nr >= self.max_requests:
            if self.alive:
                self.log.info("Autorestarting worker after current request.")
            self.alive = False
        environ = self.environ(conn, request)
        status_headers = []

        def start_response(status, headers, exc_info=None):
            if exc_info and status_headers:
                raise exc_info[1].with_traceback(exc_info[2])
            status_headers[:] = [status, headers]
            return lambda data: body_parts.append(data)   # the legacy write() callable

        body_parts = []
        try:
            self.pre_request(self, request)
            iterable = self.wsgi(environ, start_response)
            try:
                sized = isinstance(iterable, (list, tuple))
                body_parts.extend(iterable)
            finally:
                if hasattr(iterable, "close"):
                    iterable.close()
            status, headers = status_headers
        except Exception:
            self.log.exception("Error handling request %s", request.uri)
            return error_response(500, "internal_error", "internal server error"), False

        code = int(status[:3])
        keep_alive = request.keep_alive and self.alive
        head = [b"HTTP/1.1 ", status.encode("latin-1"), b"\r\n"]
        has_length = chunked = False
        for name, value in headers:
            lowered = name.lower()
            if lowered == "content-length":
                has_length = True
            elif lowered == "connection" or lowered == "transfer-encoding":
                continue    # framing is the server's business
            head += (name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n")
        body = body_parts[0] if len(body_parts) == 1 else b"".join(body_parts)
        no_body = code < 200 or code in (204, 304) or request.method == "HEAD"
        if not has_length and not no_body:
            if sized or request.version == "1.1":
                # A whole body in hand: say its length. Otherwise chunks.
                if sized:
                    head += (b"Content-Length: ", str(len(body)).encode(), b"\r\n")
                else:
                    chunked = True
                    head.append(b"Transfer-Encoding: chunked\r\n")
            else:
                keep_alive = False      # HTTP/1.0 without a length: the close ends the body
        head += (b"Date: ", self._http_date(), b"\r\n")
        if not keep_alive:
            head.append(b"Connection: close\r\n")
        elif request.version == "1.0":
            head.append(b"Connection: keep-alive\r\n")
        head.append(b"\r\n")
        if no_body:
            data = b"".join(head)
        elif chunked:
            chunks = [b"%x\r\n%s\r\n" % (len(part), part) for part in body_parts if part]
            data = b"".join(head) + b"".join(chunks) + b"0\r\n\r\n"
        else:
            data = b"".join(head) + body

        response = Response(status, headers, len(body))
        try:
            if self.access_logging:
                elapsed = datetime.timedelta(seconds=time.monotonic() - started)
                self.log.access(response, request, environ, elapsed)
            self.post_request(self, request, environ, response)
        except Exception:
            self.log.exception("Exception in post_request hook or access log")
        return data, keep_alive
