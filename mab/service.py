"""The prediction service: validate -> features -> Beta parameters -> sample -> rank.

Knows nothing of HTTP. ``read_prediction_request`` turns a request body
(bytes) into a ``PredictionRequest`` or raises a ``RequestError``;
``PredictionService.predict`` answers it or raises a ``MabError``.
"""

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import orjson

import mab
from mab import _lists, _ranking, _wire, sampling
from mab.decisions.record import new_decision_id, selected_raw
from mab.errors import (
    InvalidRequest,
    MalformedRequest,
    NotReady,
    TooManyItems,
    UnknownModel,
)
from mab.model import BetaModel

log = logging.getLogger(__name__)

REQUEST_FIELDS = frozenset(_wire.FIELDS)
MAX_SEED = 2**64 - 1


@dataclass(slots=True)
class PredictionRequest:
    item_ids: list
    user_id: str | None = None
    top_k: int | None = None
    model: str = "default"
    seed: int | None = None


@dataclass(slots=True)
class Prediction:
    model: str
    decision_id: str        # 32 hex digits (128 random bits), in every answer
    request_ids: object     # the request's item_ids: a list of str, or IdSpans
    order: np.ndarray       # indices into request_ids, best first, cut to top_k
    scores: np.ndarray      # the scores in that order
    seed: int
    missing: int
    failed: int
    # Seconds spent fetching the features, sampling and ranking (metrics).
    stage_seconds: tuple = (0.0, 0.0, 0.0)

    @property
    def degraded(self):
        return self.failed > 0

    @property
    def item_ids(self):
        """The ranked ids as a list of str."""
        if type(self.request_ids) is list:
            return _lists.take(self.request_ids, self.order)
        return [self.request_ids[i] for i in self.order.tolist()]


def _as_int(value):
    """The integer a JSON number stands for, or None if it is not integral.

    JSON Schema, and so the OpenAPI document, counts 5.0 as an integer;
    ``true`` is not a number here although bool subclasses int in Python.
    """
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    return None


def _optional_int(doc, name):
    """The integer field `name` of the body, None if absent or null."""
    value = doc.get(name)
    if value is None:
        return None
    number = _as_int(value)
    if number is None:
        raise MalformedRequest(f"{name} must be an integer", code="wrong_type")
    return number


def _check_item_ids(item_ids, max_items):
    if item_ids is None:
        raise InvalidRequest("item_ids is required", code="missing_field")
    if not item_ids:
        raise InvalidRequest("item_ids must not be empty", code="invalid_value")
    if len(item_ids) > max_items:
        raise TooManyItems(f"item_ids has {len(item_ids)} entries; the limit is {max_items}")


def _check_top_k(top_k):
    if top_k is not None and top_k < 1:
        raise InvalidRequest(f"top_k must be >= 1, got {top_k}", code="invalid_value")


def _check_seed(seed):
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise InvalidRequest(f"seed must be in [0, 2**64 - 1], got {seed}", code="invalid_value")


def parse_prediction_request(doc, max_items):
    """Validate a decoded JSON body. Wrong types are malformed (400); values
    out of range or unknown fields are invalid (422); too many items 413."""
    if type(doc) is not dict:
        raise MalformedRequest("the body must be a JSON object", code="wrong_type")
    unknown = doc.keys() - REQUEST_FIELDS
    if unknown:
        raise InvalidRequest(
            f"unknown field(s): {', '.join(sorted(unknown))} "
            f"(allowed: {', '.join(sorted(REQUEST_FIELDS))})",
            code="unknown_field",
        )
    item_ids = doc.get("item_ids")
    if item_ids is not None and type(item_ids) is not list:
        raise MalformedRequest("item_ids must be an array of strings", code="wrong_type")
    _check_item_ids(item_ids, max_items)
    index = _lists.first_non_str(item_ids)
    if index >= 0:
        raise MalformedRequest(f"item_ids[{index}] must be a string", code="wrong_type")

    user_id = doc.get("user_id")
    if user_id is not None and type(user_id) is not str:
        raise MalformedRequest("user_id must be a string", code="wrong_type")

    top_k = _optional_int(doc, "top_k")
    _check_top_k(top_k)

    model = doc.get("model")
    if model is None:
        model = "default"
    elif type(model) is not str:
        raise MalformedRequest("model must be a string", code="wrong_type")

    seed = _optional_int(doc, "seed")
    _check_seed(seed)
    return PredictionRequest(item_ids, user_id, top_k, model, seed)


def decode_prediction_request(body, max_items):
    """The request in the JSON body ``body`` (bytes), by the general path:
    orjson, then ``parse_prediction_request``.

    Raises ``MalformedRequest`` (code ``malformed_json``) for a body that is
    not JSON as RFC 8259 defines it and orjson reads it: UTF-8 without a
    byte order mark (section 8.1 lets a parser refuse one), no lone
    surrogate escapes (section 8.2), numbers within binary64's range
    (section 6 lets a parser limit it). Integers in [-2**63, 2**64 - 1] are
    read exactly; other numbers as binary64. Raises ``InvalidRequest``
    (``duplicate_field``) for an object that names a member twice: RFC 8259
    section 4 leaves its meaning to the parser, and I-JSON (RFC 7493 section
    2.3) forbids it. Then whatever ``parse_prediction_request`` raises.
    """
    return parse_prediction_request(load_json(body), max_items)


def load_json(body):
    """The JSON document in ``body`` (bytes), read as ``decode_prediction_request``
    says (orjson; an object naming a top-level member twice is refused).
    Raises ``MalformedRequest`` (``malformed_json``) or ``InvalidRequest``
    (``duplicate_field``)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"the body is not valid JSON: {exc}", code="malformed_json") from None
    if type(doc) is dict:
        _check_unique_names(body, doc)
    return doc


def _check_unique_names(body, doc):
    """Refuse a body whose object ``doc`` (parsed from ``body``, which keeps
    one member per name) was written with a name given more than once."""
    names = _wire.object_member_names(body)
    if len(names) == len(doc):
        return
    seen = set()
    for raw in names:
        # The raw name is valid JSON string content (orjson accepted the body).
        name = orjson.loads(b'"' + raw + b'"') if b"\\" in raw else raw.decode()
        if name in seen:
            shown = name if len(name) <= 40 else name[:40] + "..."
            raise InvalidRequest(f"the field {shown!r} is given more than once", code="duplicate_field")
        seen.add(name)
    raise RuntimeError(f"{len(names)} member names but {len(doc)} members, and no name repeated")


def read_prediction_request(body, max_items):
    """The request in a /predict body (bytes).

    Most bodies take the compiled parser (``mab._wire.parse_predict_body``),
    which makes no ``str`` per id; any body it declines, every invalid body
    included, takes ``decode_prediction_request``. Both paths read the same
    documents the same way and refuse the others with the same error
    (tests/test_wire_properties.py and scripts/fuzz.py hold them to it).
    """
    fields = _wire.parse_predict_body(body)
    if fields is not None:
        return request_from_fields(fields, max_items)
    return decode_prediction_request(body, max_items)


def request_from_fields(fields, max_items):
    """The request from ``mab._wire.parse_predict_body``'s fields, whose
    types that parser has already established: the value checks of
    ``parse_prediction_request``, in the same order."""
    item_ids, user_id, top_k, model, seed = fields
    _check_item_ids(item_ids, max_items)
    _check_top_k(top_k)
    _check_seed(seed)
    return PredictionRequest(item_ids, user_id, top_k, "default" if model is None else model, seed)


def rank(scores, top_k, seed=None):
    """Indices of the best `top_k` scores (all when None), best first.

    ``scores``: float64 array, one-dimensional and contiguous (the sampler's
    output; never NaN, which would rank last). ``seed``: int in [0, 2**64),
    the request's; None draws fresh entropy. Returns an int64 array.

    Equal scores (float64 rounds Beta variates of tiny shapes to exactly 0
    or 1, and huge equal counts give equal scores) come in a uniformly random
    order drawn from the seed's tie-breaking stream (``mab._ranking``): the
    same scores and seed give the same order on any machine, and the best
    `top_k` are a prefix of the full ranking. When the k-th score ties
    scores beyond the cut, which of them make the cut is uniform too.
    Numpy's default sort is kept for speed (2x to 6x its stable sort);
    ties are found after it by one compiled scan.
    """
    n = scores.shape[0]
    seed = sampling.fresh_seed() if seed is None else seed
    negated = -scores
    if top_k is None or top_k >= n:
        order = np.argsort(negated)
    else:
        # Partitioning on the k-th and (k+1)-th tells whether the cut falls
        # inside a tie. Measured on numpy 2.4 with AVX-512, it is also 2x
        # (400 items) to 5x (10,000) faster than on the k-th alone, where
        # numpy takes its SIMD (x86-simd-sort) path rather than introselect.
        part = np.argpartition(negated, (top_k - 1, top_k))
        best = part[:top_k]
        order = best[np.argsort(negated[best])]
        kth = negated[part[top_k - 1]]
        if negated[part[top_k]] == kth:
            # All items tied with the k-th go into the shuffle, which is
            # then cut: every subset of them is equally likely to make it.
            better = np.searchsorted(negated[order], kth, side="left")
            order = np.concatenate((order[:better], np.flatnonzero(negated == kth)))
            _ranking.break_ties(negated, order, seed)
            return order[:top_k]
    _ranking.break_ties(negated, order, seed)
    return order


class PredictionService:
    """Holds a worker's models and stores, loads them, and answers predictions."""

    def __init__(self, config, stores, *, sampler=sampling.sample_beta, decision_log=None):
        self.config = config
        self.stores = stores
        self.sampler = sampler
        self.models = {
            name: BetaModel(model_config, stores[model_config.store])
            for name, model_config in config.models.items()
        }
        # mab.decisions.DecisionLog, or None: no model logs decisions.
        self.decision_log = decision_log
        if decision_log is not None:
            decision_log.bind(self.models)
        self.sampler_threads = sampling.resolve_n_threads()
        # mab.feedback.FeedbackNode (set by mab.web.create_app): opened by
        # load(), which gives models with online_updates their overlays.
        self.feedback = None
        self._ready = threading.Event()
        self._load_error = None
        self._loaded_in = None

    # -- lifecycle -------------------------------------------------------------

    def load(self):
        """Load every store and check every model against it. Idempotent."""
        if self._ready.is_set():
            return
        start = time.perf_counter()
        try:
            for name, store in self.stores.items():
                store.load()
                log.info("store %r ready: %s", name, store.describe())
            for model in self.models.values():
                model.check()
            if self.feedback is not None:
                self._open_feedback()
        except Exception as exc:
            self._load_error = exc
            log.error("loading failed: %s", exc)
            raise
        self._loaded_in = time.perf_counter() - start
        self._ready.set()

    def _open_feedback(self):
        online = [name for name, model in self.models.items() if model.config.online_updates]
        if not online:
            return          # opened by the first POST /feedback
        self.feedback.open(self.stores)
        self.feedback.start()
        for name in online:
            self.models[name].overlay = self.feedback.overlays[name]

    def load_in_background(self):
        """Start loading in a daemon thread; /ready answers 503 until it is done."""
        def run():
            try:
                self.load()
            except Exception:
                pass  # recorded in _load_error and logged by load()

        thread = threading.Thread(target=run, name="mab-load", daemon=True)
        thread.start()
        return thread

    def wait_until_ready(self, timeout=None):
        return self._ready.wait(timeout)

    def close_decision_log(self):
        """Write what the decision log holds and close it (the last Parquet
        file goes into place). Idempotent."""
        if self.decision_log is not None:
            self.decision_log.close()

    def close(self):
        self.close_decision_log()
        if self.feedback is not None:
            for model in self.models.values():
                model.overlay = None
            self.feedback.close()
        for store in self.stores.values():
            store.close()

    @property
    def ready(self):
        return self._ready.is_set()

    def check_ready(self):
        """Raise ``NotReady`` unless every model and store has loaded."""
        if not self._ready.is_set():
            if self._load_error is not None:
                raise NotReady(f"the service failed to load: {self._load_error}", code="load_failed", retry_after=30)
            raise NotReady("the service is still loading its models")

    def readiness(self):
        """(ready, details) for the readiness probe."""
        details = {
            "version": mab.__version__,
            "models": {name: model.describe() for name, model in self.models.items()},
            "sampler": dict(sampling.build_info(), threads=self.sampler_threads),
        }
        if self._ready.is_set():
            details["status"] = "ready"
            details["stores"] = {name: store.describe() for name, store in self.stores.items()}
            details["loaded_in_seconds"] = round(self._loaded_in, 3)
            if self.feedback is not None:
                details["feedback"] = self.feedback.describe()
        elif self._load_error is not None:
            details["status"] = "failed"
            details["error"] = str(self._load_error)
        else:
            details["status"] = "loading"
        if self.decision_log is not None:
            details["decision_log"] = self.decision_log.describe()
        return self._ready.is_set(), details

    # -- the hot path ----------------------------------------------------------

    @property
    def caches_remote_features(self):
        """Whether some store is remote with a cache in this worker, so that
        a prediction may be answered without waiting (``wait=False``)."""
        return any(getattr(store, "caching", False) for store in self.stores.values())

    def predict(self, request, deadline=None, wait=True):
        """Answer one request. ``deadline``: a ``time.monotonic()`` instant by
        which the feature fetch must be done (the store's own deadline, counted
        from the fetch, applies when it is sooner or None). ``wait=False``:
        raise ``WouldWait`` rather than wait on a remote store (before
        anything is drawn or logged)."""
        if not self._ready.is_set():
            if self._load_error is not None:
                raise NotReady(f"the service failed to load: {self._load_error}", code="load_failed", retry_after=30)
            raise NotReady("the service is still loading its models")
        model = self.models.get(request.model)
        if model is None:
            raise UnknownModel(
                f"no model named {request.model!r} (models: {', '.join(sorted(self.models))})"
            )
        started = time.perf_counter()
        params = model.parameters(request.item_ids, request.user_id, deadline, wait)
        fetched = time.perf_counter()
        seed = sampling.fresh_seed() if request.seed is None else request.seed
        raw_id, decision_id = new_decision_id()
        fraction = model.config.log_fraction
        logged = fraction > 0.0 and self.decision_log is not None and selected_raw(raw_id, fraction)
        # The scores overwrite alpha unless the decision is logged: its
        # record keeps alpha and beta as sampled, and the sampler then
        # fills a new array (no copy: an allocation of the same size).
        scores = self.sampler(params.alpha, params.beta, seed=seed, out=None if logged else params.alpha,
                              n_threads=self.sampler_threads)
        sampled = time.perf_counter()
        order = rank(scores, request.top_k, seed)
        ranked = time.perf_counter()
        prediction = Prediction(
            model=request.model,
            decision_id=decision_id,
            request_ids=request.item_ids,
            order=order,
            scores=scores[order],
            seed=seed,
            missing=params.missing,
            failed=params.failed,
            stage_seconds=(fetched - started, sampled - fetched, ranked - sampled),
        )
        if logged:
            # References only (mab.decisions.record.RECORD_FIELDS): none of
            # these arrays is written to after this point.
            self.decision_log.submit((
                decision_id, time.time_ns() // 1000, request.model, request.user_id, seed,
                request.item_ids, params.alpha, params.beta, getattr(params, "age_seconds", None),
                order, prediction.scores, params.missing, params.failed,
            ))
        return prediction
