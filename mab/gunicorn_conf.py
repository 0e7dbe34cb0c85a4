"""gunicorn settings for the mab prediction service.

Plain settings, each read from the environment with a default, grouped as in
gunicorn's examples/example_config.py. gunicorn's own variables keep their
meaning: WEB_CONCURRENCY sets the worker count, and GUNICORN_CMD_ARGS (for
example "--bind 0.0.0.0:8080") overrides anything in this file.

This file is in the package so that an installed mab can be served from any
directory; ``mab serve`` runs gunicorn with it as its configuration file:

    mab serve                                   # = python -m gunicorn -c <this file> mab.wsgi:app
    gunicorn -c gunicorn.conf.py app:app        # in a checkout: that file runs this one

gunicorn executes a configuration file again on every reload (HUP), so the
settings below are read afresh then; do not import this module for its
values, which are computed when it runs.
"""

import gc
import glob
import os
import shutil
import sys
import tempfile

# -- Server socket -------------------------------------------------------------
#
# bind: gunicorn's default (127.0.0.1:8000, or 0.0.0.0:$PORT when PORT is set);
# change it with --bind in GUNICORN_CMD_ARGS.
# A deep backlog: a load balancer opens many connections at once.

backlog = int(os.environ.get("MAB_BACKLOG", "2048"))

# -- Worker processes ----------------------------------------------------------
#
# workers: one per core this process may run on (taskset and cgroup cpusets
#   respected), since a worker keeps one core busy; WEB_CONCURRENCY overrides.
#
# worker_class: mab.worker.HttptoolsWorker, this project's gunicorn worker:
#   an epoll loop over keep-alive connections, HTTP parsed by httptools.
#   gunicorn's stock workers parse HTTP in pure Python, which cost more than
#   the whole application. Measured with scripts/bench.py (one worker pinned
#   to one core, 400-id requests, 32 connections, docs/benchmarks.md): 171 us
#   of server CPU per request, against 356 us with gunicorn 27's gthread
#   worker and 431 us with its sync worker (5,828, 2,803 and 2,139 req/s).
#   gthread remains a fallback (MAB_WORKER_CLASS=gthread), for TLS say.
#
# threads: requests run inline in the worker's loop when every store is in
#   memory (they are CPU-bound; threads would only switch). With a remote
#   store a request waits on the network, so 16 threads per worker keep the
#   core busy meanwhile. MAB_WORKER_THREADS overrides. The sampler itself
#   uses one thread per worker (MAB_SAMPLER_THREADS), see mab.sampling.
#   MAB_INLINE_FIRST=1 (read by mab.http.worker) first runs a prediction
#   inline even then, and on a thread only when the store's cache lacks some
#   of its items: a shorter latency tail while the cache serves nearly
#   everything, at more CPU per request (measured in docs/benchmarks.md).
#
# max_requests, max_requests_jitter: recycle a worker now and then, at
#   different times across workers, to bound slow leaks: every million
#   requests or so, a few minutes at full load. The embedded store is a shared
#   file mapping, so a new worker is ready in milliseconds.
#
# timeout: a worker silent for this long is killed and replaced.
# graceful_timeout: time to finish in-flight requests on reload or stop.
# keepalive: seconds an idle keep-alive connection is held open.
# worker_tmp_dir: the heartbeat file lives in memory, not on a disk that may
#   stall (gunicorn's advice for containers).



def _threads_for_the_stores():
    from mab.config import load_config
    from mab.errors import MabError

    try:
        config = load_config()
    except MabError:
        return 1        # on_starting reports the error and stops the start
    remote = any(settings.backend != "embedded" for settings in config.stores.values())
    return 16 if remote else 1


workers = int(os.environ.get("WEB_CONCURRENCY", "0")) or len(os.sched_getaffinity(0))
worker_class = os.environ.get("MAB_WORKER_CLASS", "mab.worker.HttptoolsWorker")
threads = int(os.environ.get("MAB_WORKER_THREADS", "0")) or _threads_for_the_stores()
max_requests = int(os.environ.get("MAB_MAX_REQUESTS", "1000000"))
max_requests_jitter = int(os.environ.get("MAB_MAX_REQUESTS_JITTER", "100000"))
timeout = int(os.environ.get("MAB_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("MAB_GRACEFUL_TIMEOUT", "30"))
keepalive = int(os.environ.get("MAB_KEEPALIVE", "75"))
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None

# The application is imported by each worker after the fork, not preloaded in
# the master: libgomp, random streams, thread pools and gRPC channels must not
# cross a fork. The expensive part of loading, compiling the CSV, is done once
# by the master in on_starting below and shared through the page cache.
preload_app = False

# -- Logging -------------------------------------------------------------------
#
# Everything to stdout, where a container runtime collects it. The access log
# costs CPU on every request, so it is off unless MAB_ACCESS_LOG=1. (Not
# logconfig_dict: any logconfig_dict makes gunicorn format an access record
# for every request, even with accesslog unset.) The application's own
# records (logger "mab") go to gunicorn's error log; see _route_app_logs.

loglevel = os.environ.get("MAB_LOG_LEVEL", "info")
errorlog = "/dev/stdout"
accesslog = "/dev/stdout" if os.environ.get("MAB_ACCESS_LOG", "0") == "1" else None
# One JSON object a line (mab.access_log): request id, method, path, status,
# duration, model, items.
logger_class = "mab.access_log.JsonAccessLogger"

proc_name = "mab"


# -- Server hooks --------------------------------------------------------------


def _route_app_logs(log):
    import logging

    app_logger = logging.getLogger("mab")
    app_logger.handlers = list(log.error_log.handlers)
    app_logger.setLevel(log.error_log.level)
    app_logger.propagate = False


def on_starting(server):
    """In the master, before any socket or worker: validate the configuration,
    then compile, map and check every embedded store and the models on it,
    exactly as a worker will load them (mab.preflight), and pin the
    configuration and the checked copies for the workers; check that the
    decision log's directory can be written (mab.decisions) and rebuild the
    node's feedback state from its journal (mab.feedback). A bad
    configuration, a file the workers could not serve or a directory they
    could not write stops the start with one clear message and exit status 1."""
    from mab import handover, preflight
    from mab.config import load_config
    from mab.decisions.log import check_decision_log
    from mab.errors import MabError

    _route_app_logs(server.log)
    _prepare_metrics_dir(server)
    try:
        for name, path in preflight.start(load_config).items():
            server.log.info("store %r: checked, compiled into %s", name, path)
        config = preflight.checked_config()
        directory = check_decision_log(config)
        if directory is not None:
            server.log.info("decision log: Parquet files in %s", directory)
        _prepare_feedback(server, config, fresh=True)
    except MabError as exc:
        sys.exit(f"mab: {exc.message}")
    except Exception as exc:        # the journal: JournalCorrupt, OSError
        sys.exit(f"mab: feedback: {exc}")
    # After the check: on_exit, which removes it, does not run when the start fails.
    handover.prepare()


# -- Feedback (mab.feedback) -----------------------------------------------------
#
# The node's journal of rewards is the truth; the dedup window and the
# overlays of models with online_updates are rebuilt from it, in the master,
# before any worker forks: at start from scratch (a restart replays the
# journal into fresh state, nothing lost, nothing applied twice), and on a
# reload for the snapshots the new workers will serve. Nothing is done for a
# server that has never taken feedback and has no online model.


def _prepare_feedback(server, config, *, fresh):
    from mab.feedback import prepare_node

    online = any(model.online_updates for model in config.models.values())
    if not online and not os.path.isdir(config.feedback.journal):
        return
    described = prepare_node(config, fresh=fresh)
    server.log.info(
        "feedback: journal %s replayed through event %d; online models: %s",
        described["journal"], described["last_seq"], ", ".join(described["overlays"]) or "none",
    )


# -- Metrics (mab.metrics) --------------------------------------------------------
#
# prometheus-client's multiprocess mode: every process writes its values to
# files in PROMETHEUS_MULTIPROC_DIR and a scrape sums them all. The master
# sets it before any worker forks (and before it imports prometheus_client,
# which reads it then). A directory given is emptied: files left by an
# earlier server would be summed in. Without one, a directory of this
# server's own, removed when the master exits.

_METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _prepare_metrics_dir(server):
    path = os.environ.get(_METRICS_ENV)
    if path:
        os.makedirs(path, exist_ok=True)
        for stale in glob.glob(os.path.join(path, "*.db")):
            os.remove(stale)
    else:
        path = tempfile.mkdtemp(prefix="mab-metrics-")
        os.environ[_METRICS_ENV] = path
        server.mab_metrics_tmp = path
    server.log.info("metrics: multiprocess files in %s", path)


def child_exit(server, worker):
    """In the master, once a worker has exited: drop its live gauges (the
    in-flight count it last wrote must not be summed any more) and count
    the exit as mab_worker_restarts_total."""
    from prometheus_client import multiprocess

    from mab.metrics import worker_restarts_counter

    if os.environ.get(_METRICS_ENV):
        multiprocess.mark_process_dead(worker.pid)
        if not hasattr(server, "mab_worker_restarts"):
            server.mab_worker_restarts = worker_restarts_counter()
        server.mab_worker_restarts.inc()


def on_exit(server):
    """The master stops: remove the directories it made for itself."""
    from mab import handover

    handover.cleanup()
    path = getattr(server, "mab_metrics_tmp", None)
    if path:
        shutil.rmtree(path, ignore_errors=True)


def on_reload(server):
    """On HUP, before the new workers start (docs/deploy.md, "Data refreshes
    and rollouts"): load the configuration and check the data again, here,
    once, so the new workers serve the file as it is now and only map it.
    A changed CSV file is compiled (8 s of CPU for 10 million rows) while
    the old workers serve, in a child process at niceness
    MAB_COMPILE_NICENESS (default 10: serving comes first; 0: the compile
    competes with the workers as an equal). If the check fails, the error
    is logged (ERROR, with the file and line, or the key), counted
    (mab_reloads_total) and shown by /ready, and the new workers serve the
    configuration and data checked before. Then tell the old workers to
    serve until the new ones are ready (mab.handover): gunicorn sends them
    TERM as soon as it has spawned the new ones."""
    from mab import handover, preflight
    from mab.config import load_config
    from mab.metrics import reloads_counter

    niceness = int(os.environ.get("MAB_COMPILE_NICENESS", str(preflight.COMPILE_NICENESS)))
    checked, error = preflight.reload(load_config, niceness)
    if error is None:
        for name, path in checked.items():
            server.log.info("store %r: checked again, compiled into %s", name, path)
        try:
            _prepare_feedback(server, preflight.checked_config(), fresh=False)
        except Exception as exc:
            server.log.error("mab: reload: feedback: %s", exc)
    else:
        serving = ", ".join(preflight.last_reload()["serving"].values()) or "no embedded store"
        server.log.error("mab: reload refused: %s; the workers keep serving the configuration and data "
                         "checked before (%s)", error, serving)
    if os.environ.get(_METRICS_ENV):
        if not hasattr(server, "mab_reloads"):
            server.mab_reloads = reloads_counter()
        server.mab_reloads.labels("applied" if error is None else "refused").inc()
    # Old workers wait at most as long as a silent worker is given to live.
    handover.begin_reload(server.worker_age, server.cfg.workers, server.cfg.timeout or server.cfg.graceful_timeout)


def post_fork(server, worker):
    """In the new worker, before it imports the app: its logs go where the master's do."""
    _route_app_logs(worker.log)


def post_worker_init(worker):
    """Take connections only once the app can answer them. Otherwise a worker
    recycled by max_requests would answer 503 (not ready) while it maps its
    stores. Bounded well inside the heartbeat timeout (worker.timeout is half
    of `timeout`, so this waits a sixth of it); if loading fails or takes
    longer, the worker serves and /ready tells why. Once ready, it tells the
    workers it replaces on a reload (mab.handover), which then drain."""
    from mab import handover

    service = getattr(worker.wsgi, "service", None)
    ready = service is None or service.wait_until_ready(worker.timeout / 3)
    _freeze_loaded_objects()
    if not ready:
        worker.log.warning("not ready after %.0fs; serving anyway (/ready says why)", worker.timeout / 3)
        return
    worker.log.info("worker ready")
    handover.announce_ready(worker.age)


def _freeze_loaded_objects():
    """Move what the worker holds once loaded (modules, the app, the Vertex
    client's ~100 MB of imports) out of the garbage collector's reach
    (``gc.freeze``, Python 3.7+): a full collection otherwise walks all of
    it again every few thousand requests. In-process, one such collection
    in 3,200 remote 400-key reads took 87 ms, 27 us a read. Garbage made
    while loading is collected first, so none of it is kept."""
    gc.collect()
    gc.freeze()


def worker_exit(server, worker):
    """Release what the worker's app holds: first its decision log (the
    writer writes what is queued and closes its file into place, waiting
    at most 10 s for a stalled disk), then the metrics' last flush (so the
    final logged and dropped counts reach the multiprocess files), then
    the store maps, pools and channels."""
    app = getattr(worker, "wsgi", None)
    service = getattr(app, "service", None)
    if service is not None:
        service.close_decision_log()
        recorder = getattr(app, "metrics", None)
        if recorder is not None:
            try:
                recorder.flush()
            except Exception:
                worker.log.exception("metrics: the last flush failed")
        service.close()
