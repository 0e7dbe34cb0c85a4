"""A parsed HTTP/1.1 request, the limits it must keep, and its target.

What ``mab.http.protocol`` produces (``Request``) or refuses
(``ProtocolError``), and the rules of the request target (RFC 9112
section 3.2, RFC 3986).
"""

import re
from urllib.parse import unquote_to_bytes

import httptools

# gunicorn's own bounds for its limit settings (gunicorn.http.message).
MAX_REQUEST_LINE = 8190
DEFAULT_FIELD_SIZE = 8190
MAX_FIELDS = 32768
# The field section (all header or all trailer lines) at most; gunicorn's
# would be fields * field_size, 800 KiB by default.
MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024

_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


class ProtocolError(Exception):
    """A request refused before the application sees it: ``status`` (int),
    ``code`` (the JSON error code) and ``message``."""

    def __init__(self, status, code, message):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class Limits:
    """What a request may not exceed, in bytes (``fields``: a count).

    ``request_line``: the request target; ``fields``: header fields (and,
    separately, trailer fields); ``field_size``: one field line;
    ``header_bytes``: the whole header (or trailer) section; ``body_bytes``:
    the decoded body.
    """

    __slots__ = ("request_line", "fields", "field_size", "header_bytes", "body_bytes")

    def __init__(self, request_line=4094, fields=100, field_size=DEFAULT_FIELD_SIZE,
                 header_bytes=MAX_HEADER_BYTES, body_bytes=DEFAULT_MAX_BODY_BYTES):
        self.request_line = request_line
        self.fields = fields
        self.field_size = field_size
        self.header_bytes = header_bytes
        self.body_bytes = body_bytes

    @classmethod
    def from_gunicorn(cls, cfg, body_bytes=None):
        """gunicorn's ``limit_request_line``, ``limit_request_fields`` and
        ``limit_request_field_size``, bounded as gunicorn bounds them (0 means
        its maximum, never unlimited: a head is always bounded)."""
        line = cfg.limit_request_line
        if line <= 0 or line > MAX_REQUEST_LINE:
            line = MAX_REQUEST_LINE
        fields = cfg.limit_request_fields
        if fields <= 0 or fields > MAX_FIELDS:
            fields = MAX_FIELDS
        size = cfg.limit_request_field_size
        if size <= 0:
            size = DEFAULT_FIELD_SIZE
        return cls(line, fields, size, max(MAX_HEADER_BYTES, size), body_bytes or DEFAULT_MAX_BODY_BYTES)


class Request:
    """One complete request.

    ``method``, ``uri`` (the raw target), ``version`` ("1.0" or "1.1"),
    ``path`` (percent-decoded, as latin-1 text, PEP 3333) and ``query``
    (raw) are str; ``headers`` is [(name, value)] as latin-1 str in arrival
    order (gunicorn's access log reads it); ``body`` is bytes, whole;
    ``keep_alive`` whether the connection may carry another request.
    ``received`` is the caller's clock when the request was complete (its
    last bytes arrived), and ``deadline`` the same clock's instant by which
    the client wants the answer (``x-envoy-expected-rq-timeout-ms`` after
    its head arrived), or None.
    """

    __slots__ = ("method", "uri", "version", "path", "query", "headers", "body", "keep_alive",
                 "received", "deadline")

    def __init__(self, method, uri, version, path, query, headers, received, deadline=None):
        self.method = method
        self.uri = uri
        self.version = version
        self.path = path
        self.query = query
        self.headers = headers
        self.body = b""
        self.keep_alive = True
        self.received = received
        self.deadline = deadline


def parse_target(method, url):
    """(path, query) of a request target (bytes), percent-decoded path as
    latin-1 text and the query raw; ProtocolError (400) for a target this
    server cannot take. RFC 9112 section 3.2: origin-form, absolute-form,
    asterisk-form (OPTIONS only); authority-form is CONNECT's, refused
    before this is called."""
    if url[:1] == b"/":
        path, _, query = url.partition(b"?")
    elif url == b"*":
        if method != b"OPTIONS":
            raise ProtocolError(400, "invalid_target", "the asterisk-form target is only for OPTIONS")
        return "*", ""
    elif b"://" in url:
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            raise ProtocolError(400, "invalid_target", "the absolute-form request target is not a valid URL")
        if (parsed.schema or b"").lower() not in (b"http", b"https") or not parsed.host:
            raise ProtocolError(400, "invalid_target", "an absolute-form target must be an http or https URL")
        path, query = parsed.path or b"/", parsed.query or b""
        if parsed.fragment is not None:
            raise ProtocolError(400, "invalid_target", "a request target has no fragment")
    else:
        raise ProtocolError(400, "invalid_target", "the request target must start with / or be an absolute URL")
    if b"#" in url:
        raise ProtocolError(400, "invalid_target", "a request target has no fragment")
    if b"%" in url:
        if _BAD_PERCENT.search(url):
            raise ProtocolError(400, "invalid_target", "malformed percent-encoding in the request target")
        path = unquote_to_bytes(path)
        if _CONTROL.search(path):
            raise ProtocolError(400, "invalid_target", "the path decodes to control characters")
    return path.decode("latin-1"), query.decode("latin-1")
