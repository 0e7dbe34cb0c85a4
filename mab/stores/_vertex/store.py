"""What the two Vertex AI Feature Store backends share: the fetch machinery
(the per-worker thread pool, deadlines and retries), value checks, and the
use of the cache (``cache.py``); settings are in ``settings.py``.

Nothing here imports the Google libraries at import time: the gunicorn master
parses the settings, and neither it nor a worker of another backend should
pay the 1-2 s and ~110 MB of ``google.cloud.aiplatform_v1``, nor hold gRPC
state across a fork. ``load()`` imports them, in the worker, after the fork.

A request's features are fetched like this::

    entity ids (prefix + item id + suffix), duplicates fetched once
      -> the cache, if enabled: what it serves is not fetched, and what it
         serves stale is refreshed in the background
      -> the backend's read (``_fetch_remote``): by default chunks of at most
         chunk_size (<= 100) ids, one task per chunk on the worker's bounded
         thread pool, all at once: the backend's calls, each with the time
         left as its gRPC timeout (at most attempt_timeout_ms); UNAVAILABLE
         and DEADLINE_EXCEEDED are retried with jittered exponential backoff
         (google.api_core.retry) while time is left, never after. The
         ``vertex`` backend's streaming reads replace this step (vertex.py).
      -> merged back in request order, before deadline_ms has passed

Each entity ends in exactly one of three outcomes, never confused:

- found: every requested feature holds an int64 or a double value, finite
  and >= 0 (the embedded store's rule); converted to float64.
- missing: the store does not hold the entity, or none of its requested
  features has a value. Scored from the prior like any new item.
- failed: no answer before the deadline (store down, slow, call rejected), or
  a value that is not a count: a string or other type, a negative or
  non-finite number, or some requested features set and others not. An
  invalid value is logged with the entity and feature and never used. The
  model's ``on_store_error`` policy decides what a failure means: a 503, or
  the prior and a degraded answer.

A model with a half-life asks for one more "feature", ``GENERATE_TIME``
(``timestamp_feature``): no feature of the store, but the time of the
counts, which decay by their age. It is the ``metadata.generate_time`` of the
counts' ``FeatureValue`` messages (``aiplatform_v1``/``v1beta1``
``FeatureValue.Metadata``: when the value was generated, or ingested): the
oldest of them, in Unix seconds. A found entity whose counts carry no
generate_time fails (an invalid value, logged): counts of unknown age are
never used as if they were new.
"""

import concurrent.futures
import functools
import itertools
import logging
import math
import threading
import time

import numpy as np

from mab.errors import ConfigError, WouldWait
from mab.stores import FeatureBatch
from mab.stores._vertex.breaker import CircuitBreaker
from mab.stores._vertex.cache import NOT_SERVED, SERVED_MISSING, FeatureCache
from mab.stores._vertex.outcomes import FAILED, MISSING, DeadlineReached, UnexpectedAnswer

log = logging.getLogger(__name__)

# How long after the deadline fetch() still waits for a chunk whose calls
# have all timed out: enough for a pool thread to notice and return.
DEADLINE_GRACE = 0.02
# An attempt needs at least this much time left to be worth starting.
MIN_ATTEMPT_SECONDS = 0.001
# At most one warning per store this often; the rest are counted.
WARNING_INTERVAL = 10.0
#: The pseudo-feature of the counts' generate_time (see the module docstring).
#: Vertex feature ids are [a-z_][a-z0-9_]*, so no feature can be named so.
GENERATE_TIME = "@generate_time"
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    # Retries are the store's, bounded by the request's deadline: gRPC's own
    # (transparent) retries would make "retry = false" mean more than one call.
    ("grpc.enable_retries", 0),
]


def timeout_until(end):
    """A gRPC timeout (relative seconds) that ends a call by ``end``.

    Computed per call: a call started late in an attempt gets less time.
    """
    return max(MIN_ATTEMPT_SECONDS, end - time.monotonic())


class _Chunk:
    """One pool task: its entity ids and what became of each."""

    __slots__ = ("ids", "outcomes", "calls", "error")

    def __init__(self, ids):
        self.ids = ids
        self.outcomes = {}    # entity id -> counts tuple, MISSING or FAILED
        self.calls = 0
        self.error = None     # the last error of the service, for the log

    def pending(self):
        return [entity_id for entity_id in self.ids if entity_id not in self.outcomes]


class VertexStore:
    """A remote store: the fetch machinery. Subclasses connect and call.

    A subclass defines ``backend``, ``_client_classes()`` (importing
    google.cloud.aiplatform_v1) and ``_attempt(chunk, entity_ids, features,
    attempt_end)``, which makes the calls for those ids, each with
    ``timeout_until(attempt_end)``, records an outcome per id in
    ``chunk.outcomes``, and raises a google.api_core exception when the
    attempt as a whole failed.
    """

    backend = None
    # The feature a model with a half-life reads its counts' time from.
    timestamp_feature = GENERATE_TIME

    def __init__(self, settings, *, cache_dir=None, clock=time.monotonic):
        # cache_dir: part of the store interface; a remote store keeps nothing on disk.
        # clock: the time the cache ages its entries by (tests inject theirs).
        self.settings = settings
        self._clock = clock
        self._client = None
        self._pool = None
        self._retry = None
        self._store_errors = (DeadlineReached, UnexpectedAnswer)
        self._cache = None
        self._breaker = None
        self._deadline = settings.deadline_ms / 1000
        self._attempt_timeout = settings.attempt_timeout_ms / 1000
        self._lock = threading.Lock()
        self._stats = dict.fromkeys(
            ("requests", "entities", "calls", "retries", "found", "missing", "failed", "invalid_values", "short_circuited"),
            0,
        )
        self._last_error = None
        self._warned_at = -math.inf
        self._suppressed_warnings = 0
        self._load_seconds = None

    @property
    def resource(self):
        """The resource name read: an entity type or a feature view."""
        return self.settings.resource

    # -- lifecycle -------------------------------------------------------------

    def load(self):
        """Create the client, its channel and the pool: in the worker, after the fork."""
        start = time.perf_counter()
        from google.api_core import exceptions, retry

        settings = self.settings
        self._client = self._connect()
        self._store_errors = (exceptions.GoogleAPICallError, exceptions.RetryError, DeadlineReached, UnexpectedAnswer)
        if settings.retry:
            self._retry = retry.Retry(
                predicate=retry.if_exception_type(exceptions.ServiceUnavailable, exceptions.DeadlineExceeded),
                initial=settings.retry_initial_ms / 1000,
                maximum=settings.retry_max_ms / 1000,
                multiplier=settings.retry_multiplier,
                on_error=self._count_retry,
            )
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.pool_size, thread_name_prefix=f"mab-store-{settings.name}"
        )
        if settings.breaker_failures > 0:
            self._breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_seconds, clock=self._clock)
        if settings.cache_ttl_seconds > 0:
            self._cache = FeatureCache(settings, self._refresh_fetch, clock=self._clock)
            self._cache.start(settings.name)
        self._load_seconds = round(time.perf_counter() - start, 3)

    def _connect(self):
        import grpc
        from google.api_core.client_options import ClientOptions
        from google.auth.exceptions import DefaultCredentialsError

        client_class, transport_class = self._client_classes()
        settings = self.settings
        if settings.plaintext:
            # No TLS, no credentials: client_options with anonymous
            # credentials would insist on TLS, a channel given to the
            # transport does not.
            channel = grpc.insecure_channel(settings.endpoint, options=CHANNEL_OPTIONS)
            return client_class(transport=transport_class(channel=channel))
        try:
            # Credentials: Application Default Credentials.
            return client_class(client_options=ClientOptions(api_endpoint=settings.endpoint))
        except DefaultCredentialsError as exc:
            raise ConfigError(
                f"store {settings.name!r}: no Google credentials for {settings.endpoint}: {exc} "
                f"(Application Default Credentials: GOOGLE_APPLICATION_CREDENTIALS, "
                f"`gcloud auth application-default login`, or the metadata server on Google Cloud)"
            ) from None

    def close(self):
        """Stop the refresher and the pool, close the channel (gunicorn's worker_exit)."""
        if self._cache is not None:
            self._cache.close()
        pool, client = self._pool, self._client
        self._pool = self._client = None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if client is not None:
            client.transport.close()

    # -- the hot path ----------------------------------------------------------

    @property
    def caching(self):
        """Whether this worker caches fetched features (so that ``fetch``
        with ``wait=False`` can answer)."""
        return self.settings.cache_ttl_seconds > 0

    def fetch(self, item_ids, prefix, suffix, features, deadline=None, wait=True):
        """Features of ``prefix + item_id + suffix`` for each item, in order.

        ``item_ids``: a list of str or an ``IdSpans``. ``deadline`` is a
        ``time.monotonic()`` instant; the store's own deadline_ms, counted
        from now, applies when it is sooner or None. Returns a FeatureBatch;
        never raises for the store's own failures (they are failed items).

        ``wait=False``: answer from the cache alone, or raise ``WouldWait``
        (having counted nothing) when some item needs a call: the caller,
        the worker's loop thread, runs the request again on a thread.
        """
        now = time.monotonic()
        end = now + self._deadline if deadline is None else min(deadline, now + self._deadline)
        features = tuple(features)
        # Without waiting, the cache serves every item or the fetch is not done.
        found = None if self._cache is None else self._cache.lookup(features, item_ids, prefix, suffix, whole=not wait)
        if found is None and not wait:
            raise WouldWait(f"store {self.settings.name!r} must call {self.backend} for some items")
        if self._cache is None:
            entity_ids = [prefix + item_id + suffix for item_id in item_ids] if prefix or suffix else list(item_ids)
            outcomes = self._guarded_fetch(list(dict.fromkeys(entity_ids)), features, end)
            return self._batch(entity_ids, outcomes, len(features))
        values, status = found
        missing = int(np.count_nonzero(status == SERVED_MISSING))
        unserved = np.flatnonzero(status == NOT_SERVED).tolist()
        if not unserved:
            return FeatureBatch(tuple(values), missing)
        entity_ids = [prefix + item_ids[i] + suffix for i in unserved]
        outcomes = self._guarded_fetch(list(dict.fromkeys(entity_ids)), features, end)
        self._cache.store(features, outcomes)
        failed_mask = None
        for position, entity_id in zip(unserved, entity_ids):
            outcome = outcomes.get(entity_id, FAILED)
            if type(outcome) is tuple:
                values[:, position] = outcome
            elif outcome is MISSING:
                missing += 1
            else:
                if failed_mask is None:
                    failed_mask = np.zeros(len(status), dtype=bool)
                failed_mask[position] = True
        failed = 0 if failed_mask is None else int(failed_mask.sum())
        return FeatureBatch(tuple(values), missing, failed, failed_mask)

    def _refresh_fetch(self, entity_ids, features):
        """The cache's refresher reads through the same path, with the store's deadline."""
        return self._guarded_fetch(entity_ids, features, time.monotonic() + self._deadline)

    def _guarded_fetch(self, entity_ids, features, end):
        """The backend's read behind the circuit breaker: while it is open,
        every entity fails at once, without a call."""
        breaker = self._breaker
        if breaker is None:
            return self._fetch_remote(entity_ids, features, end)
        if not breaker.allow():
            with self._lock:
                self._stats["short_circuited"] += 1
                self._stats["failed"] += len(entity_ids)
            return dict.fromkeys(entity_ids, FAILED)
        outcomes = {}
        try:
            outcomes = self._fetch_remote(entity_ids, features, end)
        finally:
            # Down as a whole: nothing came back but failures.
            breaker.record(any(outcome is not FAILED for outcome in outcomes.values()))
        return outcomes

    def _fetch_remote(self, entity_ids, features, end):
        size = self.settings.chunk_size
        chunks = [_Chunk(entity_ids[i : i + size]) for i in range(0, len(entity_ids), size)]
        futures = [self._pool.submit(self._run_chunk, chunk, features, end) for chunk in chunks]
        done, not_done = concurrent.futures.wait(futures, timeout=max(0.0, end - time.monotonic()) + DEADLINE_GRACE)
        outcomes = {}
        errors = []
        calls = 0
        for chunk, future in zip(chunks, futures):
            calls += chunk.calls   # so far: a chunk still running may add more, not counted
            if future in not_done:
                # Still queued behind other requests' chunks, or still
                # running: its ids fail. A running task's own timeouts end it
                # soon; its chunk is not read again.
                future.cancel()
                outcomes.update(dict.fromkeys(chunk.ids, FAILED))
                errors.append("no answer by the deadline")
                continue
            future.result()   # re-raises a bug in the backend; the service's errors are in chunk.error
            outcomes.update(chunk.outcomes)
            pending = chunk.pending()
            if pending:
                outcomes.update(dict.fromkeys(pending, FAILED))
                errors.append(str(chunk.error or "no answer for some entities"))
            elif chunk.error is not None:
                errors.append(str(chunk.error))   # some ids failed for good (recorded as FAILED)
        self._record(len(entity_ids), calls, outcomes, errors)
        return outcomes

    def _run_chunk(self, chunk, features, end):
        attempt = functools.partial(self._attempt_chunk, chunk, features, end)
        try:
            if self._retry is None:
                attempt()
            else:
                self._retry.with_timeout(max(0.0, end - time.monotonic()))(attempt)()
        except self._store_errors as exc:
            chunk.error = exc

    def _attempt_chunk(self, chunk, features, end):
        remaining = end - time.monotonic()
        if remaining < MIN_ATTEMPT_SECONDS:
            raise DeadlineReached(f"deadline of {self.settings.deadline_ms:g} ms reached")
        pending = chunk.pending()
        if pending:
            self._attempt(chunk, pending, features, time.monotonic() + min(self._attempt_timeout, remaining))

    def _batch(self, entity_ids, outcomes, n_features):
        rows = list(map(outcomes.get, entity_ids, itertools.repeat(FAILED)))
        # list.count compares by identity first: C loops, not Python ones.
        missing, failed = rows.count(MISSING), rows.count(FAILED)
        failed_mask = None
        if missing or failed:
            zeros = (0.0,) * n_features
            if failed:
                failed_mask = np.fromiter((row is FAILED for row in rows), dtype=bool, count=len(rows))
            rows = [row if type(row) is tuple else zeros for row in rows]
        # zip(*rows) transposes in C: a column from a flat tuple of floats
        # costs numpy a third of what a matrix of 400 small tuples does.
        columns = tuple(np.array(column, dtype=np.float64) for column in zip(*rows)) if rows else tuple(
            np.zeros(0) for _ in range(n_features)
        )
        return FeatureBatch(columns, missing, failed, failed_mask)

    # -- values ----------------------------------------------------------------

    def _counts(self, entity_id, features, values):
        """An entity's counts (a tuple of floats), MISSING or FAILED.

        ``values`` holds, per requested feature, a raw FeatureValue message
        or None when the answer had no value for it (and None for
        ``GENERATE_TIME``, which is read from the others' metadata).
        """
        counts = []
        for name, value in zip(features, values):
            if name == GENERATE_TIME:
                continue
            kind = None if value is None else value.WhichOneof("value")
            if kind == "int64_value":
                number = float(value.int64_value)
            elif kind == "double_value":
                number = value.double_value
            elif kind is None:
                number = None
            else:
                return self._invalid(entity_id, name, f"a {kind.removesuffix('_value')} value")
            if number is not None and not (number >= 0 and math.isfinite(number)):
                return self._invalid(entity_id, name, f"{number!r}, not a count (finite and >= 0)")
            counts.append(number)
        outcome = self._complete(entity_id, features, counts)
        if type(outcome) is not tuple or GENERATE_TIME not in features:
            return outcome
        oldest = math.inf
        for name, value in zip(features, values):
            if name != GENERATE_TIME:
                stamp = value.metadata.generate_time
                seconds = stamp.seconds + stamp.nanos * 1e-9
                if seconds <= 0:
                    return self._invalid(entity_id, name, "no metadata.generate_time, which the model's "
                                         "half_life_seconds needs to decay the counts")
                oldest = min(oldest, seconds)
        counts.insert(features.index(GENERATE_TIME), oldest)
        return tuple(counts)

    def _complete(self, entity_id, features, counts):
        """The outcome of an entity's checked counts (None: no value; one per
        feature but GENERATE_TIME): all present, a tuple; none, MISSING;
        some, FAILED (and said)."""
        if None in counts:
            if all(count is None for count in counts):
                return MISSING
            name = [f for f in features if f != GENERATE_TIME][counts.index(None)]
            return self._invalid(entity_id, name, "no value, while the entity's other features have one")
        return tuple(counts)

    def _invalid(self, entity_id, feature, what):
        with self._lock:
            self._stats["invalid_values"] += 1
        self._warn("entity %r, feature %r: %s; the entity counts as failed", entity_id, feature, what)
        return FAILED

    # -- bookkeeping -----------------------------------------------------------

    def _count_retry(self, exc):
        with self._lock:
            self._stats["retries"] += 1

    def _record(self, n_entities, calls, outcomes, errors):
        values = list(outcomes.values())
        failed, missing = values.count(FAILED), values.count(MISSING)
        with self._lock:
            stats = self._stats
            stats["requests"] += 1
            stats["entities"] += n_entities
            stats["calls"] += calls
            stats["found"] += len(outcomes) - failed - missing
            stats["missing"] += missing
            stats["failed"] += failed
            if errors:
                self._last_error = errors[-1][:500]
        if failed and errors:   # per-entity failures (bad values, keys answered with errors) say so themselves
            self._warn(
                "features of %d of %d entities could not be fetched from %s: %s",
                failed, n_entities, self.resource, errors[-1][:500],
            )

    def _warn(self, message, *args):
        now = time.monotonic()
        with self._lock:
            if now - self._warned_at < WARNING_INTERVAL:
                self._suppressed_warnings += 1
                return
            suppressed, self._suppressed_warnings, self._warned_at = self._suppressed_warnings, 0, now
        if suppressed:
            message += " (%d more warnings in the last %gs not shown)"
            args += (suppressed, WARNING_INTERVAL)
        log.warning("store %r: " + message, self.settings.name, *args)

    def describe(self):
        settings = self.settings
        with self._lock:
            fetches = dict(self._stats, last_error=self._last_error)
        return {
            "backend": self.backend,
            "resource": self.resource,
            "endpoint": settings.endpoint,
            "credentials": "none (plaintext)" if settings.plaintext else "application default",
            "client_initialised": self._client is not None,
            "deadline_ms": settings.deadline_ms,
            "attempt_timeout_ms": settings.attempt_timeout_ms,
            "chunk_size": settings.chunk_size,
            "pool_size": settings.pool_size,
            "retry": settings.retry,
            "load_seconds": self._load_seconds,
            "fetches": fetches,
            "cache": self._cache.describe() if self._cache is not None else {"enabled": False},
            "circuit_breaker": self._breaker.describe() if self._breaker is not None else {"enabled": False},
        }
