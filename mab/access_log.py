"""The request id (X-Request-ID) and the JSON access log.

Every response carries ``X-Request-ID``: the client's own, when it sent a
sane one (1 to 128 visible ASCII characters, RFC 9110 section 5.6.2's
token characters and more, but no space or control character, so it
cannot split a log line or a header), else a new one, the hex of a random
UUID (version 4, RFC 9562 section 5.4). The app (mab.web.App) sets it and
leaves it in ``environ["mab.request_id"]``.

With ``MAB_ACCESS_LOG=1`` gunicorn logs each request through
``JsonAccessLogger`` (gunicorn's ``logger_class``), one JSON object a line:
gunicorn's own ``access_log_format`` substitutes strings unescaped, so a
path with a quote in it would break a JSON format string.
"""

import datetime
import random

import orjson
from gunicorn.glogging import Logger

REQUEST_ID_KEY = "mab.request_id"
MAX_REQUEST_ID = 128
# uuid4: version 4 in bits 76-79, variant 10 in bits 62-63 (RFC 9562 section 5.4).
_UUID4_CLEAR = ~((0xF << 76) | (0x3 << 62))
_UUID4_SET = (0x4 << 76) | (0x2 << 62)


def new_request_id():
    """32 lowercase hex digits of a random version-4 UUID.

    From random.getrandbits (reseeded in every forked child by Python
    itself): a request id must be unique, not secret, and uuid.uuid4() costs
    4 us, 2% of a request."""
    return f"{random.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET:032x}"


def request_id(environ):
    """The request's X-Request-ID if it is sane, else a new one."""
    given = environ.get("HTTP_X_REQUEST_ID")
    if given and len(given) <= MAX_REQUEST_ID and given.isascii() and given.isprintable() and " " not in given:
        return given
    return new_request_id()


class JsonAccessLogger(Logger):
    """gunicorn's logger, with one JSON line per request in the access log:
    time, request_id, method, path, query, status, duration_seconds, bytes,
    remote, and for /predict the model and items."""

    def access(self, resp, req, environ, request_time):
        if not self.access_log_enabled:
            return
        # Not imported at module level: gunicorn loads this class in the
        # master, which must not import prometheus_client before it sets
        # PROMETHEUS_MULTIPROC_DIR.
        from mab.metrics import MODEL_KEY, PREDICTION_KEY

        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        prediction = environ.get(PREDICTION_KEY)
        if isinstance(request_time, datetime.timedelta):
            request_time = request_time.total_seconds()
        record = {
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
            "request_id": environ.get(REQUEST_ID_KEY),
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "query": environ.get("QUERY_STRING") or None,
            "status": int(status) if str(status).isdigit() else status,
            "duration_seconds": round(request_time, 6),
            "bytes": getattr(resp, "sent", None),
            "remote": environ.get("REMOTE_ADDR"),
            "model": environ.get(MODEL_KEY),
            "items": prediction[0] if prediction is not None else None,
        }
        try:
            self.access_log.info(orjson.dumps(record).decode())
        except Exception:
            self.exception("access log")
