"""A parsed request to a WSGI environ, and a WSGI application's answer.

PEP 3333, with gunicorn's hooks and access log around the application
(``run_application``). The environ carries what gunicorn's own workers put in it, and
two keys of this server:

* ``mab.received``: ``time.monotonic()`` when the request's last bytes
  reached the machine (the kernel's receive stamp where there is one);
* ``mab.deadline``: the ``time.monotonic()`` instant by which the client
  wants its answer, from its ``x-envoy-expected-rq-timeout-ms`` header
  (Envoy's convention), or absent when the client gave none.
"""

import datetime
import io
import sys
import time
from email.utils import formatdate

from mab.http.response import InvalidResponse, encode_response, error_response

DEADLINE_KEY = "mab.deadline"
RECEIVED_KEY = "mab.received"
#: True when the request runs in the worker's loop thread while the worker
#: also has a pool of threads: the application must not wait (on the
#: network) there, and raises RunOnThread instead.
INLINE_KEY = "mab.inline"


class RunOnThread(Exception):
    """Raised by the application, for a request whose environ has
    ``INLINE_KEY`` true, before it has answered or recorded anything, when
    answering would wait: the worker runs the request again, from the
    start, on one of its threads."""


def build_environ(request, server, peer, *, multithread, multiprocess):
    """The WSGI environ of ``request`` (a mab.http.protocol.Request).

    ``server`` is (SERVER_NAME, SERVER_PORT) as str, ``peer`` the client's
    socket address. Header fields become HTTP_* keys (repeated ones joined
    with ","), except that a field whose name holds "_" is dropped, as
    gunicorn drops it: X_Forwarded_For must not pose as X-Forwarded-For.
    """
    environ = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": request.path,
        "QUERY_STRING": request.query,
        "RAW_URI": request.uri,
        "REQUEST_URI": request.uri,
        "SERVER_PROTOCOL": "HTTP/" + request.version,
        "SERVER_NAME": server[0],
        "SERVER_PORT": server[1],
        "REMOTE_ADDR": peer[0] if isinstance(peer, tuple) else "",
        "REMOTE_PORT": str(peer[1]) if isinstance(peer, tuple) else "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(request.body),
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": multithread,
        "wsgi.multiprocess": multiprocess,
        "wsgi.run_once": False,
        RECEIVED_KEY: request.received,
    }
    if request.deadline is not None:
        environ[DEADLINE_KEY] = request.deadline
    for name, value in request.headers:
        if "_" in name:
            continue
        key = name.upper().replace("-", "_")
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


def call_application(app, environ):
    """Run a WSGI application to the end: (status, headers, body parts, sized).

    ``sized`` is whether the application returned a list or tuple (its
    body's length is then known). Exceptions from the application propagate.
    """
    status_headers = []
    body_parts = []

    def start_response(status, headers, exc_info=None):
        if exc_info and status_headers:
            raise exc_info[1].with_traceback(exc_info[2])
        status_headers[:] = [status, headers]
        return body_parts.append     # the legacy write() callable

    iterable = app(environ, start_response)
    try:
        sized = isinstance(iterable, (list, tuple))
        body_parts.extend(iterable)
    finally:
        if hasattr(iterable, "close"):
            iterable.close()
    if not status_headers:
        raise RuntimeError("the application did not call start_response")
    return status_headers[0], status_headers[1], body_parts, sized


class Response:
    """What gunicorn's access log and post_request hook read of a response."""

    __slots__ = ("status", "headers", "sent")

    def __init__(self, status, headers, sent):
        self.status = status
        self.headers = headers
        self.sent = sent


_date = [0, b""]


def http_date():
    """The Date value for now (bytes), worked out once a second."""
    now = int(time.time())
    if _date[0] != now:
        _date[:] = [now, formatdate(now, usegmt=True).encode()]
    return _date[1]


def run_application(worker, request, environ, keep_alive, started, pre_request=True):
    """Run `worker`'s WSGI application (gunicorn's ``worker.wsgi``) on
    `request` as gunicorn's workers do: the pre_request hook (unless
    `pre_request` is false: a second run of a request that raised
    RunOnThread), the application, the access log (when configured), the
    post_request hook. (response bytes, whether the connection stays open),
    or None when the application raised RunOnThread; a failure of the
    application or a response that cannot be sent is logged and answered
    500, closing the connection. `started` is time.monotonic() when the
    request started, for the access log."""
    try:
        if pre_request:
            worker.pre_request(worker, request)
        status, headers, body_parts, sized = call_application(worker.wsgi, environ)
        data, keep_alive, length = encode_response(request, status, headers, body_parts, sized, keep_alive,
                                                   http_date())
    except RunOnThread:
        return None
    except InvalidResponse as exc:
        worker.log.error("Invalid response to %s: %s", request.uri, exc)
        return error_response(500, "internal_error", "internal server error"), False
    except Exception:
        worker.log.exception("Error handling request %s", request.uri)
        return error_response(500, "internal_error", "internal server error"), False
    response = Response(status, headers, length)
    try:
        if worker.access_logging:
            elapsed = datetime.timedelta(seconds=time.monotonic() - started)
            worker.log.access(response, request, environ, elapsed)
        worker.post_request(worker, request, environ, response)
    except Exception:
        worker.log.exception("Exception in post_request hook or access log")
    return data, keep_alive
