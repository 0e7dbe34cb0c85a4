"""mab.http.protocol without sockets: bytes in, requests and responses out."""

import re
import types

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mab.http.protocol import HttpConnection
from mab.http.request import Limits, ProtocolError, parse_target
from mab.http.response import CONTINUE, InvalidResponse, encode_response

SMALL = Limits(request_line=256, fields=16, field_size=128, header_bytes=1024, body_bytes=4096)
DATE = b"Thu, 01 Jan 1970 00:00:00 GMT"


def connection(limits=SMALL):
    return HttpConnection(limits)


def drain(conn):
    """Answer every request that can run now with 200 (X-Seq: its method
    and target); the output so far."""
    while (request := conn.next_request()) is not None:
        data, keep_alive, _ = encode_response(
            request, "200 OK", [("X-Seq", request.method + " " + request.uri)], [b"ok"], True,
            request.keep_alive, DATE)
        conn.respond(data, keep_alive)
    out = bytes(conn.out)
    conn.out.clear()
    return out


def statuses(out):
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", out)]


def refusal(out):
    """(status, JSON error code) of the last response in `out`."""
    head, _, body = out.rpartition(b"HTTP/1.1 ")[2].partition(b"\r\n\r\n")
    return int(head[:3]), orjson.loads(body)["error"]["code"]


# -- requests, order and interim responses ------------------------------------------------


def test_pipelined_requests_are_parsed_in_order():
    conn = connection()
    conn.receive(b"GET /a HTTP/1.1\r\n\r\nPOST /b?x=1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /c HTTP/1.1\r\n\r\n", 5.0)
    requests = []
    while (request := conn.next_request()) is not None:
        requests.append((request.method, request.path, request.query, request.body, request.received))
        conn.respond(b"", True)
    assert requests == [("GET", "/a", "", b"", 5.0), ("POST", "/b", "x=1", b"abc", 5.0), ("GET", "/c", "", b"", 5.0)]


def test_requests_before_a_framing_error_are_answered_first():
    conn = connection()
    conn.receive(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n\x00", 0.0)
    out = drain(conn)
    assert statuses(out) == [200, 200, 400]
    assert refusal(out) == (400, "bad_request")
    assert conn.closing and not conn.reading


def test_refusal_waits_for_a_running_request():
    # As with the thread pool: a request runs while a later one is refused.
    conn = connection()
    conn.receive(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nX-Big: " + b"a" * 200 + b"\r\n\r\n", 0.0)
    running = conn.next_request()
    assert running.uri == "/a" and conn.next_request() is None and not conn.out
    conn.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True)
    assert conn.next_request() is None
    assert statuses(bytes(conn.out)) == [200, 431]
    assert conn.closing


def test_continue_waits_for_earlier_answers():
    conn = connection()
    conn.receive(b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n", 0.0)
    first = conn.next_request()
    assert first.uri == "/a"
    assert conn.next_request() is None and not conn.out, "no 100 while /a runs"
    conn.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True)
    assert conn.next_request() is None
    assert bytes(conn.out).endswith(CONTINUE) and statuses(bytes(conn.out)) == [200, 100]
    conn.out.clear()
    conn.receive(b"abc", 0.0)
    request = conn.next_request()
    assert request.body == b"abc" and not conn.out


def test_no_continue_once_the_body_arrives():
    conn = connection()
    conn.receive(b"POST /b HTTP/1.1\r\nContent-Length: 6\r\nExpect: 100-continue\r\n\r\nabc", 0.0)
    assert conn.next_request() is None and not conn.out
    conn.receive(b"def", 0.0)
    assert conn.next_request().body == b"abcdef"


@pytest.mark.parametrize("head", [
    b"POST /b HTTP/1.0\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",     # ignored in HTTP/1.0
    b"GET /b HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",                            # no body to wait for
])
def test_continue_only_when_it_is_due(head):
    conn = connection()
    conn.receive(head, 0.0)
    out = drain(conn)
    assert CONTINUE not in out


def test_trailers_never_reach_the_header_fields():
    conn = connection()
    conn.receive(b"POST /p HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"2\r\n{}\r\n0\r\nContent-Type: text/plain\r\nX-Trailer: 1\r\n\r\n", 0.0)
    request = conn.next_request()
    assert request.body == b"{}"
    assert request.headers == [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")]


def test_close_ends_the_input():
    conn = connection()
    conn.receive(b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\n\r\n", 0.0)
    out = drain(conn)
    assert statuses(out) == [200] and b"Connection: close" in out
    assert conn.closing
    conn.receive(b"GET /c HTTP/1.1\r\n\r\n", 0.0)
    assert conn.next_request() is None


def test_end_of_input_answers_what_is_complete_then_closes():
    conn = connection()
    conn.receive(b"GET /a HTTP/1.1\r\n\r\nGET /b HTT", 0.0)
    conn.receive(b"", 0.0)
    assert statuses(drain(conn)) == [200]
    assert conn.closing


def test_upgrade_without_a_body_is_ignored():
    conn = connection()
    conn.receive(b"GET /a HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\nGET /b HTTP/1.1\r\n\r\n", 0.0)
    assert statuses(drain(conn)) == [200, 200]
    assert conn.reading and not conn.closing


# -- limits, counted as the bytes stream in -------------------------------------------------


def feed_in_pieces(conn, data, piece):
    for i in range(0, len(data), piece):
        conn.receive(data[i:i + piece], 0.0)
        if not conn.reading:
            return i + piece
    return len(data)


@pytest.mark.parametrize("piece", [1, 7, 64, 100])
def test_an_endless_field_line_is_refused_as_it_streams(piece):
    conn = connection()
    fed = feed_in_pieces(conn, b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 100_000, piece)
    assert fed <= 16 + 8 + SMALL.field_size + piece, "refused once the line passed its limit"
    assert refusal(drain(conn)) == (431, "header_too_large")


def test_an_endless_trailer_line_is_refused_as_it_streams():
    conn = connection()
    fed = feed_in_pieces(conn, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX: "
                         + b"b" * 100_000, 10)
    assert fed < 300
    assert refusal(drain(conn)) == (431, "header_too_large")


def test_many_short_fields_are_refused_at_the_section_limit():
    limits = Limits(request_line=256, fields=1000, field_size=128, header_bytes=1024, body_bytes=4096)
    conn = connection(limits)
    fed = feed_in_pieces(conn, b"GET / HTTP/1.1\r\n" + b"X-A: bbbbbbbbbbbb\r\n" * 1000, 50)
    assert fed < 1200
    assert refusal(drain(conn)) == (431, "headers_too_large")


@pytest.mark.parametrize(("cut", "rest"), [
    (b"GET /b HT", b"TP/1.1\r\n\r\n"),
    (b"GET /" + b"b" * 200, b" HTTP/1.1\r\n\r\n"),
    (b"GET /b HTTP/1.1\r\n", b"X-A: 1\r\n\r\n"),
    (b"GET /b HTTP/1.1\r\nX-A: 1", b"\r\n\r\n"),
])
def test_a_long_body_then_the_start_of_the_next_request_is_no_field(cut, rest):
    # A read may end a large body (no LF in it) and begin the next request:
    # the bytes held for the new request are its own, not the body's, and
    # its request line is no field.
    body = b"x" * 3000
    conn = connection()
    conn.receive(b"POST /a HTTP/1.1\r\nContent-Length: 3000\r\n\r\n" + body + cut, 0.0)
    assert conn.reading, "no refusal"
    conn.receive(rest, 0.0)
    assert statuses(drain(conn)) == [200, 200]


def test_a_request_line_in_many_reads_is_no_field():
    conn = connection()
    for piece in [b"GET /", b"a" * 100, b"b" * 100, b" HTTP/1.1\r\n", b"\r\n"]:
        conn.receive(piece, 0.0)
    assert statuses(drain(conn)) == [200]


def test_a_long_chunked_body_then_a_partial_trailer():
    body = b"y" * 3000
    conn = connection()
    conn.receive(b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nbb8\r\n" + body + b"\r\n0\r\nX-T: 1", 0.0)
    conn.receive(b"\r\n\r\n", 0.0)
    request = conn.next_request()
    assert request.body == body


@pytest.mark.parametrize(("data", "status", "code"), [
    (b"GET /" + b"a" * 300 + b" HTTP/1.1\r\n\r\n", 414, "uri_too_long"),
    (b"GET / HTTP/1.1\r\n" + b"X: 1\r\n" * 17 + b"\r\n", 431, "too_many_headers"),
    (b"POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n", 413, "body_too_large"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1001\r\n" + b"z" * 4097, 413, "body_too_large"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n" + b"X: 1\r\n" * 17 + b"\r\n", 431,
     "too_many_headers"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "bad_request"),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "bad_request"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501, "unsupported_transfer_coding"),
    (b"GET / HTTP/2.0\r\n\r\n", 505, "http_version_not_supported"),
    (b"CONNECT a:443 HTTP/1.1\r\n\r\n", 501, "not_implemented"),
    (b"GET / HTTP/1.1\r\nExpect: teapot\r\n\r\n", 417, "expectation_failed"),
    (b"GET / HTTP/1.1\r\nx-envoy-expected-rq-timeout-ms: soon\r\n\r\n", 400, "invalid_deadline"),
    (b"GET http://t:99999/ HTTP/1.1\r\n\r\n", 400, "invalid_target"),
])
def test_refusals(data, status, code):
    conn = connection()
    conn.receive(data, 0.0)
    out = drain(conn)
    assert statuses(out) == [status] and refusal(out) == (status, code)
    assert conn.closing


def test_deadline_header():
    conn = connection()
    conn.receive(b"GET /a HTTP/1.1\r\nX-Envoy-Expected-Rq-Timeout-Ms: 250\r\n\r\n"
                 b"GET /b HTTP/1.1\r\nx-envoy-expected-rq-timeout-ms: 0\r\n\r\nGET /c HTTP/1.1\r\n\r\n", 10.0)
    deadlines = []
    while (request := conn.next_request()) is not None:
        deadlines.append(request.deadline)
        conn.respond(b"", True)
    assert deadlines == [10.25, None, None]


def test_limits_from_gunicorn_settings():
    cfg = types.SimpleNamespace(limit_request_line=0, limit_request_fields=0, limit_request_field_size=0)
    limits = Limits.from_gunicorn(cfg, 1000)
    assert (limits.request_line, limits.fields, limits.field_size, limits.body_bytes) == (8190, 32768, 8190, 1000)
    cfg = types.SimpleNamespace(limit_request_line=100, limit_request_fields=5, limit_request_field_size=100_000)
    limits = Limits.from_gunicorn(cfg, None)
    assert (limits.request_line, limits.fields, limits.field_size) == (100, 5, 100_000)
    assert limits.header_bytes == 100_000, "one field of the allowed size fits"


# -- the request target ---------------------------------------------------------------------


@pytest.mark.parametrize(("method", "url", "expected"), [
    (b"GET", b"/predict", ("/predict", "")),
    (b"GET", b"/a%20b?x=%zz", None),
    (b"GET", b"/a%20b?x=1", ("/a b", "x=1")),
    (b"GET", b"//a/b?c", ("//a/b", "c")),
    (b"GET", b"/%C3%A9", ("/\xc3\xa9", "")),
    (b"GET", b"http://h:8080/p?q", ("/p", "q")),
    (b"GET", b"HTTPS://h", ("/", "")),
    (b"OPTIONS", b"*", ("*", "")),
    (b"GET", b"*", None),
    (b"GET", b"/a#b", None),
    (b"GET", b"http://h/p#f", None),
    (b"GET", b"http://h:99999/", None),
    (b"GET", b"ftp://h/", None),
    (b"GET", b"/a%00", None),
    (b"GET", b"/a%0d%0a", None),
    (b"GET", b"/a%4", None),
    (b"GET", b"a/b", None),
])
def test_parse_target(method, url, expected):
    if expected is None:
        with pytest.raises(ProtocolError) as raised:
            parse_target(method, url)
        assert raised.value.status == 400
    else:
        assert parse_target(method, url) == expected


# -- responses ------------------------------------------------------------------------------


def request(method="GET", version="1.1"):
    conn = connection()
    conn.receive(b"%s / HTTP/%s\r\nConnection: keep-alive\r\n\r\n" % (method.encode(), version.encode()), 0.0)
    return conn.next_request()


def test_response_framing():
    data, keep, length = encode_response(request(), "200 OK", [("A", "b")], [b"xy"], True, True, DATE)
    assert data == b"HTTP/1.1 200 OK\r\nA: b\r\nContent-Length: 2\r\nDate: " + DATE + b"\r\n\r\nxy"
    assert keep and length == 2
    data, keep, _ = encode_response(request(), "200 OK", [], [b"x", b"", b"yz"], False, True, DATE)
    assert data.endswith(b"Transfer-Encoding: chunked\r\nDate: " + DATE + b"\r\n\r\n1\r\nx\r\n2\r\nyz\r\n0\r\n\r\n")
    data, keep, _ = encode_response(request(version="1.0"), "200 OK", [], [b"x"], False, True, DATE)
    assert not keep and data.endswith(b"Connection: close\r\n\r\nx"), "HTTP/1.0 without a length: the close ends it"
    data, keep, _ = encode_response(request(version="1.0"), "200 OK", [], [b"x"], True, True, DATE)
    assert keep and b"Connection: keep-alive\r\n" in data
    data, _, _ = encode_response(request("HEAD"), "200 OK", [("Content-Length", "5")], [b"hello"], True, True, DATE)
    assert data.endswith(b"\r\n\r\n") and b"hello" not in data
    data, _, _ = encode_response(request(), "200 OK", [("Connection", "x"), ("Transfer-Encoding", "y")], [b""], True,
                                 False, DATE)
    assert b"Connection: close\r\n" in data and b": x" not in data and b": y" not in data


@pytest.mark.parametrize(("status", "headers"), [
    ("200 OK\r\nX-Evil: 1", []),
    ("200 OK", [("X-A", "1\r\nX-Evil: 1")]),
    ("200 OK", [("X-A\n", "1")]),
    ("200 OK", [("X-A", "a\0b")]),
])
def test_response_splitting_is_refused(status, headers):
    with pytest.raises(InvalidResponse):
        encode_response(request(), status, headers, [b""], True, True, DATE)


# -- cutting the input into reads changes nothing ------------------------------------------

_token = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
_value = st.text("abcdefghijklmnopqrstuvwxyz0123456789 ;=,/", max_size=40).map(str.strip)


@st.composite
def valid_request(draw):
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"]))
    path = "/" + draw(st.text("abcxyz019/-._~", max_size=30))
    if draw(st.booleans()):
        path += "?" + draw(st.text("abc=&019", max_size=20))
    fields = draw(st.lists(st.tuples(_token.map(lambda t: "x-" + t), _value), max_size=6))
    body = draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["length", "chunked", "none"])) if body else "none"
    lines = [f"{method} {path} HTTP/1.1"] + [f"{name}: {value}" for name, value in fields]
    if framing == "length":
        lines.append(f"Content-Length: {len(body)}")
        payload = body
    elif framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
        cut = draw(st.integers(0, len(body)))
        parts = [part for part in (body[:cut], body[cut:]) if part]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n"
        payload += b"".join(b"x-t%d: 1\r\n" % i for i in range(draw(st.integers(0, 2)))) + b"\r\n"
    else:
        payload = b""
        body = b""
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload, (method, path, body)


def parse_all(data, cuts):
    conn = connection(Limits())
    start = 0
    for end in sorted(cuts) + [len(data)]:
        if end > start:                 # b"" would be the end of input
            conn.receive(data[start:end], 0.0)
            start = end
    got = []
    while (request := conn.next_request()) is not None:
        got.append((request.method, request.uri, request.body, tuple(request.headers)))
        conn.respond(b"", True)
    return got, bytes(conn.out), conn.closing


@settings(max_examples=300, deadline=None)
@given(st.lists(valid_request(), min_size=1, max_size=5), st.data())
def test_any_cut_into_reads_parses_the_same(requests, data):
    stream = b"".join(raw for raw, _ in requests)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    whole = parse_all(stream, [])
    assert [(m, u, b) for m, u, b, _ in whole[0]] == [expected for _, expected in requests]
    assert parse_all(stream, cuts) == whole
    assert whole[1] == b"" and not whole[2], "valid requests: no refusal"
