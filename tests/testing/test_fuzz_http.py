"""mab.testing.fuzz_http: it passes on the protocol as it is, and it catches
the faults it exists to catch (each put back into the protocol here)."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mab.http import protocol, request, response
from mab.testing.fuzz_http import FuzzFailure, fuzz_one_input

FRAGMENTS = [
    b"GET / HTTP/1.1\r\n", b"POST /p HTTP/1.1\r\n", b"HEAD / HTTP/1.0\r\n", b"GET http://h:1/x?y HTTP/1.1\r\n",
    b"Host: a\r\n", b"Content-Length: 3\r\n", b"Content-Length: 0\r\n", b"Transfer-Encoding: chunked\r\n",
    b"Expect: 100-continue\r\n", b"Connection: close\r\n", b"Connection: keep-alive\r\n",
    b"Connection: Upgrade\r\nUpgrade: h2c\r\n", b"x-envoy-expected-rq-timeout-ms: 20\r\n",
    b"X-Long: " + b"a" * 150 + b"\r\n", b"\r\n", b"abc", b"3\r\nabc\r\n", b"0\r\n\r\n", b"0\r\nX-T: 1\r\n\r\n",
    b"\x00", b" ", b"\r", b"\n", b"%zz", b"#",
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=8, max_size=8), st.lists(st.sampled_from(FRAGMENTS), max_size=30))
def test_request_like_input(seed, fragments):
    fuzz_one_input(seed + b"".join(fragments))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes(data):
    fuzz_one_input(data)


def fails_on_some_seed(payload, seeds=range(40)):
    for seed in seeds:
        try:
            fuzz_one_input(seed.to_bytes(8, "big") + payload)
        except FuzzFailure:
            return True
    return False


def test_it_catches_requests_dropped_before_an_error(monkeypatch):
    refuse = protocol.HttpConnection.refuse

    def refuse_and_drop(self, error):
        self.requests.clear()           # the fault of issue 9: the valid first request is lost
        refuse(self, error)

    monkeypatch.setattr(protocol.HttpConnection, "refuse", refuse_and_drop)
    assert fails_on_some_seed(b"GET /health HTTP/1.1\r\n\r\n\x00")


def test_it_catches_an_early_100_continue(monkeypatch):
    on_headers_complete = protocol.HttpConnection.on_headers_complete

    def continue_at_once(self):
        on_headers_complete(self)
        if self.continue_due:
            self.out += response.CONTINUE    # before the answers to earlier requests
            self.continue_due = False

    monkeypatch.setattr(protocol.HttpConnection, "on_headers_complete", continue_at_once)
    assert fails_on_some_seed(b"GET /health HTTP/1.1\r\n\r\nPOST /p HTTP/1.1\r\nContent-Length: 3\r\n"
                              b"Expect: 100-continue\r\n\r\n")


def test_it_catches_a_500_refusal(monkeypatch):
    def on_url(self, url):
        raise request.ProtocolError(500, "internal_error", "oops")

    monkeypatch.setattr(protocol.HttpConnection, "on_url", on_url)
    assert fails_on_some_seed(b"GET / HTTP/1.1\r\n\r\n")


def test_it_lets_an_exception_of_the_protocol_through(monkeypatch):
    def on_url(self, url):
        raise KeyError("a bug")

    monkeypatch.setattr(protocol.HttpConnection, "on_url", on_url)
    with pytest.raises(KeyError):
        fuzz_one_input(bytes(8) + b"GET / HTTP/1.1\r\n\r\n")


def test_it_catches_parsing_that_depends_on_the_reads(monkeypatch):
    check_held = protocol.HttpConnection._check_held

    def count_every_byte(self, data):
        self.in_request_line = False     # the earlier fault: a body's tail counted as a field
        check_held(self, data)

    monkeypatch.setattr(protocol.HttpConnection, "_check_held", count_every_byte)
    assert fails_on_some_seed(b"POST / HTTP/1.1\r\nContent-Length: 300\r\n\r\n" + b"z" * 300 + b"GET /" + b"b" * 200
                              + b" HTTP/1.1\r\n\r\n")


def test_it_catches_a_response_out_of_order(monkeypatch):
    next_request = protocol.HttpConnection.next_request

    def last_first(self):
        if not self.running and len(self.requests) > 1:
            self.requests.rotate(-1)
        return next_request(self)

    monkeypatch.setattr(protocol.HttpConnection, "next_request", last_first)
    assert fails_on_some_seed(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n")
