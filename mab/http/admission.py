"""Admission control: a request that waited too long to start gets 503 at once.

Under more load than a worker can serve, requests wait: in the listen
backlog (a connection not yet accepted), in socket buffers (bytes the loop
has not read yet, while it runs other requests inline), and in the loop or
the thread pool (read, not yet started). Served late, they are answered
after their client gave up, and the queue only grows. So each request's
wait is measured from when its last bytes reached the machine to when the
application would start it, and a request that waited too long, or past
the deadline its client gave in ``x-envoy-expected-rq-timeout-ms``, is
answered ``503`` with ``Retry-After: 1`` and ``{"error": {"code":
"overloaded", ...}}`` without calling the application: a prepared
response, for a few microseconds.

How long is too long follows the "controlled delay" of Maurer's "Fail
at Scale" (ACM Queue 13(8), 2015) and of CoDel (RFC 8289): a queue that
drains is no overload, so while the worker keeps up (its queue was empty
within the last ``MAB_OVERLOAD_INTERVAL_MS``, default 100 ms) every
request is served, however long a burst or a stall of the machine made it
wait; once a queue has stood that long, a request that waited more than
``MAB_MAX_QUEUE_MS`` (default 40 ms) is turned away, which bounds the
latency of the requests served during an overload. The queue is empty
when the loop finds no socket with work waiting or, with a thread pool,
when no request waits for a thread. A client's deadline applies always.

When its bytes reached the machine: the kernel stamps each received packet
(``SO_TIMESTAMPNS``, enabled on the listening socket, inherited by every
accepted one, and read back with ``recvmsg``), so the wait includes the
time in the backlog and in socket buffers, which the loop cannot see. Where
the kernel gives no stamp (another platform, a Unix socket) the wait counts
from when the loop's pass began.
"""

import os
import socket
import struct
import sys

from mab.http.response import error_response

DEFAULT_MAX_QUEUE_MS = 40.0
DEFAULT_OVERLOAD_INTERVAL_MS = 100.0
RETRY_AFTER_SECONDS = 1
# Linux's SO_TIMESTAMPNS (asm-generic/socket.h); Python's socket module does
# not name it. The control message it yields has the same type.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@ll")           # struct timespec: seconds, nanoseconds
CMSG_SIZE = socket.CMSG_SPACE(_TIMESPEC.size)
# A stamp further back than this is a clock step, not a wait.
_MAX_PLAUSIBLE_WAIT = 60.0


def enable_receive_timestamps(listener):
    """Have the kernel stamp what arrives on connections accepted from
    `listener` (Linux). False where it cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        listener.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def arrival(ancillary, now, real_minus_monotonic):
    """When the data of one ``recvmsg`` reached the machine, on the
    ``time.monotonic()`` clock: from its SO_TIMESTAMPNS stamp (a
    ``time.time()`` instant) in `ancillary`, else `now`. Never later than
    `now` (data may land after the loop's pass began)."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            stamp = seconds + nanoseconds * 1e-9 - real_minus_monotonic
            if now - _MAX_PLAUSIBLE_WAIT < stamp < now:
                return stamp
    return now


def _milliseconds(environ, name, default):
    value = environ.get(name, "")
    if value == "":
        return default / 1000
    milliseconds = float(value)
    if not milliseconds >= 0:
        raise ValueError(f"{name} must be a number of milliseconds >= 0, got {value!r}")
    return milliseconds / 1000


class Admission:
    """Decides whether a request may start; counts the ones it turns away.

    ``max_queue``: seconds a request may wait during an overload (0: no
    admission control); ``interval``: seconds a queue must stand (never
    empty) to be an overload; ``now``: the time.monotonic() clock at start.
    """

    def __init__(self, max_queue, interval, now):
        self.max_queue = max_queue
        self.interval = interval
        self.last_empty = now
        self.shed = 0           # since the worker's last log line about it
        self.shed_total = 0     # since the start (mab_http_requests_shed_total)
        message = f"the server is overloaded: retry in {RETRY_AFTER_SECONDS}s"
        extra = b"Retry-After: %d\r\n" % RETRY_AFTER_SECONDS
        # (keep the connection, HTTP/1.0): a prepared response each. A 5xx
        # needs no Date (RFC 9110 section 6.6.1).
        closing = error_response(503, "overloaded", message, extra=extra)
        self._responses = {
            (False, False): closing,
            (False, True): closing,
            (True, False): error_response(503, "overloaded", message, close=False, extra=extra),
            (True, True): error_response(503, "overloaded", message, close=False,
                                         extra=extra + b"Connection: keep-alive\r\n"),
        }

    @classmethod
    def from_environ(cls, now, environ=os.environ):
        """``MAB_MAX_QUEUE_MS`` and ``MAB_OVERLOAD_INTERVAL_MS`` (ValueError if not >= 0)."""
        return cls(_milliseconds(environ, "MAB_MAX_QUEUE_MS", DEFAULT_MAX_QUEUE_MS),
                   _milliseconds(environ, "MAB_OVERLOAD_INTERVAL_MS", DEFAULT_OVERLOAD_INTERVAL_MS), now)

    def note_empty(self, now):
        """The worker's queue was empty at `now`: it keeps up."""
        self.last_empty = now

    def overloaded(self, now):
        """Whether a queue has stood (never emptied) for the last ``interval``."""
        return now - self.last_empty > self.interval

    def admits(self, request, now):
        """Whether `request` (a mab.http.request.Request) may start at
        `now` (time.monotonic()): its client's deadline has not passed,
        and it waited no longer than ``max_queue`` since it arrived, or the
        worker keeps up."""
        if request.deadline is not None and now >= request.deadline:
            self.shed += 1
            self.shed_total += 1
            return False
        if not self.max_queue or now - request.received <= self.max_queue or now - self.last_empty <= self.interval:
            return True
        self.shed += 1
        self.shed_total += 1
        return False

    def refusal(self, request, keep_alive):
        """The 503 for a request turned away, and whether the connection stays."""
        keep_alive = keep_alive and request.keep_alive
        return self._responses[keep_alive, request.version == "1.0"], keep_alive
