"""Prometheus metrics for one worker: recorded cheaply, exported by GET /metrics.

Under gunicorn, prometheus-client runs in its multiprocess mode: the master
sets ``PROMETHEUS_MULTIPROC_DIR`` (mab/gunicorn_conf.py) before any worker
starts, every process writes its values to memory-mapped files there, and a
scrape sums every process's files (``MultiProcessCollector``), so it sees the
whole server whichever worker answers it. Without that variable (falcon's
TestClient, a plain WSGI server) the app exports its own registry.

Cost. One value write in multiprocess mode takes a lock and an mmap write:
measured with ``python scripts/metrics_cost.py`` (docs/metrics.md), 1.8 us
for a counter, 3.2 us for a histogram observation, 4.0 us for a gauge's
inc and dec. Writing directly, the ~17 writes of one /predict would cost
about 34 us, 20% of the 171 us of server CPU it takes. So the request path
only adds to plain Python numbers under one lock (``Recorder.request``), and
``Recorder.flush`` moves them into the prometheus values: every second from
a daemon thread, and before every scrape this worker answers. A scrape thus
sees the other workers' traffic up to one second late.

The in-flight gauge (the autoscaling signal) is such a number too: the
count of requests (other than scrapes) the worker is running, written at
each flush with multiprocess mode "livesum" (summed over live workers; a
dead worker's file is removed by ``mark_process_dead`` in the master's
child_exit hook).
"""

import bisect
import logging
import os
import threading
import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess

log = logging.getLogger(__name__)

# bisect_left: a value equal to a bound falls in that bound's bucket (le="bound").
_bisect = bisect.bisect_left

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FLUSH_SECONDS = 1.0
# The text format every Prometheus reads (exposition format 0.0.4); our
# names need none of version 1.0.0's escaping. Written out: older
# prometheus-client releases do not name it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Routes by their path; anything else is "other", so a scanner's paths
# cannot grow the label set without bound.
ROUTES = ("/predict", "/feedback", "/health", "/ready", "/openapi.json", "/metrics")
STAGES = ("parse", "fetch", "sample", "rank", "encode")

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STAGE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)
ITEMS_BUCKETS = (1, 10, 50, 100, 200, 400, 1000, 2000, 5000, 10000)

# Keys of the WSGI environ where the /predict resource leaves what it knew,
# for Recorder.request to read once the response is done.
MODEL_KEY = "mab.metrics.model"
PREDICTION_KEY = "mab.metrics.prediction"   # (items, missing, degraded, stage seconds tuple)

# The Vertex stores' counters (their describe()["fetches"] and ["cache"]),
# exported as counters by the delta since the last flush.
STORE_FETCH_COUNTERS = ("requests", "calls", "retries", "found", "missing", "failed", "invalid_values", "short_circuited")
STORE_CACHE_COUNTERS = ("hits", "stale_served", "misses", "expired", "evictions", "refresh_failures")


def multiprocess_dir():
    """The multiprocess directory if this process uses one, else None."""
    return os.environ.get(MULTIPROC_ENV) or None


class _Histogram:
    """Counts per bucket and a sum, in plain Python, to be flushed
    (Recorder.request adds to them: counts[bisect_left(bounds, value)])."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)   # the last one is +Inf
        self.total = 0.0


def _flush_histogram(child, pending):
    """Add `pending` (a _Histogram) to a prometheus Histogram child.

    prometheus-client has no public way to add many observations at once;
    its Histogram keeps one value per bucket, non-cumulative, and the sum
    (``_buckets``, ``_sum``; stable since 0.4). tests/test_metrics.py
    checks the exported buckets against the observations."""
    child._sum.inc(pending.total)
    for value, count in zip(child._buckets, pending.counts):
        if count:
            value.inc(count)


class Recorder:
    """This worker's metrics: the prometheus objects, the plain-Python
    numbers the request path adds to, and the exposition.

    ``stores``: name -> store, read at each flush (describe()).
    ``build``: dict with version, openmp, sampler_threads.
    """

    def __init__(self, stores=None, build=None):
        self.multiprocess = multiprocess_dir() is not None
        self.stores = stores or {}
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests_total = Counter(
            "mab_http_requests", "HTTP requests answered, by route, status and model.",
            ["route", "status", "model"], registry=r)
        self.duration = Histogram(
            "mab_http_request_duration_seconds", "Time from the app's start of a request to its response, by route.",
            ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge(
            "mab_http_requests_in_flight", "Requests being run by the app (scrapes excluded), summed over workers.",
            multiprocess_mode="livesum", registry=r)
        self.queue = Histogram(
            "mab_http_queue_seconds",
            "Time a request waited between reaching the machine and the app's start (mab's worker only).",
            buckets=LATENCY_BUCKETS, registry=r)
        self.items = Histogram(
            "mab_predict_items", "Items per /predict request.", buckets=ITEMS_BUCKETS, registry=r)
        self.missing = Counter(
            "mab_predict_missing_items", "Items absent from the store (ranked from the prior).", registry=r)
        self.degraded = Counter(
            "mab_predict_degraded_items", "Items whose features could not be fetched (store failure).", registry=r)
        self.stage = Histogram(
            "mab_predict_stage_seconds", "Time per stage of a /predict request.",
            ["stage"], buckets=STAGE_BUCKETS, registry=r)
        self.build_info = Gauge(
            "mab_build_info", "Always 1; the labels describe the build.",
            ["version", "openmp", "sampler_threads"], multiprocess_mode="livemax", registry=r)
        self.store_events = Counter(
            "mab_store_events", "Feature-store counters (Vertex stores' fetches and cache), by store and event.",
            ["store", "event"], registry=r)
        self.breaker_open = Gauge(
            "mab_store_breaker_open", "Workers whose circuit breaker for the store is open.",
            ["store"], multiprocess_mode="livesum", registry=r)
        # The embedded stores' snapshots. While a reload hands over, old and
        # new workers serve different snapshots for a moment: the info
        # metric then has a series for each, the timestamp is the oldest
        # data served (what a staleness alert wants), the rows those most
        # recently reported.
        self.snapshot_info = Gauge(
            "mab_snapshot_info", "Always 1 per embedded data snapshot a live worker serves; the labels identify "
            "it: its compiled copy's name, its CSV file and the file's SHA-256.",
            ["store", "snapshot", "source", "sha256"], multiprocess_mode="livemax", registry=r)
        self.snapshot_rows = Gauge(
            "mab_snapshot_rows", "Rows of the embedded data snapshot served.",
            ["store"], multiprocess_mode="livemostrecent", registry=r)
        self.snapshot_created = Gauge(
            "mab_snapshot_created_timestamp_seconds", "When the oldest embedded data snapshot a live worker "
            "serves was written (its CSV file's modification time, Unix seconds); age = time() - this.",
            ["store"], multiprocess_mode="livemin", registry=r)
        if build is not None:
            self.build_info.labels(str(build["version"]), str(build["openmp"]), str(build["sampler_threads"])).set(1)

        self._lock = threading.Lock()          # the request path's numbers
        self._flush_lock = threading.Lock()
        self._running = 0
        self._new_pending()
        self._store_seen = {}
        self._shed_source = None
        self._shed_seen = 0
        self.shed = Counter(
            "mab_http_requests_shed", "Requests answered 503 by admission control (waited too long to start).",
            registry=r)
        # The decision log (mab.decisions): its own counts, read at each flush.
        self.decisions_logged = Counter(
            "mab_decisions_logged", "Decisions written to the decision log and visible to readers, by model.",
            ["model"], registry=r)
        self.decisions_dropped = Counter(
            "mab_decisions_dropped", "Decisions selected for the decision log but not written, by model and reason "
            "(queue_full, write_error, shutdown).",
            ["model", "reason"], registry=r)
        self._decisions_source = None
        self._decisions_seen = {}
        self._thread = None

    def _new_pending(self):
        self._counts = {}                                  # (route, status, model) -> n
        self._durations = {route: _Histogram(LATENCY_BUCKETS) for route in ROUTES + ("other",)}
        self._items = _Histogram(ITEMS_BUCKETS)
        self._queue = _Histogram(LATENCY_BUCKETS)
        self._stages = [_Histogram(STAGE_BUCKETS) for _ in STAGES]
        self._missing = 0
        self._degraded = 0

    # -- the request path -------------------------------------------------------

    def started(self):
        """A request (not a scrape) started."""
        with self._lock:
            self._running += 1

    def put_back(self, counted_in_flight):
        """A request that started is put back unanswered, to run again
        (mab.http.wsgi.RunOnThread): it is counted when it does."""
        if counted_in_flight:
            with self._lock:
                self._running -= 1

    def request(self, path, status, seconds, environ, counted_in_flight, queued=None):
        """One answered request: its path, status (str, e.g. "200"), seconds
        in the app, its environ (what the /predict resource left there), and
        the seconds it waited before the app started it (None: unknown)."""
        route = path if path in ROUTES else "other"
        model = environ.get(MODEL_KEY, "")
        prediction = environ.get(PREDICTION_KEY)
        # _Histogram.observe written out: a method call per observation
        # was a third of this function's cost.
        with self._lock:
            if counted_in_flight:
                self._running -= 1
            key = (route, status, model)
            counts = self._counts
            counts[key] = counts.get(key, 0) + 1
            histogram = self._durations[route]
            histogram.counts[_bisect(LATENCY_BUCKETS, seconds)] += 1
            histogram.total += seconds
            if queued is not None:
                histogram = self._queue
                histogram.counts[_bisect(LATENCY_BUCKETS, queued)] += 1
                histogram.total += queued
            if prediction is not None:
                n_items, missing, degraded, stage_seconds = prediction
                histogram = self._items
                histogram.counts[_bisect(ITEMS_BUCKETS, n_items)] += 1
                histogram.total += n_items
                self._missing += missing
                self._degraded += degraded
                for histogram, value in zip(self._stages, stage_seconds):
                    histogram.counts[_bisect(STAGE_BUCKETS, value)] += 1
                    histogram.total += value

    def watch_shed(self, read_total):
        """Export the count `read_total()` returns (admission control's
        refusals, a count that never goes down) as mab_http_requests_shed_total."""
        self._shed_source = read_total

    def watch_decisions(self, read_counts):
        """Export the decision log's counts: ``read_counts()`` returns
        ``({model: logged}, {(model, reason): dropped})``, totals that never
        go down (``mab.decisions.DecisionLog.counts``), as
        mab_decisions_logged_total and mab_decisions_dropped_total."""
        self._decisions_source = read_counts

    # -- flushing ----------------------------------------------------------------

    def flush(self):
        """Move what the request path counted into the prometheus values, and
        read the stores' counters. Safe from any thread: a scrape's flush
        and the timer's never overlap (the stores' deltas depend on it)."""
        with self._flush_lock:
            self._flush()

    def _flush(self):
        with self._lock:
            counts, durations, items, stages = self._counts, self._durations, self._items, self._stages
            queue = self._queue
            missing, degraded, running = self._missing, self._degraded, self._running
            self._new_pending()
        for (route, status, model), n in counts.items():
            self.requests_total.labels(route, status, model).inc(n)
        for route, pending in durations.items():
            if pending.total or any(pending.counts):
                _flush_histogram(self.duration.labels(route), pending)
        if any(items.counts):
            _flush_histogram(self.items, items)
        if any(queue.counts):
            _flush_histogram(self.queue, queue)
        for stage, pending in zip(STAGES, stages):
            if any(pending.counts):
                _flush_histogram(self.stage.labels(stage), pending)
        if missing:
            self.missing.inc(missing)
        if degraded:
            self.degraded.inc(degraded)
        self.in_flight.set(running)
        if self._shed_source is not None:
            total = self._shed_source()
            if total > self._shed_seen:
                self.shed.inc(total - self._shed_seen)
                self._shed_seen = total
        if self._decisions_source is not None:
            self._flush_decisions()
        self._flush_stores()

    def _flush_decisions(self):
        logged, dropped = self._decisions_source()
        seen = self._decisions_seen
        for model, total in logged.items():
            delta = total - seen.get(("logged", model), 0)
            if delta > 0:
                self.decisions_logged.labels(model).inc(delta)
                seen["logged", model] = total
        for (model, reason), total in dropped.items():
            delta = total - seen.get(("dropped", model, reason), 0)
            if delta > 0:
                self.decisions_dropped.labels(model, reason).inc(delta)
                seen["dropped", model, reason] = total

    def _flush_stores(self):
        for name, store in self.stores.items():
            try:
                info = store.describe()
            except Exception:       # a store that cannot describe itself must not stop the metrics
                log.exception("store %r: describe() failed", name)
                continue
            if "snapshot" in info:      # the embedded store
                self.snapshot_info.labels(name, info["snapshot"], info["source"], info.get("sha256") or "").set(1)
                self.snapshot_rows.labels(name).set(info["items"])
                if info.get("source_mtime") is not None:
                    self.snapshot_created.labels(name).set(info["source_mtime"])
            current = {}
            for event in STORE_FETCH_COUNTERS:
                value = info.get("fetches", {}).get(event)
                if value is not None:
                    current[event] = value
            cache = info.get("cache", {})
            for event in STORE_CACHE_COUNTERS:
                if event in cache:
                    current["cache_" + event] = cache[event]
            seen = self._store_seen.setdefault(name, {})
            for event, value in current.items():
                delta = value - seen.get(event, 0)
                if delta > 0:
                    self.store_events.labels(name, event).inc(delta)
                seen[event] = value
            breaker = info.get("circuit_breaker")
            if breaker and breaker.get("enabled", True) and "state" in breaker:
                self.breaker_open.labels(name).set(1 if breaker["state"] == "open" else 0)

    def start_flushing(self, interval=FLUSH_SECONDS):
        """Flush every `interval` seconds from a daemon thread (in a
        multiprocess worker, so that other workers' scrapes see this one)."""
        def run():
            while True:
                time.sleep(interval)
                try:
                    self.flush()
                except Exception:
                    log.exception("metrics flush failed")

        self._thread = threading.Thread(target=run, name="mab-metrics", daemon=True)
        self._thread.start()

    # -- exposition ----------------------------------------------------------------

    def exposition(self):
        """(body bytes, content type) of a scrape: the whole server's values
        in multiprocess mode, this app's otherwise."""
        self.flush()
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE
        return generate_latest(self.registry), CONTENT_TYPE


class MetricsResource:
    """GET /metrics: the Prometheus text format (exposition format 0.0.4)."""

    def __init__(self, recorder, served_by):
        self.recorder = recorder
        self.served_by = served_by

    def on_get(self, req, resp):
        resp.data, resp.content_type = self.recorder.exposition()
        # Which worker answered: in multiprocess mode any of them sees all.
        resp.set_header("X-Served-By", self.served_by())


# -- the master's side (mab/gunicorn_conf.py) ----------------------------------------


def reloads_counter():
    """mab_reloads_total{result}, counted by the master (on_reload): each
    reload (HUP) applied, or refused (its configuration or data did not
    pass the check; the workers keep what was checked before)."""
    return Counter("mab_reloads", "Reloads (HUP) by result: applied, or refused (the configuration and data "
                   "checked before stay served).", ["result"], registry=None)


def worker_restarts_counter():
    """mab_worker_restarts_total, counted by the master (child_exit)."""
    return Counter("mab_worker_restarts", "Worker processes that exited (replaced by the master unless it stops).",
                   registry=None)
