"""What the two Vertex AI Feature Store backends share: settings, the
per-worker thread pool, deadlines and retries, value checks and the cache.

Nothing here imports the Google libraries at import time: the gunicorn master
parses the settings, and neither it nor a worker of another backend should
pay the 1-2 s and ~110 MB of ``google.cloud.aiplatform_v1``, nor hold gRPC
state across a fork. ``load()`` imports them, in the worker, after the fork.

A request's features are fetched like this::

    entity ids (prefix + item id + suffix), duplicates fetched once
      -> the cache, if enabled
      -> chunks of at most chunk_size (<= 100) ids
      -> one task per chunk on the worker's bounded thread pool, all at once:
         the backend's calls, each with the time left as its gRPC timeout
         (at most attempt_timeout_ms); UNAVAILABLE and DEADLINE_EXCEEDED are
         retried with jittered exponential backoff (google.api_core.retry)
         while time is left, never after
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
"""

import concurrent.futures
import functools
import logging
import math
import threading
import time
from dataclasses import dataclass

import numpy as np

from mab.errors import ConfigError
from mab.stores import FeatureBatch

log = logging.getLogger(__name__)

#: The most entity ids one call may carry (the legacy service's limit).
MAX_CHUNK_SIZE = 100
# How long after the deadline fetch() still waits for a chunk whose calls
# have all timed out: enough for a pool thread to notice and return.
DEADLINE_GRACE = 0.02
# An attempt needs at least this much time left to be worth starting.
MIN_ATTEMPT_SECONDS = 0.001
# At most one warning per store this often; the rest are counted.
WARNING_INTERVAL = 10.0
CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


class _Outcome:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


MISSING = _Outcome("MISSING")
FAILED = _Outcome("FAILED")


class DeadlineReached(Exception):
    """The fetch's deadline passed before an attempt could start."""


class UnexpectedAnswer(Exception):
    """The service answered something the backend cannot read."""


# -- settings ------------------------------------------------------------------


def _pop_id(table, key, where, required):
    """A resource id or project/location: a non-empty string without '/'."""
    if key not in table:
        if required:
            raise ConfigError(f"{where}.{key} is required")
        return None
    value = table.pop(key)
    if not isinstance(value, str) or not value or "/" in value or value != value.strip():
        raise ConfigError(f"{where}.{key} must be a non-empty id without '/' or spaces, got {value!r}")
    return value


def _pop_number(table, key, where, default, *, minimum, maximum=None, integer=False, above=False):
    if key not in table:
        return default
    value = table.pop(key)
    kinds = int if integer else (int, float)
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        raise ConfigError(f"{where}.{key} must be {kind}, got {value!r}")
    if (value <= minimum if above else value < minimum) or (maximum is not None and value > maximum):
        low = f"> {minimum}" if above else f">= {minimum}"
        high = f" and <= {maximum}" if maximum is not None else ""
        raise ConfigError(f"{where}.{key} must be {low}{high}, got {value!r}")
    return float(value) if not integer else value


def _pop_bool(table, key, where, default):
    if key not in table:
        return default
    value = table.pop(key)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be true or false, got {value!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class VertexSettings:
    """Settings both Vertex backends take; each adds its resource ids.

    Times are in milliseconds except the cache's TTL (seconds). The defaults
    are starting points: tune deadline_ms and attempt_timeout_ms from the
    latency the service measures.
    """

    name: str
    project: str
    location: str
    api_endpoint: str | None = None    # default: the regional endpoint
    plaintext: bool = False            # gRPC without TLS or credentials: local stand-ins only
    deadline_ms: float = 300.0         # the whole feature fetch of one request
    attempt_timeout_ms: float = 150.0  # one call; default half the deadline, so a hung call is retried once
    chunk_size: int = MAX_CHUNK_SIZE
    pool_size: int = 16
    retry: bool = True
    retry_initial_ms: float = 10.0
    retry_max_ms: float = 100.0
    retry_multiplier: float = 2.0
    cache_ttl_seconds: float = 0.0     # 0: no cache
    cache_max_entries: int = 100_000

    # The backend's resource id keys, in the order of the resource name.
    RESOURCE_KEYS = ()

    @property
    def endpoint(self):
        return self.api_endpoint or f"{self.location}-aiplatform.googleapis.com"

    @classmethod
    def from_table(cls, name, table, where, base_dir):
        table = dict(table)
        values = {
            "name": name,
            "project": _pop_id(table, "project", where, required=True),
            "location": _pop_id(table, "location", where, required=True),
        }
        for key in cls.RESOURCE_KEYS:
            values[key] = _pop_id(table, key, where, required=True)
        endpoint = table.pop("api_endpoint", None)
        if endpoint is not None and (not isinstance(endpoint, str) or not endpoint.strip() or "/" in endpoint):
            raise ConfigError(f"{where}.api_endpoint must be host or host:port, got {endpoint!r}")
        values["api_endpoint"] = endpoint
        values["plaintext"] = _pop_bool(table, "plaintext", where, False)
        if values["plaintext"] and endpoint is None:
            raise ConfigError(
                f"{where}.plaintext needs api_endpoint: plaintext gRPC is only for a local "
                f"endpoint such as a stand-in on 127.0.0.1:9010"
            )
        deadline = _pop_number(table, "deadline_ms", where, cls.deadline_ms, minimum=0, above=True)
        values["deadline_ms"] = deadline
        values["attempt_timeout_ms"] = _pop_number(
            table, "attempt_timeout_ms", where, deadline / 2, minimum=0, maximum=deadline, above=True
        )
        values["chunk_size"] = _pop_number(
            table, "chunk_size", where, cls.chunk_size, minimum=1, maximum=MAX_CHUNK_SIZE, integer=True
        )
        values["pool_size"] = _pop_number(table, "pool_size", where, cls.pool_size, minimum=1, maximum=1024, integer=True)
        values["retry"] = _pop_bool(table, "retry", where, True)
        initial = _pop_number(table, "retry_initial_ms", where, cls.retry_initial_ms, minimum=0, above=True)
        values["retry_initial_ms"] = initial
        values["retry_max_ms"] = _pop_number(table, "retry_max_ms", where, max(cls.retry_max_ms, initial), minimum=initial)
        values["retry_multiplier"] = _pop_number(table, "retry_multiplier", where, cls.retry_multiplier, minimum=1)
        values["cache_ttl_seconds"] = _pop_number(table, "cache_ttl_seconds", where, 0.0, minimum=0)
        values["cache_max_entries"] = _pop_number(
            table, "cache_max_entries", where, cls.cache_max_entries, minimum=1, integer=True
        )
        if table:
            raise ConfigError(f"{where}: unknown setting(s) {', '.join(sorted(table))}")
        return cls(**values)


# -- the cache -----------------------------------------------------------------


class FeatureCache:
    """Entities' outcomes (counts or MISSING) for ``ttl`` seconds, per worker.

    Holds at most ``max_entries``; the oldest go first. Failures are never
    cached. Thread-safe: a gthread worker's request threads share it.
    """

    def __init__(self, ttl, max_entries):
        self.ttl = ttl
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._entries = {}    # (features, entity id) -> (expires at, outcome), oldest first
        self._lock = threading.Lock()

    def get_many(self, features, entity_ids, now):
        found = {}
        with self._lock:
            entries = self._entries
            for entity_id in entity_ids:
                entry = entries.get((features, entity_id))
                if entry is not None and entry[0] > now:
                    found[entity_id] = entry[1]
            self.hits += len(found)
            self.misses += len(entity_ids) - len(found)
        return found

    def put_many(self, features, outcomes, now):
        expires = now + self.ttl
        with self._lock:
            entries = self._entries
            for entity_id, outcome in outcomes.items():
                if outcome is not FAILED:
                    key = (features, entity_id)
                    entries.pop(key, None)    # re-inserted last: the order stays oldest first
                    entries[key] = (expires, outcome)
            excess = len(entries) - self.max_entries
            if excess > 0:
                for key in [key for key, _ in zip(entries, range(excess))]:
                    del entries[key]

    def describe(self):
        with self._lock:
            return {
                "enabled": True,
                "ttl_seconds": self.ttl,
                "max_entries": self.max_entries,
                "entries": len(self._entries),
                "hits": self.hits,
                "misses": self.misses,
            }


# -- the store -----------------------------------------------------------------


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

    def __init__(self, settings, *, cache_dir=None):
        # cache_dir: part of the store interface; a remote store keeps nothing on disk.
        self.settings = settings
        self._client = None
        self._pool = None
        self._retry = None
        self._store_errors = (DeadlineReached, UnexpectedAnswer)
        self._cache = None
        self._deadline = settings.deadline_ms / 1000
        self._attempt_timeout = settings.attempt_timeout_ms / 1000
        self._lock = threading.Lock()
        self._stats = dict.fromkeys(
            ("requests", "entities", "calls", "retries", "found", "missing", "failed", "invalid_values"), 0
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
        if settings.cache_ttl_seconds > 0:
            self._cache = FeatureCache(settings.cache_ttl_seconds, settings.cache_max_entries)
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
        """Stop the pool and close the channel (gunicorn's worker_exit)."""
        pool, client = self._pool, self._client
        self._pool = self._client = None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if client is not None:
            client.transport.close()

    # -- the hot path ----------------------------------------------------------

    def fetch(self, item_ids, prefix, suffix, features, deadline=None):
        """Features of ``prefix + item_id + suffix`` for each item, in order.

        ``deadline`` is a ``time.monotonic()`` instant; the store's own
        deadline_ms, counted from now, applies when it is sooner or None.
        """
        now = time.monotonic()
        end = now + self._deadline if deadline is None else min(deadline, now + self._deadline)
        features = tuple(features)
        entity_ids = [prefix + item_id + suffix for item_id in item_ids] if prefix or suffix else list(item_ids)
        unique = list(dict.fromkeys(entity_ids))
        outcomes = {} if self._cache is None else self._cache.get_many(features, unique, now)
        wanted = [entity_id for entity_id in unique if entity_id not in outcomes] if outcomes else unique
        if wanted:
            fetched = self._fetch_remote(wanted, features, end)
            if self._cache is not None:
                self._cache.put_many(features, fetched, time.monotonic())
            outcomes.update(fetched)
        return self._batch(entity_ids, outcomes, len(features))

    def _fetch_remote(self, entity_ids, features, end):
        size = self.settings.chunk_size
        chunks = [_Chunk(entity_ids[i : i + size]) for i in range(0, len(entity_ids), size)]
        futures = [self._pool.submit(self._run_chunk, chunk, features, end) for chunk in chunks]
        done, not_done = concurrent.futures.wait(futures, timeout=max(0.0, end - time.monotonic()) + DEADLINE_GRACE)
        outcomes = {}
        errors = []
        calls = 0
        for chunk, future in zip(chunks, futures):
            if future in not_done:
                # Still queued behind other requests' chunks, or still
                # running: its ids fail. A running task's own timeouts end it
                # soon; its chunk is not read again.
                future.cancel()
                outcomes.update(dict.fromkeys(chunk.ids, FAILED))
                errors.append("no answer by the deadline")
                continue
            future.result()   # re-raises a bug in the backend; the service's errors are in chunk.error
            calls += chunk.calls
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
        rows = [outcomes.get(entity_id, FAILED) for entity_id in entity_ids]
        zeros = (0.0,) * n_features
        values = [row if type(row) is tuple else zeros for row in rows]
        columns = tuple(np.array([row[j] for row in values], dtype=np.float64) for j in range(n_features))
        failed_mask = np.fromiter((row is FAILED for row in rows), dtype=bool, count=len(rows))
        failed = int(failed_mask.sum())
        missing = sum(row is MISSING for row in rows)
        return FeatureBatch(columns, missing, failed, failed_mask if failed else None)

    # -- values ----------------------------------------------------------------

    def _counts(self, entity_id, features, values):
        """An entity's counts (a tuple of floats), MISSING or FAILED.

        ``values`` holds, per requested feature, a raw FeatureValue message
        or None when the answer had no value for it.
        """
        counts = []
        for name, value in zip(features, values):
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
        if None in counts:
            if all(count is None for count in counts):
                return MISSING
            name = features[counts.index(None)]
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
        failed = sum(outcome is FAILED for outcome in outcomes.values())
        missing = sum(outcome is MISSING for outcome in outcomes.values())
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
        if errors:
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
        }
