"""The service as the simulator sees it: ``/predict`` and ``/feedback`` over HTTP.

The simulator needs two calls, written against the issue-11 contract:

* ``predict(item_ids, top_k, model, user_id)``: ``POST /predict``; the
  answer carries ``decision_id`` besides the ranked ``item_ids``.
* ``feedback(events)``: ``POST /feedback`` with ``{"events": [{"decision_id",
  "item_id", "reward", "model", "user_id"}, ...]}``.

``HttpService`` makes them on one keep-alive connection (the standard
library's http.client: one client, one connection, no dependency worth
adding). The tests' in-process fake has the same two methods.
"""

import http.client
import urllib.parse

import orjson


class ServiceError(RuntimeError):
    """The service answered with an error, or could not be reached."""


class HttpService:
    """A mab server at ``url`` (``http://host:port``)."""

    def __init__(self, url, timeout=30.0):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"the service URL must be http://HOST[:PORT], got {url!r}")
        self.url = url
        self.host = parsed.hostname
        self.port = parsed.port or 80
        self.timeout = timeout
        self._conn = None

    def _request(self, method, path, document=None):
        body = None if document is None else orjson.dumps(document)
        headers = {} if body is None else {"Content-Type": "application/json"}
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request(method, path, body=body, headers=headers)
                response = self._conn.getresponse()
                return response.status, response.read()
            except (ConnectionError, http.client.HTTPException) as exc:
                # The server may close an idle keep-alive connection: one retry on a new one.
                self.close()
                if attempt:
                    raise ServiceError(f"{method} {self.url}{path}: {exc}") from None
            except OSError as exc:
                self.close()
                raise ServiceError(f"{method} {self.url}{path}: {exc}") from None
        raise AssertionError("unreachable")

    def _json(self, method, path, document=None):
        status, raw = self._request(method, path, document)
        if status != 200:
            raise ServiceError(f"{method} {path} answered {status}: {raw[:500].decode('utf-8', 'replace')}")
        return orjson.loads(raw)

    def predict(self, item_ids, top_k, model, user_id=None, seed=None):
        """The /predict answer (a dict with ``decision_id``, ``item_ids``, ``scores``, ``seed``);
        ``seed`` (an int in [0, 2**64)) fixes the service's draws, None lets it draw one.
        Raises ServiceError for an error answer or one without ``decision_id``."""
        document = {"item_ids": list(item_ids), "top_k": top_k, "model": model}
        if user_id is not None:
            document["user_id"] = user_id
        if seed is not None:
            document["seed"] = seed
        answer = self._json("POST", "/predict", document)
        if "decision_id" not in answer:
            raise ServiceError("the /predict answer has no decision_id: this server does not log decisions "
                               "(it predates the decision log of issue 11)")
        return answer

    def feedback(self, events):
        """Send reward events; returns the /feedback answer. Raises ServiceError."""
        return self._json("POST", "/feedback", {"events": list(events)})

    def has_feedback(self):
        """Whether the server has ``POST /feedback`` (an unknown path answers 404)."""
        status, _ = self._request("POST", "/feedback", {"events": []})
        return status != 404

    def close(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None
