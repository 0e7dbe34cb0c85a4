"""The server side of one HTTP/1.1 connection, without I/O (sans-IO).

The worker feeds what it reads into ``HttpConnection.receive`` and asks
``next_request`` for the next request to run; it passes the encoded response
of each to ``respond`` and sends whatever ``out`` holds, closing the
connection once ``out`` is empty and ``closing`` is set. Nothing here
touches a socket or a clock (the caller passes the time), so the whole
protocol runs under a fuzzer (``mab.testing.fuzz_http``).

Parsing is llhttp's (Node.js's parser, through httptools), strict: it
already refuses what RFC 9112 calls faulty framing (Content-Length with
Transfer-Encoding, differing or malformed lengths, bad chunk syntax, bare
CR or LF, obs-fold, control characters in fields). What llhttp accepts and
this module refuses on top, with the rule:

* a request-target that is not origin-form, absolute-form (http or https),
  or asterisk-form with OPTIONS; a fragment; malformed percent-encoding; or
  a path that decodes to control characters: 400 (RFC 9112 section 3.2,
  RFC 3986 section 2.1);
* CONNECT: 501, this server is no proxy (RFC 9110 section 9.3.6);
* an HTTP major version other than 1: 505 (RFC 9110 section 15.6.6); a
  minor version above 1 is answered as 1.1 (RFC 9112 section 2.3);
* Transfer-Encoding in an HTTP/1.0 request: 400, the framing is faulty
  (RFC 9112 section 6.1); one that does not end with chunked: 400 (RFC
  9112 section 6.3); any coding besides chunked: 501 (RFC 9112 section 6.1);
* more than one Host or Content-Type field: 400 (RFC 9112 section 3.2;
  RFC 9110 section 5.3: singleton fields);
* ``Expect`` other than ``100-continue``: 417; in HTTP/1.0 it is ignored
  (RFC 9110 section 10.1.1);
* Upgrade on a request with a body: 400 (the parser would leave the body
  unread); on a request without one the Upgrade is ignored and the request
  answered (RFC 9110 section 7.8);
* ``x-envoy-expected-rq-timeout-ms`` (Envoy's deadline header) becomes
  ``Request.deadline``; a value that is not a whole number of
  milliseconds: 400;
* limits (``mab.http.request.Limits``): a request target longer than ``request_line`` (414),
  more than ``fields`` fields, a field line longer than ``field_size`` or a
  field section longer than ``header_bytes`` (431), all counted while the
  bytes stream in so that no more than the limit (plus one read) is ever
  held; a body over ``body_bytes`` (413, before it is read when it has a
  Content-Length).

Trailer fields of chunked requests are counted against the same limits and
then dropped: they never reach the request's header fields (RFC 9112
section 7.1.2).

Order: responses leave in the order of the requests (RFC 9112 section 9.3.2).
A refusal is sent after the responses to every request that completed
before it, and then the connection closes. ``100 Continue`` is sent only
once every earlier request is answered, and only if the body has not
started to arrive (RFC 9110 section 10.1.1). After a request that ends the
connection (``Connection: close``, HTTP/1.0 without keep-alive) the rest of
the input is ignored (RFC 9112 section 9.6).
"""

import collections

import httptools

from mab.http.request import ProtocolError, Request, parse_target
from mab.http.response import CONTINUE, error_response

DEADLINE_HEADER = b"x-envoy-expected-rq-timeout-ms"
# The fields the protocol reads, by lower-case name.
_LENGTH, _TYPE, _HOST, _CODING, _EXPECT, _DEADLINE = range(6)
_FIELDS = {b"content-length": _LENGTH, b"content-type": _TYPE, b"host": _HOST, b"transfer-encoding": _CODING,
           b"expect": _EXPECT, DEADLINE_HEADER: _DEADLINE}


class HttpConnection:
    """One client connection's HTTP/1.1 state, fed bytes by its owner;
    ``limits`` is a ``mab.http.request.Limits``.

    Attributes the owner reads: ``out`` (bytearray, bytes to send),
    ``closing`` (close once ``out`` is sent), ``reading`` (input is still
    wanted), ``running`` (a request handed out is not yet answered),
    ``message_started`` (the clock when the partial message in progress
    began, or None) and ``head_complete`` (its head is in: only its body is
    awaited).
    """

    def __init__(self, limits):
        self.limits = limits
        self.parser = httptools.HttpRequestParser(self)
        # llhttp refuses HTTP/1.2; RFC 9112 section 2.3 says to answer any
        # 1.x as the highest minor version understood, and other majors 505
        # (on_headers_complete does both).
        self.parser.set_dangerous_leniencies(lenient_version=True)
        self.requests = collections.deque()   # complete requests not yet handed out
        self.error = None                     # a refusal to send once `requests` are answered
        self.out = bytearray()
        self.running = False
        self.closing = False
        self.reading = True
        self.message_started = None
        self.head_complete = False
        self.continue_due = False             # a 100 Continue to send when its turn comes
        self.now = 0.0
        self.request = None
        self.url = b""
        self.headers = []
        self.body = []
        self.body_bytes = 0
        self.section_bytes = 0                # bytes of fields in the current header or trailer section
        self.section_fields = 0
        self.held = 0                         # bytes of an unfinished field line httptools holds
        self.held_state = 0
        self.in_request_line = False
        self.chunked = False
        self.chunk_data = False
        self.begun = False                    # a message began in the current feed
        self.fresh = False                    # a field or chunk line ended in the current feed

    # -- the owner's side ---------------------------------------------------------------

    def receive(self, data, now):
        """Parse ``data`` (bytes read from the client; b"" at end of input)
        at time ``now``. Complete requests queue for ``next_request``; a
        refusal queues behind them, and nothing more is parsed."""
        while self.reading:
            self.now = now
            if not data:
                self.reading = False        # end of input: answer what is complete, then close
                return
            self.begun = self.fresh = False
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserCallbackError as exc:
                error = exc.__context__
                if not isinstance(error, ProtocolError):
                    raise error if error is not None else exc    # a fault of ours, not of the request
                self.refuse(error)
                return
            except httptools.HttpParserUpgrade as exc:
                # A request without a body asked for an upgrade and is
                # complete: ignore the Upgrade (RFC 9110 section 7.8) and
                # parse what follows as HTTP again (httptools has resumed).
                data = data[exc.args[0]:]
                if data:
                    continue
                return
            except httptools.HttpParserError as exc:
                if self.reading:            # else: input after a closing request, ignored
                    self.refuse(ProtocolError(400, "bad_request", f"malformed request: {exc}"))
                return
            if self.message_started is not None and self.reading and (
                not self.head_complete or (self.chunked and not self.chunk_data)
            ):
                self._check_held(data)
            return

    def next_request(self):
        """The next request to run, or None if none can run now: one is
        running, or none is complete. When it returns None it may have put
        output in ``out``: a 100 Continue now due, or the refusal that ends
        the connection."""
        if self.running or self.closing:
            return None
        if self.requests:
            self.running = True
            return self.requests.popleft()
        if self.error is not None:
            error, self.error = self.error, None
            self.out += error_response(error.status, error.code, error.message)
            self.closing = True
        elif not self.reading:
            self.closing = True             # end of input, or the last request said close
        elif self.continue_due:
            self.continue_due = False
            self.out += CONTINUE
        return None

    def respond(self, data, keep_alive):
        """The encoded final response to the request ``next_request`` gave
        last; without ``keep_alive`` it is the connection's last."""
        self.running = False
        self.out += data
        if not keep_alive:
            self._stop()

    def refuse(self, error):
        """End the connection with ``error`` (a ProtocolError) once every
        complete request is answered; nothing more is read."""
        if self.error is None and not self.closing:
            self.error = error
        self.reading = False
        self.continue_due = False

    def _stop(self):
        self.closing = True
        self.reading = False
        self.requests.clear()
        self.error = None
        self.continue_due = False

    @property
    def idle(self):
        """Nothing in progress: no partial message, request or output."""
        return not (self.running or self.out or self.requests or self.message_started is not None)

    # -- limits on what llhttp's caller holds ------------------------------------------

    def _check_held(self, data):
        """Bound the field line httptools holds until it ends.

        httptools hands a header (or trailer) field over only once the next
        one begins, and keeps its bytes until then: the line after the
        data's last LF, or, in a head, the whole last line when the data
        ends with LF (that field waits for the next one). The request line
        is no field (on_url bounds its target). Runs only when a read leaves
        a head or trailer section unfinished, never for a request complete
        in one read. The count leaves out the spaces after the colon, so
        that it never exceeds the size on_header will count for the same
        line: a limit then refuses alike however the input was cut.
        """
        end = len(data)
        lo = 0
        if self.in_request_line:
            if self.begun:
                if not self.url:
                    return                  # still in the method
                # The message began in this data, after the previous one's
                # body (which may hold anything): its target marks its start.
                lo = max(data.rfind(self.url), 0)
            lo = data.find(b"\n", lo) + 1
            if lo == 0:
                return                      # the request line goes on
            self.in_request_line = False
        last = data.rfind(b"\n", lo)
        if last == end - 1 and not self.head_complete:
            last = data.rfind(b"\n", lo, last)
        if last >= 0:
            start = last + 1
        elif lo > 0 or self.fresh:
            start = lo
        else:
            start = -1                      # the same line as at the end of the last read
        self._measure_held(data[max(start, 0):], continuing=start < 0)
        limits = self.limits
        if self.held > limits.field_size:
            self.refuse(ProtocolError(431, "header_too_large", f"a field line is over {limits.field_size} bytes"))
        elif self.section_bytes + self.held > limits.header_bytes:
            self.refuse(ProtocolError(431, "headers_too_large", f"the fields are over {limits.header_bytes} bytes"))

    def _measure_held(self, line, continuing):
        """Add the bytes of (part of) a field line to ``held``, less the
        spaces after its colon; ``held_state`` is where the line stands:
        0 in the name, 1 in the spaces after the colon, 2 in the value."""
        if not continuing:
            self.held = 0
            self.held_state = 0
        state = self.held_state
        size = len(line)
        if state == 0:
            colon = line.find(b":")
            if colon >= 0:
                rest = line[colon + 1:]
                value = rest.lstrip(b" \t")
                size -= len(rest) - len(value)
                state = 2 if value else 1
        elif state == 1:
            value = line.lstrip(b" \t")
            size -= len(line) - len(value)
            if value:
                state = 2
        self.held_state = state
        self.held += size

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self):
        self.message_started = self.now
        self.begun = True
        self.head_complete = False
        self.url = b""
        self.headers = []
        self.body = []
        self.body_bytes = 0
        self.section_bytes = 0
        self.section_fields = 0
        self.held = 0
        self.in_request_line = True
        self.chunked = False

    def on_url(self, url):
        self.url += url
        if len(self.url) > self.limits.request_line:
            raise ProtocolError(414, "uri_too_long", f"the request target is over {self.limits.request_line} bytes")

    def on_header(self, name, value):
        self.fresh = True
        limits = self.limits
        size = len(name) + len(value) + 4      # name ": " value CRLF
        if size > limits.field_size:
            raise ProtocolError(431, "header_too_large", f"a field line is over {limits.field_size} bytes")
        self.section_bytes += size
        self.section_fields += 1
        if self.section_fields > limits.fields:
            raise ProtocolError(431, "too_many_headers", f"more than {limits.fields} fields")
        if self.section_bytes > limits.header_bytes:
            raise ProtocolError(431, "headers_too_large", f"the fields are over {limits.header_bytes} bytes")
        if not self.head_complete:
            self.headers.append((name, value))
        # else: a trailer field, counted and dropped (RFC 9112 section 7.1.2)

    def on_headers_complete(self):
        parser = self.parser
        self.head_complete = True
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            if version[:2] != "1.":
                raise ProtocolError(505, "http_version_not_supported", f"HTTP/{version} is not supported")
            version = "1.1"
        method = parser.get_method()
        if method == b"CONNECT":
            raise ProtocolError(501, "not_implemented", "CONNECT is not supported: this server is no proxy")
        length = expect = deadline = None
        transfer_codings = []
        hosts = content_types = 0
        headers = []
        for name, value in self.headers:
            kind = _FIELDS.get(name.lower())
            if kind is not None:
                if kind == _LENGTH:
                    length = int(value)     # llhttp has checked it: digits, one value
                elif kind == _TYPE:
                    content_types += 1
                elif kind == _HOST:
                    hosts += 1
                elif kind == _CODING:
                    transfer_codings += value.split(b",")
                elif kind == _EXPECT:
                    expect = value if expect is None else expect + b"," + value
                else:
                    deadline = value
            headers.append((name.decode("latin-1"), value.rstrip(b" \t").decode("latin-1")))
        if hosts > 1:
            raise ProtocolError(400, "bad_request", "more than one Host field")
        if content_types > 1:
            raise ProtocolError(400, "bad_request", "more than one Content-Type field")
        if transfer_codings:
            if version == "1.0":
                raise ProtocolError(400, "bad_request", "Transfer-Encoding in an HTTP/1.0 request")
            if transfer_codings[-1].strip(b" \t").lower() != b"chunked":
                # RFC 9112 section 6.3: no way to tell where the body ends.
                raise ProtocolError(400, "bad_request", "Transfer-Encoding does not end with chunked")
            if len(transfer_codings) != 1:
                raise ProtocolError(501, "unsupported_transfer_coding", "the only transfer coding supported is chunked")
            self.chunked = True
            self.chunk_data = True
        limit = self.limits.body_bytes
        if length is not None and length > limit:
            raise ProtocolError(413, "body_too_large", f"the body has {length} bytes; the limit is {limit}")
        has_body = self.chunked or bool(length)
        if parser.should_upgrade() and has_body:
            raise ProtocolError(400, "upgrade_not_supported", "protocol upgrades are not supported")
        if expect is not None and version == "1.1":
            if expect.strip(b" \t").lower() != b"100-continue":
                raise ProtocolError(417, "expectation_failed", "only Expect: 100-continue is supported")
            self.continue_due = has_body
        url = self.url
        if url[:1] == b"/" and b"%" not in url and b"?" not in url and b"#" not in url:
            path, query = url.decode("latin-1"), ""         # the usual target: nothing to decode
        else:
            path, query = parse_target(method, url)
        request = Request(method.decode("latin-1"), url.decode("latin-1"), version, path, query, headers, self.now)
        if deadline is not None:
            if not deadline.isdigit() or len(deadline) > 12:
                raise ProtocolError(400, "invalid_deadline",
                                    "x-envoy-expected-rq-timeout-ms must be a whole number of milliseconds")
            milliseconds = int(deadline)
            if milliseconds:                # 0: no deadline, as in Envoy's route configuration
                request.deadline = self.now + milliseconds / 1000
        self.request = request
        self.section_bytes = 0              # the trailer section has its own budget
        self.section_fields = 0

    def on_body(self, body):
        self.continue_due = False           # the client did not wait for it
        self.chunk_data = True
        self.body_bytes += len(body)
        if self.body_bytes > self.limits.body_bytes:
            raise ProtocolError(413, "body_too_large", f"the body is over {self.limits.body_bytes} bytes")
        self.body.append(body)

    def on_chunk_header(self):
        self.fresh = True
        self.chunk_data = False

    def on_message_complete(self):
        request = self.request
        body = self.body
        request.body = body[0] if len(body) == 1 else b"".join(body)
        request.keep_alive = self.parser.should_keep_alive()
        request.received = self.now         # complete: from here on it waits only for us
        self.requests.append(request)
        self.request = None
        self.message_started = None
        self.continue_due = False
        if not request.keep_alive:
            self.reading = False            # RFC 9112 section 9.6: nothing after it is processed
