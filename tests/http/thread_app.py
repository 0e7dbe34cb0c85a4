"""A WSGI app for the worker's tests of ``MAB_INLINE_FIRST``: it answers
with the thread that ran it and how many times it was called for the
request's ``X-Key``; it lists ``/inline`` and ``/waits`` as paths to try in
the worker's loop first, and ``/waits`` raises RunOnThread when run there;
``/rogue`` raises it everywhere (a bug: the worker answers 500)."""

import collections
import threading

import orjson

from mab.http.wsgi import INLINE_KEY, RunOnThread


class App:
    inline_first_paths = frozenset({"/inline", "/waits"})

    def __init__(self):
        self.calls = collections.Counter()
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        path = environ["PATH_INFO"]
        with self.lock:
            self.calls[environ.get("HTTP_X_KEY")] += 1
            calls = self.calls[environ.get("HTTP_X_KEY")]
        if path == "/waits" and environ.get(INLINE_KEY) or path == "/rogue":
            raise RunOnThread("it would wait")
        body = orjson.dumps({
            "thread": threading.current_thread().name, "path": path, "calls": calls,
            "inline": bool(environ.get(INLINE_KEY)),
        })
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


app = App()
