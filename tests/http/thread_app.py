"""A WSGI app for the worker's tests: it answers with the name of the thread
that ran it, and tells the worker (``answers_without_waiting``) that the
requests to ``/inline`` wait on nothing, and all others may."""

import threading

import orjson


class App:
    def __call__(self, environ, start_response):
        body = orjson.dumps({"thread": threading.current_thread().name, "path": environ["PATH_INFO"]})
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    def answers_without_waiting(self, method, path, body):
        if path == "/broken":
            raise RuntimeError("a bug in the check")
        return path == "/inline"


app = App()
