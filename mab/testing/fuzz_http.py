"""Drive the worker's HTTP protocol with arbitrary bytes, for fuzzers.

    from mab.testing.fuzz_http import fuzz_one_input
    fuzz_one_input(data)            # bytes -> None, or raises FuzzFailure

``fuzz_one_input`` is a target for a coverage-guided fuzzer (atheris's
``atheris.Setup(sys.argv, fuzz_one_input)``, or hypothesis's ``@given``):
deterministic, no sockets, no clock, no threads. The first 8 bytes of
``data`` seed how the rest is cut into reads, when the stand-in application
answers (at once, or one request at a time as the thread pool does), how it
answers, and whether the client shuts its side at the end; the rest is what
the client sends, through a ``mab.http.protocol.HttpConnection`` with small
limits so that every limit is within reach.

It raises ``FuzzFailure`` (an AssertionError) only on a real bug:

* an exception from the protocol (any: bad input must become a refusal);
* output that is not a sequence of well-formed HTTP/1.1 responses;
* responses out of order: the n-th final response must answer the n-th
  request; a refusal must come last, after the answers to every request
  completed before it, and nothing may follow it;
* an interim 100 Continue anywhere but just before the final response of
  the request that asked for it, or for a request that did not ask;
* a 500 from the protocol (501 and 505 are proper refusals);
* a limit not kept (a target, body or request past its limit);
* a connection that is neither closing nor still reading at the end, or
  that closes without a reason;
* parse results that depend on how the input was cut into reads: the
  requests from the cut input must be those of the uncut input (fewer only
  when an answer closed the connection), and a refusal of one must be a
  refusal of the other (perhaps for another fault of the same message),
  unless the uncut input ends inside the refused message.
"""

import random

from mab.http.protocol import HttpConnection
from mab.http.request import Limits
from mab.http.response import CONTINUE, encode_response

LIMITS = Limits(request_line=256, fields=16, field_size=128, header_bytes=1024, body_bytes=4096)
DATE = b"Thu, 01 Jan 1970 00:00:00 GMT"


class FuzzFailure(AssertionError):
    """The protocol broke one of the rules in mab.testing.fuzz_http's docstring."""


def _check(condition, message):
    if not condition:
        raise FuzzFailure(message)


def _answer(request, seq, rng):
    """The stand-in application's response to `request`: its sequence
    number in X-Seq, in one of the shapes a WSGI app may give."""
    shape = rng.randrange(4)
    headers = [("X-Seq", str(seq)), ("Content-Type", "text/plain")]
    if shape == 0:
        return encode_response(request, "200 OK", headers, [b"ok"], True, request.keep_alive, DATE)
    if shape == 1:     # a generator: no length known
        return encode_response(request, "200 OK", headers, [b"o", b"", b"k"], False, request.keep_alive, DATE)
    if shape == 2:
        return encode_response(request, "204 No Content", headers, [], True, request.keep_alive, DATE)
    return encode_response(request, "404 Not Found", headers + [("Content-Length", "2")], [b"no"], True,
                           request.keep_alive, DATE)


def _run(payload, rng, cut):
    """Feed `payload` to one connection in pieces (whole unless `cut`), the
    application answering in between. Returns (connection, the requests in
    the order handed out, the output, whether the client shut its side)."""
    conn = HttpConnection(LIMITS)
    conn.closed_by_answer = False
    requests = []
    out = bytearray()
    inline = rng.random() < 0.5
    pos = 0
    now = 0.0

    def answer_due(all_of_them):
        while True:
            request = conn.next_request()
            if request is None:
                return
            requests.append(request)
            data, keep_alive, _ = _answer(request, len(requests) - 1, rng)
            conn.closed_by_answer |= not keep_alive
            conn.respond(data, keep_alive)
            if not all_of_them:
                return

    while pos < len(payload) and conn.reading:
        size = len(payload) - pos if not cut else rng.choice((1, 2, 3, 7, 16, 64, 300, 5000))
        conn.receive(payload[pos:pos + size], now)
        pos += size
        now += 0.001
        answer_due(inline or not cut)
        out += conn.out
        conn.out.clear()
    eof = not cut or rng.random() < 0.5
    if eof:
        conn.receive(b"", now)      # the client shuts its side
    answer_due(True)
    out += conn.out
    conn.out.clear()
    return conn, requests, bytes(out), eof


def _asked_to_continue(request):
    return request.version == "1.1" and any(
        name.lower() == "expect" and value.strip().lower() == "100-continue" for name, value in request.headers
    )


def _split_output(out, requests):
    """The responses in `out`: [(status, headers dict with lower-case names)],
    checking their framing."""
    responses = []
    pos = 0
    finals = 0
    while pos < len(out):
        start = pos
        end = out.find(b"\r\n\r\n", pos)
        _check(end >= 0, f"a response head without its end at {pos}")
        lines = out[pos:end].split(b"\r\n")
        _check(lines[0][:9] == b"HTTP/1.1 " and lines[0][9:12].isdigit(), f"a bad status line {lines[0][:40]!r}")
        status = int(lines[0][9:12])
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            _check(sep == b":" and name and name == name.strip(), f"a bad header line {line[:40]!r}")
            headers[name.lower().decode("latin-1")] = value.strip().decode("latin-1")
        pos = end + 4
        responses.append((status, headers))
        if status < 200:
            _check(out[start:end + 4] == CONTINUE, "an interim response other than 100 Continue")
            continue
        seq = headers.get("x-seq")
        method = requests[int(seq)].method if seq is not None else None
        finals += 1
        if status in (204, 304) or method == "HEAD":
            pass                            # no body, whatever Content-Length says
        elif "content-length" in headers:
            pos += int(headers["content-length"])
            _check(pos <= len(out), "a body shorter than its Content-Length")
        elif headers.get("transfer-encoding") == "chunked":
            while True:
                line_end = out.find(b"\r\n", pos)
                _check(line_end >= 0, "a chunk size line without its end")
                size = int(out[pos:line_end], 16)
                pos = line_end + 2 + size + 2
                _check(out[pos - 2:pos] == b"\r\n", "chunk data without CRLF")
                if size == 0:
                    break
        else:
            _check(headers.get("connection") == "close", "a body delimited by the close on a kept connection")
            pos = len(out)
    return responses


def _describe(request):
    return (request.method, request.uri, request.version, tuple(request.headers), request.body, request.keep_alive)


def fuzz_one_input(data):
    """Drive one connection with `data` (bytes); FuzzFailure on a bug (see the module docstring)."""
    if len(data) < 8:
        return
    seed, payload = data[:8], data[8:]
    whole_conn = HttpConnection(LIMITS)
    whole_conn.receive(payload, 0.0)
    whole_requests = list(whole_conn.requests)      # as parsed, before any answer could end the connection
    conn, requests, out, eof = _run(payload, random.Random(seed), cut=True)

    responses = _split_output(out, requests)
    finals = [(status, headers) for status, headers in responses if status >= 200]
    _check(len(finals) in (len(requests), len(requests) + 1), f"{len(finals)} answers to {len(requests)} requests")
    for seq, (status, headers) in enumerate(finals[:len(requests)]):
        _check(headers.get("x-seq") == str(seq), f"answer {seq} is {headers.get('x-seq')}: out of order")
    refusal = len(finals) > len(requests)
    if refusal:
        status, headers = finals[-1]
        _check("x-seq" not in headers and 400 <= status, "a final answer that no request asked for")
        _check(status != 500, "a 500 from the protocol")
        _check(headers.get("connection") == "close", "a refusal that keeps the connection")
        _check(responses[-1][0] == status, "output after the refusal")
        _check(conn.closing, "a refusal without the close")
    # A 100 Continue: only just before the final answer of a request that asked.
    for i, (status, _) in enumerate(responses):
        if status < 200 and i + 1 < len(responses):
            following, headers = responses[i + 1]
            _check(following >= 200, "two interim responses in a row")
            if "x-seq" in headers:
                _check(_asked_to_continue(requests[int(headers["x-seq"])]), "a 100 Continue nobody asked for")
    for request in requests:
        _check(len(request.uri) <= LIMITS.request_line, "a request target past its limit")
        _check(len(request.body) <= LIMITS.body_bytes, "a body past its limit")
        _check(len(request.headers) <= LIMITS.fields, "more header fields than the limit")
    if eof:
        _check(conn.closing, "the client shut its side and everything is answered, but the connection stays")
    else:
        _check(conn.closing or conn.reading, "a connection neither reading nor closing")
    # Cutting the input into reads must not change what is parsed.
    cut, whole = [_describe(r) for r in requests], [_describe(r) for r in whole_requests]
    _check(cut == whole[:len(cut)], "the requests depend on how the input was cut into reads")
    if len(cut) < len(whole):
        _check(conn.closed_by_answer and not refusal, "the input in pieces lost requests")
    if whole_conn.error is not None and not conn.closed_by_answer:
        _check(refusal, "the whole input was refused, the same input in pieces was not")
    if refusal:
        # Two faults in one message may be met in another order, but the
        # whole input must be refused too, or still be inside that message.
        _check(whole_conn.error is not None or whole_conn.message_started is not None,
               "the input in pieces was refused, the whole input was not")
