"""HTTP/1.1 responses as bytes: the application's, and the server's own errors.

``encode_response`` frames a WSGI application's answer; ``error_response``
is the server's refusal, always with the JSON error body the application
uses too: ``{"error": {"code": ..., "message": ...}}``.
"""

import re

REASONS = {
    100: "Continue", 200: "OK", 204: "No Content", 304: "Not Modified", 400: "Bad Request",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required",
    413: "Content Too Large", 414: "URI Too Long", 415: "Unsupported Media Type", 417: "Expectation Failed",
    422: "Unprocessable Content", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable", 505: "HTTP Version Not Supported",
}

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

_CONTROL_TEXT = re.compile(r"[\x00-\x1f\x7f]")


class InvalidResponse(Exception):
    """The application gave a response that cannot be sent (a status or
    header with CR, LF or another control character)."""


def error_body(code, message):
    """The JSON error document, ``{"error": {"code": ..., "message": ...}}``, as bytes."""
    message = message.replace("\\", "\\\\").replace('"', '\\"')
    message = _CONTROL_TEXT.sub(lambda m: "\\u%04x" % ord(m.group()), message)
    return b'{"error":{"code":"%s","message":"%s"}}' % (code.encode(), message.encode("utf-8", "replace"))


def error_response(status, code, message, *, close=True, extra=b""):
    """A complete response with a JSON error body; ``extra`` is more header
    lines (each ending in CRLF). With ``close`` it says ``Connection: close``."""
    body = error_body(code, message)
    return b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s%s\r\n%s" % (
        status, REASONS.get(status, "Error").encode(), len(body), extra,
        b"Connection: close\r\n" if close else b"", body,
    )


def encode_response(request, status, headers, body_parts, sized, keep_alive, date):
    """The bytes of the response to ``request`` and whether the connection stays open.

    ``status`` is the WSGI status line ("200 OK"), ``headers`` [(name,
    value)] str, ``body_parts`` the body as a list of bytes, ``sized``
    whether the application gave it whole (a list or tuple: its length is
    known), ``keep_alive`` whether the server would keep the connection,
    ``date`` the Date value (bytes). Framing is the server's: the
    application's Connection and Transfer-Encoding fields are dropped; a
    body without Content-Length gets one when sized, else chunked coding in
    HTTP/1.1, else (HTTP/1.0) the close ends it. Raises InvalidResponse for
    a status or field holding CR, LF or NUL (response splitting).
    Returns (bytes, keep_alive, body length).
    """
    code = int(status[:3])
    lines = ["HTTP/1.1 ", status, "\r\n"]
    count = 1
    has_length = False
    for name, value in headers:
        lowered = name.lower()
        if lowered == "content-length":
            has_length = True
        elif lowered == "connection" or lowered == "transfer-encoding":
            continue
        lines += (name, ": ", value, "\r\n")
        count += 1
    text = "".join(lines)
    # Each line ends in the one CRLF put there above: any other CR, LF or NUL
    # came from the application and could split the response.
    if text.count("\n") != count or text.count("\r") != count or "\0" in text:
        raise InvalidResponse("the status or a header holds CR, LF or NUL")
    head = [text.encode("latin-1")]
    body = body_parts[0] if len(body_parts) == 1 else b"".join(body_parts)
    no_body = code < 200 or code == 204 or code == 304 or request.method == "HEAD"
    chunked = False
    if not has_length and not no_body:
        if sized:
            head += (b"Content-Length: ", str(len(body)).encode(), b"\r\n")
        elif request.version == "1.1":
            chunked = True
            head.append(b"Transfer-Encoding: chunked\r\n")
        else:
            keep_alive = False              # HTTP/1.0 without a length: the close ends the body
    head += (b"Date: ", date, b"\r\n")
    if not keep_alive:
        head.append(b"Connection: close\r\n")
    elif request.version == "1.0":
        head.append(b"Connection: keep-alive\r\n")
    head.append(b"\r\n")
    if no_body:
        return b"".join(head), keep_alive, 0
    if chunked:
        chunks = [b"%x\r\n%s\r\n" % (len(part), part) for part in body_parts if part]
        return b"".join(head) + b"".join(chunks) + b"0\r\n\r\n", keep_alive, len(body)
    return b"".join(head) + body, keep_alive, len(body)
