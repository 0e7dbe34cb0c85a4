"""The HTTP edge: a Falcon WSGI application over the prediction service.

``create_app(config)`` builds everything a worker needs; nothing is built at
import time. Domain errors become HTTP errors here and only here
(``ERROR_STATUS``), and every error, Falcon's own included, leaves as the
same JSON shape::

    {"error": {"code": "invalid_value", "message": "top_k must be >= 1, got 0"}}
"""

import importlib.resources
import logging
import os
import socket
import time

import falcon
import orjson

from mab.errors import (
    InvalidRequest,
    MabError,
    MalformedRequest,
    TooManyItems,
    Unavailable,
    UnknownModel,
    WouldWait,
)
from mab.http.wsgi import DEADLINE_KEY, INLINE_KEY, RECEIVED_KEY, RunOnThread
import mab
from mab import metrics as mab_metrics      # create_app's `metrics` parameter would shadow "metrics"
from mab import sampling
from mab.access_log import REQUEST_ID_KEY, request_id
from mab.preflight import last_reload
from mab.sampling import sample_beta
from mab._wire import IdSpans
from mab.service import PredictionService, read_prediction_request
from mab.stores import create_store
from mab.feedback import FeedbackNode
from mab.feedback.events import read_feedback_request

log = logging.getLogger(__name__)

JSON = "application/json"

# The one table from domain errors to HTTP statuses (most specific first).
ERROR_STATUS = (
    (MalformedRequest, 400),
    (UnknownModel, 404),
    (TooManyItems, 413),
    (InvalidRequest, 422),
    (Unavailable, 503),
)

# Codes for errors that Falcon raises itself (routing, methods, headers).
_CODE_BY_STATUS = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    411: "length_required",
    413: "body_too_large",
    415: "unsupported_media_type",
    500: "internal_error",
    503: "unavailable",
}


_served_by = None


def served_by():
    """``host/pid`` of this worker, for the X-Served-By header: which pod and
    worker answered. Worked out once per process (a fork forgets it)."""
    global _served_by
    if _served_by is None:
        _served_by = f"{socket.gethostname()}/{os.getpid()}"
    return _served_by


def _forget_served_by():
    global _served_by
    _served_by = None


os.register_at_fork(after_in_child=_forget_served_by)


def serialize_error(req, resp, exception):
    """Falcon's error serializer: our JSON shape, whatever the client accepts."""
    status = exception.status_code
    code = exception.code or _CODE_BY_STATUS.get(status, "error")
    message = exception.description
    if message is None:
        # Falcon's routing errors carry no description; say what was asked.
        if status == 404:
            message = f"no resource at {req.path}"
        elif status == 405:
            allowed = (exception.headers or {}).get("Allow", "")
            message = f"{req.method} is not allowed on {req.path}" + (f" (allowed: {allowed})" if allowed else "")
        else:
            message = exception.title
    error = {"code": code, "message": message}
    # Where in the body the error is (POST /feedback: the event's index and field).
    error.update(getattr(exception, "mab_details", None) or {})
    resp.data = orjson.dumps({"error": error})
    resp.content_type = JSON


def handle_domain_error(req, resp, exception, params):
    for error_class, status in ERROR_STATUS:
        if isinstance(exception, error_class):
            break
    else:
        log.error("unmapped domain error: %r", exception)
        status = 500
    headers = None
    if isinstance(exception, Unavailable):
        headers = {"Retry-After": str(exception.retry_after)}
    error = falcon.HTTPError(status, description=exception.message, code=exception.code, headers=headers)
    error.mab_details = getattr(exception, "details", None)
    raise error


def read_json_body(req, max_bytes):
    """The raw body of a JSON request, within the limits; HTTP errors otherwise."""
    media_type = (req.content_type or "").split(";", 1)[0].strip().lower()
    if media_type != JSON and not media_type.endswith("+json"):
        raise falcon.HTTPError(
            415,
            description=f"the body must be JSON: send Content-Type: {JSON}"
            + (f" (got {req.content_type!r})" if req.content_type else ""),
            code="unsupported_media_type",
        )
    length = req.content_length
    if length is None:
        raise falcon.HTTPError(411, description="a Content-Length header is required", code="length_required")
    if length > max_bytes:
        raise falcon.HTTPError(
            413, description=f"the body has {length} bytes; the limit is {max_bytes}", code="body_too_large"
        )
    return req.bounded_stream.read(length)


def ranked_ids_json(prediction):
    """The ranked ids for the response: straight from the request's bytes when
    it came through the fast parser, otherwise a list for orjson."""
    ids = prediction.request_ids
    if type(ids) is IdSpans:
        return orjson.Fragment(ids.json_array(prediction.order))
    return prediction.item_ids


class PredictionResource:
    """POST /predict: rank items by one Thompson sample each."""

    def __init__(self, service, *, max_items, max_body_bytes):
        self.service = service
        self.max_items = max_items
        self.max_body_bytes = max_body_bytes

    def on_post(self, req, resp):
        started = time.perf_counter()
        request = read_prediction_request(read_json_body(req, self.max_body_bytes), self.max_items)
        req.env[mab_metrics.MODEL_KEY] = request.model
        parsed = time.perf_counter()
        # The client's deadline (x-envoy-expected-rq-timeout-ms), as the
        # worker read it from the request head: the feature fetch ends by
        # then, so no answer is computed for a client that has given up.
        # In the worker's loop (INLINE_KEY), a fetch that would wait on the
        # network raises WouldWait instead, and the request runs on a thread.
        prediction = self.service.predict(request, req.env.get(DEADLINE_KEY), not req.env.get(INLINE_KEY, False))
        encoding = time.perf_counter()
        resp.data = orjson.dumps(
            {
                "model": prediction.model,
                "decision_id": prediction.decision_id,
                "item_ids": ranked_ids_json(prediction),
                "scores": prediction.scores,
                "seed": prediction.seed,
                "missing": prediction.missing,
                "degraded": prediction.degraded,
                "degraded_items": prediction.failed,
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        fetch, sample, rank = prediction.stage_seconds
        req.env[mab_metrics.PREDICTION_KEY] = (
            len(request.item_ids), prediction.missing, prediction.failed,
            (parsed - started, fetch, sample, rank, time.perf_counter() - encoding),
        )
        resp.content_type = JSON
        resp.set_header("X-Served-By", served_by())


class FeedbackResource:
    """POST /feedback: a batch of rewards, journaled before the answer (mab.feedback)."""

    def __init__(self, service, feedback, *, max_body_bytes):
        self.service = service
        self.feedback = feedback
        self.max_body_bytes = max_body_bytes
        self.max_events = service.config.feedback.max_events

    def on_post(self, req, resp):
        service = self.service
        # Online updates need the models' stores: nothing is taken in before.
        service.check_ready()
        events = read_feedback_request(read_json_body(req, self.max_body_bytes), service.config.models, self.max_events)
        req.env[mab_metrics.MODEL_KEY] = events[0].model
        result = self.feedback.submit(events)
        resp.data = orjson.dumps({
            "accepted": result.accepted,
            "duplicates": result.duplicates,
            "first_seq": result.first_seq,
            "last_seq": result.last_seq,
        })
        resp.content_type = JSON
        resp.set_header("X-Served-By", served_by())


class HealthResource:
    """GET /health: liveness. Never touches a store."""

    BODY = orjson.dumps({"status": "ok"})

    def on_get(self, req, resp):
        resp.data = self.BODY
        resp.content_type = JSON


class ReadinessResource:
    """GET /ready: 503 until every model and store has loaded, then 200.

    Under gunicorn it also says how the last reload went (``reload``, from
    ``mab.preflight.last_reload``): a reload refused for a bad file leaves
    the server ready, serving the data checked before, and ``reload``
    says why (``status`` "refused", ``error``)."""

    def __init__(self, service):
        self.service = service

    def on_get(self, req, resp):
        ready, details = self.service.readiness()
        reload = last_reload()
        if reload is not None:
            details["reload"] = reload
        details["worker"] = served_by()
        if not ready:
            resp.status = 503
            resp.set_header("Retry-After", "1")
        resp.data = orjson.dumps(details)
        resp.content_type = JSON
        resp.set_header("X-Served-By", served_by())


class OpenAPIResource:
    """GET /openapi.json: the API's OpenAPI 3 document, with this service's limits."""

    def __init__(self, *, max_items, max_events=None):
        document = load_openapi_document()
        schema = document["components"]["schemas"]["PredictionRequest"]["properties"]["item_ids"]
        schema["maxItems"] = max_items
        if max_events is not None:
            document["components"]["schemas"]["FeedbackRequest"]["properties"]["events"]["maxItems"] = max_events
        self.document = orjson.dumps(document)

    def on_get(self, req, resp):
        resp.data = self.document
        resp.content_type = JSON


def load_openapi_document():
    return orjson.loads(importlib.resources.files("mab").joinpath("openapi.json").read_bytes())


def run_on_thread(req, resp, ex, params):
    """A prediction in the worker's loop would wait on a remote store: the
    worker runs the request again on a thread (mab.http.wsgi.RunOnThread).
    Falcon lets an exception its handler raises leave the app."""
    raise RunOnThread(str(ex)) from ex


def create_stores(config):
    return {name: create_store(settings, config.cache_dir) for name, settings in config.stores.items()}


class App(falcon.App):
    """A Falcon app that also holds its prediction service, for the server's
    hooks (closing stores on worker exit) and for tests."""

    def __init__(self, service, *, max_body_bytes, recorder=None, **kwargs):
        super().__init__(**kwargs)
        self.service = service
        # Read by mab.worker, which refuses larger bodies before reading them.
        self.max_body_bytes = max_body_bytes
        self.metrics = recorder
        # Read by mab.worker: with a pool of threads (a remote store), the
        # requests to these paths first run in its loop, told not to wait:
        # a prediction a cache answers whole costs less there than the
        # hand-off to a thread. Without a cache every prediction waits.
        self.inline_first_paths = (
            frozenset({"/predict", "/health", "/ready", "/openapi.json"}) if service.caches_remote_features
            else frozenset()
        )

    def __call__(self, environ, start_response):
        """Falcon's app, with the request's X-Request-ID (mab.access_log) on
        its response, and each request counted and timed (mab.metrics): a
        few additions to plain numbers, no middleware."""
        rid = environ[REQUEST_ID_KEY] = request_id(environ)
        recorder = self.metrics
        status = "500"

        def start_response_with_id(status_line, headers, exc_info=None):
            nonlocal status
            status = status_line[:3]
            headers.append(("X-Request-ID", rid))
            return start_response(status_line, headers, exc_info)

        if recorder is None:
            return super().__call__(environ, start_response_with_id)
        path = environ.get("PATH_INFO", "")
        in_flight = path != "/metrics"
        if in_flight:
            recorder.started()
        received = environ.get(RECEIVED_KEY)     # set by mab's worker only
        queued = None if received is None else max(0.0, time.monotonic() - received)
        started = time.perf_counter()
        try:
            return super().__call__(environ, start_response_with_id)
        except RunOnThread:
            status = None    # not answered: it is counted when it runs again, on a thread
            recorder.put_back(in_flight)
            raise
        finally:
            if status is not None:
                recorder.request(path, status, time.perf_counter() - started, environ, in_flight, queued)


def create_app(config, *, stores=None, sampler=sample_beta, load="background", metrics=True, decision_sink=None):
    """The WSGI application for one worker.

    ``stores`` replaces the stores the configuration describes (tests inject
    their own); ``sampler`` replaces the compiled Beta sampler (the
    benchmark's baseline, mab.baseline, injects numpy's). ``load`` is
    "background" (the app answers at once; /ready says when it can
    predict), "now" (load before returning) or "no". ``metrics``: record
    and serve GET /metrics (mab.metrics); False records nothing (the
    X-Request-ID header stays). ``decision_sink`` replaces the decision
    log's sink (mab.decisions.sinks) when a model logs decisions.

    When a model logs decisions (``log_fraction`` > 0) the worker's
    decision log (mab.decisions) starts here, its writer thread with it;
    ``app.service.close()`` writes what it holds and closes it. Raises
    ``ConfigError`` when its directory cannot be written.
    """
    decision_log = None
    if config.logs_decisions:
        from mab.decisions import create_decision_log

        decision_log = create_decision_log(config, sink=decision_sink)
    service = PredictionService(
        config, stores if stores is not None else create_stores(config), sampler=sampler,
        decision_log=decision_log,
    )
    service.feedback = FeedbackNode(config)
    recorder = None
    if metrics:
        recorder = mab_metrics.Recorder(
            service.stores,
            build=dict(version=mab.__version__, openmp=sampling.build_info().get("openmp"),
                       sampler_threads=service.sampler_threads),
        )
        if decision_log is not None:
            recorder.watch_decisions(decision_log.counts)
    app = App(service, max_body_bytes=config.max_body_bytes, media_type=JSON, recorder=recorder)
    app.set_error_serializer(serialize_error)
    app.add_error_handler(MabError, handle_domain_error)
    app.add_error_handler(WouldWait, run_on_thread)
    app.add_route(
        "/predict",
        PredictionResource(service, max_items=config.max_items, max_body_bytes=config.max_body_bytes),
    )
    app.add_route("/feedback", FeedbackResource(service, service.feedback, max_body_bytes=config.max_body_bytes))
    app.add_route("/health", HealthResource())
    app.add_route("/ready", ReadinessResource(service))
    app.add_route("/openapi.json", OpenAPIResource(max_items=config.max_items, max_events=config.feedback.max_events))
    if recorder is not None:
        app.add_route("/metrics", mab_metrics.MetricsResource(recorder, served_by))
        if recorder.multiprocess:
            # Other workers answer scrapes too: they read this one's files.
            recorder.start_flushing()
    if decision_log is not None:
        decision_log.start()
    if load == "background":
        service.load_in_background()
    elif load == "now":
        service.load()
    elif load != "no":
        raise ValueError(f"load must be 'background', 'now' or 'no', not {load!r}")
    return app
