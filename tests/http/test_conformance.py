"""HTTP/1.1 conformance of mab's worker, side by side with gunicorn's sync worker.

Every case sends raw bytes on one connection to both servers (real gunicorn
processes with the app, started once for the module) and checks the
statuses in order and the state of the connection afterwards: closed by the
server, or open (shown by answering one more request). Where our worker
deliberately answers otherwise than gunicorn's sync worker, the case says
both outcomes and why, and docs/reliability.md ("HTTP conformance") lists
the case; test_every_difference_is_documented holds the two together.

gunicorn's sync worker closes the connection after every response (it does
no keep-alive), so of pipelined requests it answers only the first: that
difference is the same in many cases and is the reason given there.
"""

import os
import re
import socket
import time
from dataclasses import dataclass

import pytest

from tests.http.rawclient import Client, error_code
from tests.serving import ROOT, Server

BODY = b'{"item_ids":["item-000001","item-000002"],"seed":7}'
NO_KEEP_ALIVE = "gunicorn's sync worker closes every connection after one response"
LAZY_BODY = ("gunicorn reads a body only when the app does, and the app refuses the request first "
             "(no Content-Type: 415; chunked: 411), so the bad framing goes unseen before the close")
CHUNKED_411 = ("the app requires Content-Length; our worker reads a chunked body whole and "
               "passes its length, gunicorn's passes no length")


def get(path=b"/health", version=b"1.1", extra=b""):
    return b"GET %s HTTP/%s\r\nHost: t\r\n%s\r\n" % (path, version, extra)


def post(body=BODY, extra=b"", version=b"1.1", path=b"/predict"):
    return (b"POST %s HTTP/%s\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
            % (path, version, len(body), extra, body))


def chunked(body=BODY, extra=b"", trailers=b"", size_line=None):
    middle = len(body) // 2
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:middle], body[middle:]))
    return (b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n%s\r\n%s0\r\n%s\r\n" % (extra, chunks, trailers))


@dataclass(frozen=True)
class Outcome:
    statuses: tuple
    closed: bool                # else the connection stays open for another request
    codes: tuple = ()           # our JSON error codes, in order (checked for our worker only)


@dataclass(frozen=True)
class Case:
    id: str
    data: bytes
    mab: Outcome
    sync: Outcome = None        # None: gunicorn's sync worker answers the same
    why: str = ""               # why our answer differs from the sync worker's


def same(statuses, closed=True, codes=()):
    return Outcome(tuple(statuses), closed, tuple(codes))


OPEN, CLOSED = False, True

CASES = [
    # -- framing: Content-Length and Transfer-Encoding ----------------------------------
    Case("cl-body", post(), same([200], OPEN), same([200]), NO_KEEP_ALIVE),
    Case("cl-zero-get", get(extra=b"Content-Length: 0\r\n"), same([200], OPEN), same([200]), NO_KEEP_ALIVE),
    Case("cl-body-on-get", get(extra=b"Content-Length: 3\r\n") + b"abc", same([200], OPEN), same([200]),
         NO_KEEP_ALIVE),
    Case("cl-and-te", b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"0\r\n\r\n", same([400], codes=["bad_request"])),
    Case("cl-twice-differing", b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
         b"hello!", same([400])),
    Case("cl-twice-same", b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"
         b"hello", same([400])),
    Case("cl-list", b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 5\r\n\r\nhello", same([400])),
    Case("cl-plus", b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nhello", same([400])),
    Case("cl-minus", b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", same([400])),
    Case("cl-underscore", b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: 0_5\r\n\r\nhello", same([400])),
    Case("cl-overflow", b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
         b"Content-Length: 99999999999999999999999\r\n\r\n", same([400]), same([413]),
         "llhttp refuses a Content-Length past 64 bits as malformed; gunicorn takes any digits and the app "
         "refuses the size"),
    Case("te-chunked", chunked(), same([200], OPEN), same([411]), CHUNKED_411),
    Case("te-chunked-uppercase", chunked().replace(b"chunked", b"CHUNKED"), same([200], OPEN), same([411]),
         CHUNKED_411),
    Case("te-gzip-chunked", chunked().replace(b"chunked", b"gzip, chunked"), same([501], codes=["unsupported_transfer_coding"]),
         same([411]), "we decode no coding but chunked and refuse the others (RFC 9112 6.1); gunicorn passes "
         "the still-gzipped body on"),
    Case("te-gzip-then-chunked-fields", chunked().replace(b"Transfer-Encoding: chunked\r\n",
         b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"), same([501]), same([411]),
         "we decode no coding but chunked and refuse the others (RFC 9112 6.1)"),
    Case("te-chunked-not-last", chunked().replace(b"chunked", b"chunked, gzip"), same([400])),
    Case("te-identity", b"POST /predict HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity\r\n\r\n", same([400])),
    Case("te-identity-chunked", chunked().replace(b"chunked", b"identity, chunked"), same([501]), same([411]),
         "we decode no coding but chunked and refuse the others (RFC 9112 6.1)"),
    Case("te-chunked-twice", chunked().replace(b"chunked", b"chunked, chunked"), same([400])),
    Case("te-in-http-1.0", chunked().replace(b"HTTP/1.1", b"HTTP/1.0"), same([400], codes=["bad_request"])),
    Case("chunk-size-not-hex", b"POST /predict HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
         same([400]), same([415]), LAZY_BODY),
    Case("chunk-size-plus", b"POST /predict HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n"
         b"0\r\n\r\n", same([400]), same([415]), LAZY_BODY),
    Case("chunk-size-space", b"POST /predict HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n"
         b"0\r\n\r\n", same([400]), same([415]), LAZY_BODY),
    Case("chunk-size-overflow", b"POST /predict HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n", same([400]), same([415]), LAZY_BODY),
    Case("chunk-data-too-long", b"POST /predict HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n"
         b"helloXX\r\n0\r\n\r\n", same([400]), same([415]), LAZY_BODY),
    Case("chunk-extension-bare-cr", b"POST /predict HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"5;a=b\rc\r\nhello\r\n0\r\n\r\n", same([400]), same([415]), LAZY_BODY),
    Case("chunk-extension", chunked().replace(b"\r\n0\r\n", b"\r\n0;name=value\r\n"), same([200], OPEN), same([411]),
         CHUNKED_411),
    # -- trailers: never merged into the header fields ----------------------------------
    Case("trailer-content-type", chunked(trailers=b"Content-Type: text/plain\r\n"), same([200], OPEN), same([411]),
         CHUNKED_411),
    Case("trailer-content-length", chunked(trailers=b"Content-Length: 99\r\n"), same([400]), same([411]),
         CHUNKED_411),
    Case("trailer-obs-fold", chunked(trailers=b"X-A: 1\r\n 2\r\n"), same([400]), same([411]), CHUNKED_411),
    # -- pipelining, and requests before an error ---------------------------------------
    Case("pipeline-in-order", get() + post() + get(b"/ready") + get(b"/nope"), same([200, 200, 200, 404], OPEN),
         same([200]), NO_KEEP_ALIVE),
    Case("pipeline-then-nul", get() + b"\x00", same([200, 400], codes=["bad_request"]), same([200]), NO_KEEP_ALIVE),
    Case("pipeline-then-garbage", get() + get() + b"GARBAGE\r\n\r\n", same([200, 200, 400]), same([200]),
         NO_KEEP_ALIVE),
    Case("pipeline-then-cl-and-te", get() + b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", same([200, 400]), same([200]), NO_KEEP_ALIVE),
    Case("pipeline-then-huge-header", get() + get(extra=b"X-Big: " + b"a" * 9000 + b"\r\n"),
         same([200, 431], codes=["header_too_large"]), same([200]), NO_KEEP_ALIVE),
    Case("pipeline-then-413", get() + b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
         b"Content-Length: 999999999\r\n\r\n", same([200, 413], codes=["body_too_large"]), same([200]), NO_KEEP_ALIVE),
    Case("pipeline-app-error-keeps-connection", post(b"{not json") + get(), same([400, 200], OPEN),
         same([400]), NO_KEEP_ALIVE),
    Case("close-then-more", get(extra=b"Connection: close\r\n") + get(), same([200])),
    Case("close-then-garbage", get(extra=b"Connection: close\r\n") + b"\x00\x01garbage", same([200])),
    Case("leading-crlf", b"\r\n" + get(), same([200], OPEN), same([200]), NO_KEEP_ALIVE),
    # -- HTTP/1.0 ---------------------------------------------------------------------------
    Case("http-1.0", get(version=b"1.0"), same([200])),
    Case("http-1.0-keep-alive", get(version=b"1.0", extra=b"Connection: keep-alive\r\n") * 2, same([200, 200], OPEN),
         same([200]), NO_KEEP_ALIVE),
    Case("http-1.0-keep-alive-chunked", chunked(extra=b"Connection: keep-alive\r\n").replace(b"HTTP/1.1", b"HTTP/1.0")
         + get(version=b"1.0"), same([400])),
    Case("http-1.0-expect-ignored", post(version=b"1.0", extra=b"Expect: 100-continue\r\n"), same([200])),
    Case("http-1.0-no-host", b"GET /health HTTP/1.0\r\n\r\n", same([200])),
    Case("http-1.2", get(version=b"1.2"), same([200], OPEN), same([200]), NO_KEEP_ALIVE),
    Case("http-0.9", get(version=b"0.9"), same([505], codes=["http_version_not_supported"]), same([400]),
         "RFC 9110 15.6.6: 505 for a major version we do not speak; gunicorn says 400"),
    Case("http-2.0", get(version=b"2.0"), same([505]), same([400]),
         "RFC 9110 15.6.6: 505 for a major version we do not speak; gunicorn says 400"),
    Case("http-version-garbage", b"GET /health HTTP/x.y\r\n\r\n", same([400])),
    Case("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", same([400])),
    # -- the request target -------------------------------------------------------------
    Case("target-absolute", get(b"http://example.com/health"), same([200], OPEN), same([200]), NO_KEEP_ALIVE),
    Case("target-absolute-https-query", get(b"https://example.com:8443/health?x=1"), same([200], OPEN), same([200]),
         NO_KEEP_ALIVE),
    Case("target-absolute-bad-port", get(b"http://t:99999/health"), same([400], codes=["invalid_target"]),
         same([200]), "we refuse a port outside 0-65535; gunicorn ignores the authority"),
    Case("target-absolute-ftp", get(b"ftp://t/health"), same([400], codes=["invalid_target"]), same([200]),
         "we take absolute-form targets of http and https only; gunicorn takes any scheme"),
    Case("target-authority-form", b"GET example.com:80 HTTP/1.1\r\nHost: t\r\n\r\n", same([400])),
    Case("target-relative", b"GET health HTTP/1.1\r\nHost: t\r\n\r\n", same([400])),
    Case("target-asterisk-get", b"GET * HTTP/1.1\r\nHost: t\r\n\r\n", same([400])),
    Case("target-asterisk-options", b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n", same([404], OPEN), same([404]),
         NO_KEEP_ALIVE),
    Case("target-connect", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
         same([501], codes=["not_implemented"]), same([404]),
         "we are no proxy and refuse CONNECT (RFC 9110 9.3.6: 501); gunicorn hands it to the app"),
    Case("target-fragment", get(b"/health#top"), same([400], codes=["invalid_target"]), same([200]),
         "RFC 9112 3.2: a request target has no fragment; gunicorn drops it"),
    Case("target-percent-decoded", get(b"/hea%6Cth"), same([200], OPEN), same([200]), NO_KEEP_ALIVE),
    Case("target-percent-malformed", get(b"/health%zz"), same([400], codes=["invalid_target"]), same([404]),
         "RFC 3986 2.1: % must be followed by two hex digits; gunicorn passes it on"),
    Case("target-percent-nul", get(b"/health%00"), same([400], codes=["invalid_target"]), same([404]),
         "a path that decodes to control characters names nothing here; gunicorn passes it on"),
    Case("target-raw-nul", b"GET /health\x00 HTTP/1.1\r\nHost: t\r\n\r\n", same([400])),
    Case("target-raw-control", b"GET /he\x01alth HTTP/1.1\r\nHost: t\r\n\r\n", same([400])),
    Case("target-raw-del", b"GET /he\x7falth HTTP/1.1\r\nHost: t\r\n\r\n", same([400])),
    Case("target-non-ascii", b"GET /h\xc3\xa9 HTTP/1.1\r\nHost: t\r\n\r\n", same([400])),
    Case("target-too-long", get(b"/" + b"a" * 5000), same([414], codes=["uri_too_long"])),
    Case("target-empty", b"GET  HTTP/1.1\r\nHost: t\r\n\r\n", same([400])),
    Case("target-double-slash", get(b"//health"), same([200], OPEN), same([200]), NO_KEEP_ALIVE),
    # -- methods ------------------------------------------------------------------------
    Case("method-lowercase", b"get /health HTTP/1.1\r\nHost: t\r\n\r\n", same([400])),
    Case("method-unknown", b"FOO /health HTTP/1.1\r\nHost: t\r\n\r\n", same([400], codes=["bad_request"])),
    Case("method-head", b"HEAD /health HTTP/1.1\r\nHost: t\r\n\r\n", same([405], OPEN), same([405]),
         NO_KEEP_ALIVE),
    # -- header fields ------------------------------------------------------------------
    Case("host-twice", get(extra=b"Host: u\r\n"), same([400], codes=["bad_request"]), same([400])),
    Case("host-missing-1.1", b"GET /health HTTP/1.1\r\n\r\n", same([200], OPEN), same([200]), NO_KEEP_ALIVE),
    Case("content-type-twice", post(extra=b"Content-Type: text/plain\r\n"), same([400], codes=["bad_request"]),
         same([400])),
    Case("field-space-before-colon", get(extra=b"X-A : 1\r\n"), same([400])),
    Case("field-obs-fold", get(extra=b"X-A: 1\r\n 2\r\n"), same([400])),
    Case("field-bare-lf", b"GET /health HTTP/1.1\r\nHost: t\nX-A: 1\r\n\r\n", same([400])),
    Case("field-bare-cr", b"GET /health HTTP/1.1\r\nHost: t\rX-A: 1\r\n\r\n", same([400])),
    Case("field-nul", get(extra=b"X-A: a\x00b\r\n"), same([400])),
    Case("field-bel", get(extra=b"X-A: a\x07b\r\n"), same([400])),
    Case("field-del", get(extra=b"X-A: a\x7fb\r\n"), same([400])),
    Case("field-name-not-token", get(extra=b"X\xff: a\r\n"), same([400])),
    Case("field-obs-text-value", get(extra=b"X-A: caf\xe9\r\n"), same([200], OPEN), same([200]), NO_KEEP_ALIVE),
    Case("upgrade-ignored", get(extra=b"Upgrade: websocket\r\nConnection: Upgrade\r\n") + get(),
         same([200, 200], OPEN), same([200]), NO_KEEP_ALIVE),
    Case("upgrade-with-body", post(extra=b"Upgrade: websocket\r\nConnection: Upgrade\r\n"),
         same([400], codes=["upgrade_not_supported"]), same([200]),
         "llhttp leaves the body of an upgrade request unread, so we refuse it; gunicorn ignores the Upgrade"),
    # -- interim responses ----------------------------------------------------------------
    Case("expect-with-body-sent", post(extra=b"Expect: 100-continue\r\n"), same([200], OPEN), same([100, 200]),
         "RFC 9110 10.1.1: we omit the 100 once the body is in; gunicorn's sync worker sends it anyway, "
         "and closes"),
    Case("expect-unknown", post(extra=b"Expect: fly\r\n"), same([417], codes=["expectation_failed"])),
    Case("expect-on-get", get(extra=b"Expect: 100-continue\r\n"), same([200], OPEN), same([100, 200]),
         "no 100 for a request without a body: nothing to continue with"),
    Case("expect-over-limit", b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
         b"Expect: 100-continue\r\nContent-Length: 999999999\r\n\r\n", same([413], codes=["body_too_large"]),
         same([100, 413]), "we refuse a body over the limit instead of inviting it; gunicorn sends 100 "
         "before the app refuses"),
    # -- limits -------------------------------------------------------------------------
    Case("field-too-long", get(extra=b"X-Big: " + b"a" * 9000 + b"\r\n"), same([431], codes=["header_too_large"])),
    Case("fields-too-many", get(extra=b"".join(b"X-%d: 1\r\n" % i for i in range(120))),
         same([431], codes=["too_many_headers"])),
    Case("fields-over-64k", get(extra=b"".join(b"X-%d: %s\r\n" % (i, b"a" * 4000) for i in range(20))),
         same([431], codes=["headers_too_large"]), same([200]),
         "we hold at most 64 KiB of header fields; gunicorn allows limit_request_fields x "
         "limit_request_field_size (800 KiB)"),
    Case("body-over-limit-cl", b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
         b"Content-Length: 999999999\r\n\r\n", same([413], codes=["body_too_large"])),
    Case("trailers-too-many", chunked(trailers=b"".join(b"X-%d: 1\r\n" % i for i in range(120))),
         same([431], codes=["too_many_headers"]), same([411]), CHUNKED_411),
]

BY_ID = {case.id: case for case in CASES}
assert len(BY_ID) == len(CASES), "case ids are unique"


def _worker_settings(data_csv, tmp_path, worker, **env):
    settings = {
        "MAB_DATA": str(data_csv),
        "MAB_CACHE_DIR": str(tmp_path / "cache"),
        "MAB_WORKER_CLASS": worker,
        "WEB_CONCURRENCY": "1",
    }
    settings.update(env)
    return Server(tmp_path, settings)


def start_pair(tmp_path_factory, data_csv, **env):
    """Our worker and gunicorn's sync worker, started together, as {"mab": ..., "sync": ...}."""
    servers = {
        "mab": _worker_settings(data_csv, tmp_path_factory.mktemp("mab"), "mab.worker.HttptoolsWorker", **env),
        "sync": _worker_settings(data_csv, tmp_path_factory.mktemp("sync"), "sync", **env),
    }
    try:
        for server in servers.values():
            server.start()
        for server in servers.values():
            server.wait_ready()
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    return servers


@pytest.fixture(scope="module")
def servers(tmp_path_factory, data_csv):
    servers = start_pair(tmp_path_factory, data_csv)
    yield servers
    for server in servers.values():
        server.stop()


def expected(case, worker):
    return case.sync if worker == "sync" and case.sync is not None else case.mab


def check_outcome(client, worker, outcome, label, method="GET"):
    got = []
    try:
        for _ in outcome.statuses:
            got.append(client.response(method))
    except (ConnectionError, OSError) as exc:
        raise AssertionError(f"{label}: got {[g[0] for g in got]} then {exc!r}; expected {outcome.statuses}")
    assert tuple(status for status, _, _ in got) == outcome.statuses, label
    if worker == "mab" and method != "HEAD":
        codes = []
        for status, headers, body in got:
            if status >= 400:
                # Every error of ours, the worker's and the app's, is JSON.
                assert headers["content-type"] == "application/json", label
                codes.append(error_code(body))
        if outcome.codes:
            assert tuple(codes[-len(outcome.codes):]) == outcome.codes, label
    if outcome.closed:
        assert client.closed(timeout=5), f"{label}: the connection should close after {outcome.statuses}"
    else:
        client.send(get())
        status, _, _ = client.response()
        assert status == 200, f"{label}: the connection should stay open"


@pytest.mark.parametrize("worker", ["mab", "sync"])
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_case(servers, worker, case):
    client = Client(servers[worker].port)
    try:
        client.send(case.data)
    except (BrokenPipeError, ConnectionResetError):
        pass    # the answer came before all of it was taken
    try:
        method = case.data.split(b" ", 1)[0].decode("latin-1")
        check_outcome(client, worker, expected(case, worker), f"{case.id} on {worker}", method)
    finally:
        client.close()


def test_every_difference_is_documented():
    """Each case where gunicorn's sync worker answers otherwise gives a reason,
    and docs/reliability.md names every such case but the keep-alive ones."""
    with open(os.path.join(ROOT, "docs", "reliability.md")) as f:
        doc = f.read()
    section = doc.split("## HTTP conformance", 1)[1].split("\n## ", 1)[0]
    for case in CASES:
        if case.sync is not None and (case.sync.statuses, case.sync.closed) != (case.mab.statuses, case.mab.closed):
            assert case.why, f"{case.id}: say why the answers differ"
            if case.why not in (NO_KEEP_ALIVE, CHUNKED_411, LAZY_BODY):
                assert f"`{case.id}`" in section, f"{case.id} is not listed in docs/reliability.md"


# -- cases that need more than one exchange ---------------------------------------------


@pytest.mark.parametrize("worker", ["mab", "sync"])
def test_expect_100_continue_before_the_body(servers, worker):
    client = Client(servers[worker].port)
    head, body = post(extra=b"Expect: 100-continue\r\n").split(b"\r\n\r\n", 1)
    client.send(head + b"\r\n\r\n")
    assert client.response()[0] == 100
    client.send(body)
    assert client.response()[0] == 200


def test_interim_response_keeps_response_order(servers):
    """A 100 Continue for a pipelined request goes out only after the final
    responses of the requests before it (RFC 9110 15.2, RFC 9112 9.3.2)."""
    client = Client(servers["mab"].port)
    head, body = post(extra=b"Expect: 100-continue\r\n").split(b"\r\n\r\n", 1)
    client.send(get() + get(b"/ready") + head + b"\r\n\r\n")
    assert [client.response()[0] for _ in range(3)] == [200, 200, 100]
    client.send(body)
    assert client.response()[0] == 200
    client.send(get())
    assert client.response()[0] == 200


def test_interim_response_on_the_sync_worker(servers):
    """gunicorn's sync worker answers only the first of pipelined requests
    (no keep-alive), so it never sends the pipelined request's 100."""
    client = Client(servers["sync"].port)
    head, _ = post(extra=b"Expect: 100-continue\r\n").split(b"\r\n\r\n", 1)
    client.send(get() + head + b"\r\n\r\n")
    assert client.response()[0] == 200
    assert client.closed()


@pytest.mark.parametrize("worker", ["mab", "sync"])
def test_half_closed_client_gets_its_answer(servers, worker):
    """A client that shuts its sending side after the request still gets the response."""
    client = Client(servers[worker].port)
    client.send(get() + get() if worker == "mab" else get())
    client.sock.shutdown(socket.SHUT_WR)
    statuses = [client.response()[0] for _ in range(2 if worker == "mab" else 1)]
    assert statuses == [200] * len(statuses)
    assert client.closed()


@pytest.mark.parametrize("worker", ["mab", "sync"])
def test_request_split_byte_by_byte(servers, worker):
    client = Client(servers[worker].port)
    for i, byte in enumerate(post()):
        client.send(bytes([byte]))
        if i % 64 == 0:
            time.sleep(0.001)
    assert client.response()[0] == 200


def worker_rss_kib(server):
    (pid,) = server.worker_pids()
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1))


def stream_header(port, total, piece=64 * 1024, pause=0.0):
    """Send a request whose one header line never ends, `total` bytes of it,
    looking for an answer after every piece (waiting up to `pause` s):
    (bytes sent when the answer came, the answer's status or None)."""
    client = Client(port)
    client.send(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Long: ")
    sent = 0
    filler = b"a" * piece
    try:
        while sent < total:
            client.send(filler)
            sent += piece
            if client.ready(pause):
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    try:
        status = client.response()[0] if client.ready(5) else None
    except (ConnectionError, OSError):
        status = None
    client.close()
    return sent, status


@pytest.mark.parametrize("worker", ["mab", "sync"])
def test_endless_header_line_is_refused_while_it_streams(servers, worker):
    """431 comes while the header line still streams, not after it ends, and
    the worker's memory does not grow with what is streamed. Ours refuses
    once the line passes limit_request_field_size (8 KiB); gunicorn's sync
    worker once its buffer passes fields x field size (800 KiB)."""
    before = worker_rss_kib(servers[worker])
    sent, status = stream_header(servers[worker].port, 4 * 1024 * 1024, pause=0.05)
    assert status == 431
    if worker == "mab":
        # The first 64 KiB piece is over the limit; a busy machine may let
        # a few more in before the worker reads.
        assert sent <= 1024 * 1024, f"answered only after {sent} bytes"
    for _ in range(4):
        stream_header(servers[worker].port, 16 * 1024 * 1024)
    grown = worker_rss_kib(servers[worker]) - before
    assert grown < 16 * 1024, f"the worker grew by {grown} KiB streaming 64 MiB of header"


# -- timeouts ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_servers(tmp_path_factory, data_csv):
    """A pair with short timeouts: 1 s for a head, 4 s for a request and for
    a silent sync worker, 1 s idle keep-alive."""
    servers = start_pair(tmp_path_factory, data_csv, MAB_TIMEOUT="4", MAB_HEAD_TIMEOUT="1", MAB_KEEPALIVE="1")
    yield servers
    for server in servers.values():
        server.stop()


@pytest.mark.parametrize("worker", ["mab", "sync"])
def test_slow_head(slow_servers, worker):
    """Ours: 408 once the head has taken longer than the head timeout, bytes
    trickling in or not. gunicorn's sync worker blocks on the client until
    the arbiter kills it for silence (timeout), and answers 500 as it dies."""
    client = Client(slow_servers[worker].port, timeout=20)
    started = time.monotonic()
    client.send(b"GET /health HTTP/1.1\r\nHost: t\r\n")
    for _ in range(4):                   # trickling bytes does not extend the time
        time.sleep(0.4)
        client.send(b"X-A: 1\r\n")
    status, _, body = client.response()
    waited = time.monotonic() - started
    if worker == "mab":
        assert (status, error_code(body)) == (408, "request_timeout")
        assert waited < 3.5, "the head timeout, not the request timeout"
    else:
        assert status == 500 and waited >= 3.5
    assert client.closed()
    slow_servers[worker].wait_ready()


@pytest.mark.parametrize("worker", ["mab", "sync"])
def test_slow_body(slow_servers, worker):
    """Ours: 408 once the request has taken longer than timeout. The sync
    worker: 500 when the arbiter kills it for silence after timeout."""
    client = Client(slow_servers[worker].port, timeout=20)
    started = time.monotonic()
    client.send(b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
    status, _, body = client.response()
    assert time.monotonic() - started >= 3.5
    if worker == "mab":
        assert (status, error_code(body)) == (408, "request_timeout")
    else:
        assert status == 500
    assert client.closed()
    slow_servers[worker].wait_ready()


@pytest.mark.parametrize("worker", ["mab", "sync"])
def test_idle_keep_alive_connection_is_closed(slow_servers, worker):
    """Ours closes an idle keep-alive connection after keepalive seconds;
    the sync worker closes every connection after its response."""
    client = Client(slow_servers[worker].port)
    client.send(get())
    assert client.response()[0] == 200
    started = time.monotonic()
    assert client.closed(timeout=6)
    idle = time.monotonic() - started
    if worker == "mab":
        assert 0.5 < idle < 4
    else:
        assert idle < 0.5
