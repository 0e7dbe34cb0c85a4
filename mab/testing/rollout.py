"""Rollout drills: the service under load while it reloads or stops.

A drill starts gunicorn (mab's settings, ``workers`` workers) on a demo CSV
named by a configuration file, drives it with wrk (``connections``
keep-alive connections sending ``ids``-id /predict bodies, as ``mab bench``
does; with ``pause_ms`` each connection pauses that long on average
between an answer and its next request, so connections sit idle), and
mid-run does one of:

``steady``
    nothing: the control, what the same load loses with no signal at all;
``hup-data``
    rename a new CSV (other counts, and a probe row the old one lacks) into
    place, send the master HUP;
``hup-config``
    rename a new configuration file (one more model, ``fresh``) into
    place, send HUP;
``hup-bad-data``
    rename a CSV the store refuses (a negative count) into place, send HUP;
``hup-missing-column``
    rename a CSV without the ``failures`` column into place, send HUP;
``term``
    send the master TERM.

The new files are written before the load starts, beside the old ones.
After the HUP the drill probes on fresh connections until the outcome is
there: the new data or model served by new workers only, or for a bad
file the old data still served by new workers and the refusal in /ready.
Then the load runs ``tail`` seconds more and is stopped; its summary counts
what the clients lost.

What counts as lost (``Result.lost``), after a HUP: an answer other than
2xx; a connection that failed (wrk's connect, read and write errors: a
refused connect, a reset, or a close without ``Connection: close``, even
of an idle connection); a request slower than wrk's timeout; a probe that
failed. For TERM, where wrk would count the connects refused after the
listening socket closed as write errors, the client is
``mab.testing.keepalive_load``: lost are an answer other than 2xx, a
request without an answer, and a connection that ended otherwise than
cleanly after an answer with ``Connection: close``; a refused connect is
not lost (no request was sent on it).

``scripts/bench_rollout.py`` runs these drills (10 million rows for the
figures in docs/deploy.md); ``tests/testing/test_rollout.py`` runs them on
200,000 rows.
"""

import http.client
import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass

from mab.bench.load import COUNTING_WRK_SCRIPT, DemoIds, WrkCounts, write_bodies
from mab.demo import write_items
from mab.testing.keepalive_load import KeepAliveLoad, Tally
from mab.testing.processes import Gunicorn, terminate

SCENARIOS = ("steady", "hup-data", "hup-config", "hup-bad-data", "hup-missing-column", "term")
# How long the steady scenario (no signal at all: the control) loads the
# server between ``at`` and ``tail``.
STEADY_SECONDS = 3.0

# The row only the refreshed file holds: a request for it finds it (missing
# 0) once the new snapshot is served, and misses it (missing 1) before.
PROBE_ID = "rollout-probe"


def write_data(path, rows, seed, extra=b""):
    """Write demo data (``rows`` rows, counts from ``seed``) and then the
    bytes ``extra`` to ``path``, as a pipeline should: beside it, then
    renamed into place, so the server never reads half a file."""
    partial = f"{path}.writing"
    write_items(partial, rows, seed=seed)
    if extra:
        with open(partial, "ab") as f:
            f.write(extra)
    os.replace(partial, path)


def write_refused(path, kind):
    """Write to ``path`` (beside it, then renamed) a CSV the embedded store
    refuses: ``bad-data``, a negative count on line 3; ``missing-column``,
    no ``failures`` column."""
    partial = f"{path}.writing"
    with open(partial, "wb") as f:
        if kind == "bad-data":
            f.write(b"item_id,successes,failures\nitem-000000,1,2\nitem-000001,-3,4\n")
        else:
            f.write(b"item_id,successes\nitem-000000,1\n")
    os.replace(partial, path)


def config_text(data_path, cache_dir, fresh_model=False):
    """The drill's configuration (TOML): the store on ``data_path``, the
    model ``default``, and with ``fresh_model`` one more, ``fresh``."""
    text = f'cache_dir = "{cache_dir}"\n\n[stores.default]\npath = "{data_path}"\n\n[models.default]\n'
    if fresh_model:
        text += '\n[models.fresh]\nprior_alpha = 2.0\n'
    return text


@dataclass
class Result:
    """One drill: the load's summary (wrk's ``load`` for a HUP, the
    accounting client's ``tally`` for TERM), the probes, and what the
    server did. ``lost``: see the module's docstring."""

    scenario: str
    rows: int
    requests: int                       # answered
    non_2xx: int
    shed: int                           # of the non-2xx: 503 "overloaded" (admission control)
    lost: int
    load: WrkCounts | None
    tally: Tally | None
    probes: int
    probe_failures: list
    outcome_seconds: float | None       # from the signal to the outcome (None: never)
    workers_before: list
    workers_after: list
    exit_status: int | None             # the master's, for term
    error_lines: list                   # the server log's ERROR lines
    ready_after: dict | None            # /ready once the outcome was there (HUP)
    # HUP: whether every old worker began to drain only after every new
    # worker was ready (from the server's log; None: not a HUP).
    drained_after_ready: bool | None = None

    def as_dict(self):
        return asdict(self)


class Drill:
    """gunicorn with ``workers`` workers on a demo CSV of ``rows`` rows,
    under wrk; ``run(scenario)`` does one of ``SCENARIOS`` and returns a
    ``Result``. Works in ``work_dir`` (the CSV, the compiled copies, the
    log); stops everything it started, by PID (use as a context manager,
    or call ``stop``)."""

    def __init__(self, work_dir, *, rows, workers=2, connections=16, ids=400, pause_ms=0, env=None, cores=None,
                 wrk_timeout=10.0, outcome_timeout=120.0):
        self.work_dir = os.path.abspath(work_dir)
        self.rows = rows
        self.workers = workers
        self.connections = connections
        self.ids = ids
        self.pause_ms = pause_ms
        self.env = dict(env or {})
        self.cores = cores
        self.wrk_timeout = wrk_timeout
        self.outcome_timeout = outcome_timeout
        self.data = os.path.join(self.work_dir, "items.csv")
        self.config = os.path.join(self.work_dir, "mab.toml")
        self.cache = os.path.join(self.work_dir, "cache")
        self.bodies = os.path.join(self.work_dir, "bodies.jsonl")
        self.script = os.path.join(self.work_dir, "rollout.lua")
        self.server = None
        self.wrk = None

    # -- setting up --------------------------------------------------------------

    def prepare(self):
        """Write the data (seed 1), the configuration and wrk's bodies and script."""
        os.makedirs(self.work_dir, exist_ok=True)
        write_data(self.data, self.rows, seed=1)
        with open(self.config, "w") as f:
            f.write(config_text(self.data, self.cache))
        write_bodies(self.bodies, DemoIds(self.rows), self.ids, count=64, seed=20261201)
        with open(self.script, "w") as f:
            f.write(COUNTING_WRK_SCRIPT)

    def start_server(self, timeout=600):
        env = {"MAB_CONFIG": self.config, "WEB_CONCURRENCY": str(self.workers), **self.env}
        self.server = Gunicorn(None, env, os.path.join(self.work_dir, "server.log"), cores=self.cores)
        for name in ("MAB_DATA", "MAB_CACHE_DIR"):
            self.server.env.pop(name, None)
        self.server.start()
        self.server.wait_ready(timeout)
        self._wait_for_workers(lambda pids: len(pids) == self.workers, timeout)

    def stop(self):
        if self.wrk is not None and self.wrk.poll() is None:
            terminate(self.wrk, timeout=10)
        if self.server is not None:
            self.server.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- one drill ------------------------------------------------------------------

    def run(self, scenario, *, at=2.0, tail=2.0):
        """Load, then after ``at`` seconds the scenario's change and signal;
        once its outcome is there (or ``outcome_timeout`` passed), ``tail``
        seconds more load. Returns a ``Result``."""
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
        if scenario == "term":
            return self._run_term(at, tail)
        staged = self._stage(scenario)
        url = f"http://127.0.0.1:{self.server.port}/predict"
        # A long run stopped by SIGINT (wrk then prints its summary): the
        # drill decides when it has seen enough.
        self.wrk = subprocess.Popen(
            ["wrk", "-t1", f"-c{self.connections}", "-d3600s", "--timeout", f"{self.wrk_timeout:g}s",
             "-s", self.script, url],
            env=dict(os.environ, MAB_BENCH_BODIES=self.bodies, MAB_BENCH_DELAY_MS=str(self.pause_ms)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )
        time.sleep(at)
        before = sorted(self.server.worker_pids())
        probes, failures = [0], []
        if scenario == "steady":
            time.sleep(STEADY_SECONDS)
            outcome, ready = 0.0, self._ready()
        else:
            # The new file, written before the load began, is renamed into
            # place: what a pipeline should do (see write_data).
            os.replace(staged, self.config if scenario == "hup-config" else self.data)
            signalled = time.monotonic()
            os.kill(self.server.process.pid, signal.SIGHUP)
            outcome = self._wait_for_outcome(scenario, before, signalled, probes, failures)
            ready = self._ready() if outcome is not None else None
        time.sleep(tail)
        after = sorted(self.server.worker_pids())
        self.wrk.send_signal(signal.SIGINT)
        output, _ = self.wrk.communicate(timeout=60)
        self.wrk = None
        load = WrkCounts.parse(output)
        lost = load.non_2xx + load.read + load.write + load.timeout + load.connect + len(failures)
        return Result(
            scenario=scenario, rows=self.rows, requests=load.requests, non_2xx=load.non_2xx, shed=load.shed,
            lost=lost,
            load=load, tally=None, probes=probes[0], probe_failures=failures,
            outcome_seconds=None if outcome is None else round(outcome, 3),
            workers_before=before, workers_after=after, exit_status=None,
            error_lines=self._error_lines(), ready_after=ready,
            drained_after_ready=None if scenario == "steady" else self._drained_after_ready(before, after),
        )

    def _run_term(self, at, tail):
        """TERM under the accounting client (``mab.testing.keepalive_load``):
        wrk would count the connects refused once the listening socket is
        closed as write errors, like lost requests."""
        with open(self.bodies, "rb") as f:
            body = f.readline().rstrip(b"\n")
        request = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        client = KeepAliveLoad("127.0.0.1", self.server.port, request, connections=self.connections,
                               timeout=self.wrk_timeout).start()
        time.sleep(at)
        before = sorted(self.server.worker_pids())
        signalled = time.monotonic()
        os.kill(self.server.process.pid, signal.SIGTERM)
        client.mark("TERM sent")
        try:
            exit_status = self.server.process.wait(self.outcome_timeout)
            outcome = time.monotonic() - signalled
            client.mark("master exited")
        except subprocess.TimeoutExpired:
            exit_status = outcome = None
        time.sleep(tail)
        tally = client.stop()
        lost = tally.lost + tally.unclean + tally.non_2xx
        return Result(
            scenario="term", rows=self.rows, requests=tally.answered, non_2xx=tally.non_2xx,
            shed=tally.shed, lost=lost,
            load=None, tally=tally, probes=0, probe_failures=[],
            outcome_seconds=None if outcome is None else round(outcome, 3),
            workers_before=before, workers_after=[], exit_status=exit_status,
            error_lines=self._error_lines(), ready_after=None,
        )

    def _drained_after_ready(self, old, new):
        """Whether, in the log, each old worker's "draining" line comes
        after every new worker's "worker ready" line (mab.handover)."""
        lines = self.server.output().splitlines()

        def line_of(pid, text):
            return next((i for i, line in enumerate(lines) if f"[{pid}] [INFO] {text}" in line), None)

        ready = [line_of(pid, "worker ready") for pid in new]
        drained = [line_of(pid, "draining:") for pid in old]
        if None in ready or None in drained:
            return False
        return min(drained) > max(ready)

    def _error_lines(self):
        return [line for line in self.server.output().splitlines() if "[ERROR]" in line]

    def _stage(self, scenario):
        """Write the file the scenario renames into place; its path (None for steady)."""
        if scenario == "steady":
            return None
        if scenario == "hup-config":
            staged = self.config + ".next"
            with open(staged, "w") as f:
                f.write(config_text(self.data, self.cache, fresh_model=True))
        elif scenario == "hup-data":
            staged = self.data + ".next"
            write_data(staged, self.rows, seed=2, extra=f"{PROBE_ID},1000000,0\n".encode())
        else:
            staged = self.data + ".next"
            write_refused(staged, scenario.removeprefix("hup-"))
        return staged

    def _wait_for_outcome(self, scenario, before, signalled, probes, failures):
        """Seconds from the HUP until only new workers run and every probe
        (on a fresh connection, so on any worker) shows the outcome; None
        if it never does within ``outcome_timeout``."""
        deadline = signalled + self.outcome_timeout
        in_a_row = 0
        while time.monotonic() < deadline:
            replaced = not set(self.server.worker_pids()) & set(before)
            shown = self._probe(scenario, probes, failures)
            in_a_row = in_a_row + 1 if replaced and shown else 0
            if in_a_row >= 2 * self.workers:
                return time.monotonic() - signalled
            time.sleep(0.05)
        return None

    def _probe(self, scenario, probes, failures):
        """One request on a new connection: does it show the scenario's outcome?"""
        probes[0] += 1
        if scenario == "hup-config":
            body = {"model": "fresh", "item_ids": ["item-000001"]}
        else:
            body = {"item_ids": [PROBE_ID, "item-000000"]}
        try:
            status, answer = self._post(body)
        except OSError as exc:
            failures.append(f"probe: {exc!r}")
            return False
        if scenario == "hup-config":
            if status not in (200, 404):
                failures.append(f"probe: {status} {answer}")
            return status == 200
        if status != 200:
            failures.append(f"probe: {status} {answer}")
            return False
        if scenario == "hup-data":
            return answer["missing"] == 0
        # A refused file: the old data is still served (the probe row is
        # absent, item-000000 present), and /ready says why.
        return answer["missing"] == 1 and "refused" in json.dumps(self._ready())

    def _post(self, body):
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        try:
            connection.request("POST", "/predict", json.dumps(body), {"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def _ready(self):
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        try:
            connection.request("GET", "/ready")
            return json.loads(connection.getresponse().read())
        except OSError:
            return None
        finally:
            connection.close()

    def _wait_for_workers(self, condition, timeout):
        deadline = time.monotonic() + timeout
        while not condition(self.server.worker_pids()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers not as expected after {timeout}s; see {self.server.log_path}")
            time.sleep(0.05)

