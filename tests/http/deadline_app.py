"""A WSGI app for the worker's tests: it answers with what the worker put
in the environ about time: {"received": ..., "deadline": ..., "now": ...}
(time.monotonic() instants; deadline null when the client sent none)."""

import time

import orjson


def app(environ, start_response):
    body = orjson.dumps({
        "received": environ["mab.received"],
        "deadline": environ.get("mab.deadline"),
        "now": time.monotonic(),
    })
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
