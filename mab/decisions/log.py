"""A worker's decision log: a bounded queue, and a writer thread that
drains it in batches into a sink.

The request path (``PredictionService.predict``) only builds a tuple of
references and calls ``DecisionLog.submit``, which is
``queue.Queue.put_nowait``: when the queue is full the record is dropped and
counted, never waited for. The writer thread wakes every ``drain_seconds``,
moves what is queued into a batch, and hands the batch to the sink once it
holds ``batch_records`` records (one Parquet row group) or its oldest record
has waited ``flush_seconds``. A sink that blocks (a slow or hung disk, a
stdout nobody reads) blocks only that thread: pyarrow and ``os.write``
release the GIL while they wait, the queue fills, and further decisions are
dropped and counted (``mab_decisions_dropped_total{reason="queue_full"}``).

Every decision the service selects ends in exactly one count, per model:
``logged`` once readers can see it (its Parquet file renamed into place,
its JSON line written), or ``dropped`` with a reason: ``queue_full``,
``write_error`` (the sink failed; its file's records go too), or
``shutdown`` (still queued when the writer had to be abandoned on close).
"""

import logging
import queue
import threading
import time
from collections import Counter

from mab.decisions import record as rec
from mab.decisions.sinks import JsonLinesSink, ParquetSink, SinkError, prepare_directory
from mab.errors import ConfigError

log = logging.getLogger(__name__)

#: Records per batch: one Parquet row group (docs/decisions.md: larger row
#: groups compress the ids little better and hold more memory).
BATCH_RECORDS = 512
#: How often the writer thread looks at the queue. It is not woken per
#: record: a wake-up (a thread switch and the GIL handed over) would cost
#: more than queueing the record.
DRAIN_SECONDS = 0.05
#: The longest a record waits in a partial batch before it is written.
FLUSH_SECONDS = 1.0
#: A write in progress for longer than this shows as "stalled" in /ready.
STALL_SECONDS = 5.0
#: How long ``close`` waits for the writer to write what is queued.
CLOSE_SECONDS = 10.0
#: At most one logged error per this many seconds (a full disk fails every batch).
ERROR_LOG_SECONDS = 60.0

DROP_REASONS = ("queue_full", "write_error", "shutdown")


class DecisionLog:
    """The queue and writer thread of one worker.

    ``sink``: a ``ParquetSink``, ``JsonLinesSink`` or any object with their
    interface. ``queue_records``: the queue's capacity (records; each holds
    the request's arrays, about 26 kB for 400 candidates).
    ``bind(models)`` must be called before the writer starts (the service
    does it): {name: ``mab.model.BetaModel``}, read for each model's
    ``ModelInfo`` the first time one of its records is written.
    """

    def __init__(self, sink, *, queue_records=2048, batch_records=BATCH_RECORDS, drain_seconds=DRAIN_SECONDS,
                 flush_seconds=FLUSH_SECONDS, clock=time.monotonic):
        if queue_records < 1:
            raise ValueError(f"queue_records must be >= 1, got {queue_records}")
        self.sink = sink
        self.queue_records = queue_records
        self.batch_records = max(1, min(batch_records, queue_records))
        self.drain_seconds = drain_seconds
        self.flush_seconds = flush_seconds
        self.clock = clock
        self.models = {}
        self._queue = queue.Queue(queue_records)
        self._put = self._queue.put_nowait
        self._infos = {}
        self._logged = Counter()          # model -> records (the writer thread adds)
        self._dropped = Counter()         # (model, reason) -> records
        self._drop_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._writing_since = None
        self._pending = 0
        self._last_error = None
        self._last_error_logged = None
        self._state = "new"

    def bind(self, models):
        self.models = models

    # -- the request path --------------------------------------------------------

    def submit(self, record):
        """Queue one record (a tuple, ``mab.decisions.record``) for the
        writer, or drop and count it when the queue is full. Never blocks."""
        try:
            self._put(record)
        except queue.Full:
            self._drop(record[rec.MODEL], "queue_full", 1)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self):
        """Start the writer thread (a daemon: it never keeps a worker alive)."""
        if self._thread is not None:
            return
        self._state = "running"
        self._thread = threading.Thread(target=self._run, name="mab-decisions", daemon=True)
        self._thread.start()

    def close(self, timeout=CLOSE_SECONDS):
        """Stop taking records, write what is queued, close the sink (the
        last Parquet file goes into place). Waits at most ``timeout``
        seconds for the writer; if it is still busy then (a hung disk), what
        is still queued is counted as dropped (``shutdown``) and the writer
        is left behind. Returns True if the writer finished."""
        self._stop.set()
        if self._thread is None:
            self._state = "stopped"
            self._count_abandoned()
            return True
        self._thread.join(timeout)
        if self._thread.is_alive():
            abandoned = self._count_abandoned()
            log.error("decision log: the writer is still busy after %.0f s (stalled sink); "
                      "%d queued decisions dropped", timeout, abandoned)
            self._state = "abandoned"
            return False
        return True

    def _count_abandoned(self):
        abandoned = 0
        while True:
            try:
                record = self._queue.get_nowait()
            except queue.Empty:
                return abandoned
            self._drop(record[rec.MODEL], "shutdown", 1)
            abandoned += 1

    # -- counts and state ----------------------------------------------------------

    def _drop(self, model, reason, n):
        with self._drop_lock:
            self._dropped[model, reason] += n

    def counts(self):
        """``(logged, dropped)``: {model: records} and {(model, reason):
        records} since the start, for the metrics (mab.metrics)."""
        with self._drop_lock:
            dropped = dict(self._dropped)
        return dict(self._logged), dropped

    def describe(self):
        """The writer's state for /ready: ``state`` is running, stalled (a
        write has taken over STALL_SECONDS: the sink is slow or hung),
        stopped, or abandoned (closed while stalled)."""
        logged, dropped = self.counts()
        state = self._state
        since = self._writing_since
        if state == "running" and since is not None and self.clock() - since > STALL_SECONDS:
            state = "stalled"
        by_reason = Counter()
        for (_, reason), n in dropped.items():
            by_reason[reason] += n
        return {
            "state": state,
            "queued": self._queue.qsize(),
            "queue_records": self.queue_records,
            "batch": self._pending,
            "logged": sum(logged.values()),
            "dropped": dict(by_reason),
            "last_error": self._last_error,
            **self.sink.describe(),
        }

    # -- the writer thread ----------------------------------------------------------

    def _run(self):
        pending = []
        oldest = None
        try:
            while True:
                stopping = self._stop.wait(self.drain_seconds)
                while True:
                    self._take(pending, self.batch_records - len(pending))
                    if pending and oldest is None:
                        oldest = self.clock()
                    self._pending = len(pending)
                    if len(pending) < self.batch_records:
                        break
                    self._write(pending)
                    pending, oldest = [], None
                if pending and (stopping or self.clock() - oldest >= self.flush_seconds):
                    self._write(pending)
                    pending, oldest = [], None
                self._pending = len(pending)
                self._call(self.sink.rotate_if_due, ())
                if stopping:
                    self._call(self.sink.close, ())
                    break
        except BaseException:
            log.exception("decision log: the writer thread failed")
            self._state = "failed"
            raise
        self._state = "stopped"

    def _take(self, pending, room):
        get = self._queue.get_nowait
        for _ in range(room):
            try:
                pending.append(get())
            except queue.Empty:
                return

    def _write(self, records):
        self._call(self._write_batch, (records,), records)

    def _write_batch(self, records):
        infos = self._infos
        for name in {record[rec.MODEL] for record in records}:
            if name not in infos:
                infos[name] = rec.model_info(self.models[name])
        return self.sink.write(records, infos)

    def _call(self, method, args, records=()):
        """Run a sink method; count what it made visible, or what was lost."""
        self._writing_since = self.clock()
        try:
            committed = method(*args)
        except SinkError as exc:
            self._logged.update(exc.committed)
            for model, n in exc.lost.items():
                self._drop(model, "write_error", n)
            self._error(str(exc))
        except Exception as exc:
            # A sink without SinkError (an injected one): its batch is lost.
            for model, n in Counter(record[rec.MODEL] for record in records).items():
                self._drop(model, "write_error", n)
            self._error(f"{type(exc).__name__}: {exc}")
        else:
            if committed:
                self._logged.update(committed)
        finally:
            self._writing_since = None

    def _error(self, message):
        self._last_error = message
        now = self.clock()
        if self._last_error_logged is None or now - self._last_error_logged >= ERROR_LOG_SECONDS:
            self._last_error_logged = now
            log.error("decision log: %s (decisions are dropped and counted in "
                      "mab_decisions_dropped_total{reason=\"write_error\"})", message)


def check_decision_log(config):
    """What the gunicorn master checks before it forks, when a model logs
    decisions to Parquet: that the directory exists or can be made, and is
    writable. Raises ``ConfigError`` naming it. (The workers, which write
    there, create their sinks after the fork.)"""
    settings = config.decision_log
    if not config.logs_decisions or settings.sink != "parquet":
        return None
    try:
        return prepare_directory(settings.directory)
    except OSError as exc:
        raise ConfigError(f"decision_log.directory: {settings.directory}: {exc.strerror or exc}") from None


def create_sink(settings):
    """The sink a ``mab.config.DecisionLogConfig`` names. Raises
    ``ConfigError`` when the Parquet directory cannot be made or written, or
    the compression is not in this pyarrow build."""
    if settings.sink == "jsonl":
        return JsonLinesSink()
    compression = settings.compression
    if compression is not None and compression != "none":
        import pyarrow as pa

        if not pa.Codec.is_available(compression):
            raise ConfigError(f"decision_log.compression: this pyarrow build has no {compression!r} codec")
    try:
        return ParquetSink(
            settings.directory,
            rotate_records=settings.rotate_records,
            rotate_seconds=settings.rotate_seconds,
            compression=compression,
        )
    except OSError as exc:
        raise ConfigError(f"decision_log.directory: {settings.directory}: {exc.strerror or exc}") from None


def create_decision_log(config, sink=None):
    """The ``DecisionLog`` of a ``mab.config.Config`` (its ``[decision_log]``
    table), on ``sink`` if given (tests inject their own), else on the sink
    the configuration names (``create_sink``). Not started."""
    settings = config.decision_log
    return DecisionLog(sink if sink is not None else create_sink(settings), queue_records=settings.queue_records)
