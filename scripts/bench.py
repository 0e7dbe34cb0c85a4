#!/usr/bin/env python3
"""End-to-end HTTP benchmark of the mab service, side by side with its peers.

It starts every system under test itself, each pinned with taskset to the
server cores, waits until each is ready, then drives load with wrk (a C load
generator) pinned to the other cores. Systems take turns: every round runs
each concurrency step against each system in turn, so the drift of a shared,
noisy machine hits all of them alike; the report gives medians over rounds
and the ratio of each system to the first. Everything it starts it stops by
PID, also on Ctrl-C.

For each step it reports requests/s, predictions/s, p50/p90/p99/max latency,
errors, the server's CPU utilisation and its CPU time per request (read from
/proc: the steadiest figure on a shared machine), in total and per worker.

    .venv/bin/python scripts/bench.py                        # mab vs the Go peer, 400 ids
    .venv/bin/python scripts/bench.py --systems mab,mab-sync --connections 16,64
    .venv/bin/python scripts/bench.py --ids 10000 --duration 5

Systems (--systems, comma-separated):
    mab          this service under gunicorn with gunicorn.conf.py's defaults
                 (mab.worker.HttptoolsWorker, requests inline)
    mab-baseline the same with numpy's Generator.beta and per-id dict lookups
                 instead of the compiled sampler and index (mab.baseline)
    mab-sync     mab with gunicorn's sync worker
    mab-gthread  mab with gunicorn's gthread worker (4 threads)
    mab-vertex-legacy, mab-vertex, mab-vertex-fetch
                 mab on the Vertex AI backends, served by the local stand-in
                 (mab.testing.vertex_standin, pinned to the load cores, with
                 --standin-latency-ms added to every call and
                 --standin-keys-per-message keys in each streamed answer);
                 mab-vertex reads with StreamingFetchFeatureValues (its
                 default), mab-vertex-fetch with one FetchFeatureValues per key
    mab-vertex-legacy-cache, mab-vertex-cache
                 the same with the per-worker feature cache on: 600 s TTL,
                 refreshed in the background after --cache-refresh-after
                 seconds (default 5, so refreshes run during the steps)

Ids are drawn uniformly (each request's ids distinct) or, with --zipf S,
from a Zipf law of exponent S over the items (so most ids repeat across
requests, as popular items do); --bodies sets how many different request
bodies wrk rotates through.
    go           ../shared/peers/go-peer with its pure-Go sampler (the stronger peer)
    go-cgo       the Go peer with its C++ sampler called through cgo
    url=URL      an already running server (no CPU figures)
"""

import argparse
import datetime
import itertools
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field

from mab.testing.processes import free_port, terminate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")

WRK_SCRIPT = r"""
-- Rotates through prepared bodies (one JSON document per line) and prints
-- one machine-readable summary line at the end.
local bodies = {}
for line in io.lines(os.getenv("MAB_BENCH_BODIES")) do bodies[#bodies + 1] = line end
local headers = {["Content-Type"] = "application/json"}
local i = 0
-- Paced steps: after every response a connection waits a random time with
-- this mean (exponentially distributed), so the connections together send
-- requests at random instants, near connections / mean per second. Without
-- the randomness the connections fall into step and arrive in bursts.
local pause = tonumber(os.getenv("MAB_BENCH_DELAY_MS") or "0")
if pause > 0 then
  math.randomseed(tonumber(os.getenv("MAB_BENCH_SEED") or "1"))
  delay = function() return -math.log(1 - math.random()) * pause end
end
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", nil, headers, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("MABSTATS %d %d %d %d %d %d %d %.1f %.1f %.1f %.1f\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


# -- processes -----------------------------------------------------------------


def session_pids(sid):
    """PIDs of every live process in session `sid` (a server and its workers)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid:       # field 6 of stat: session id
                pids.append(int(entry))
    return pids


def cpu_ticks(pid, include_children=False):
    """utime + stime of one process (and of its reaped children), in ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    ticks = int(fields[11]) + int(fields[12])           # utime, stime
    if include_children:
        ticks += int(fields[13]) + int(fields[14])      # cutime, cstime
    return ticks


class Server:
    """A system under test: started pinned to cores, stopped by PID."""

    def __init__(self, name, command, env, port, ready_path, cores):
        self.name = name
        self.command = command
        self.env = env
        self.port = port
        self.ready_path = ready_path
        self.cores = cores
        self.process = None
        self.log = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self, log_dir):
        self.log = open(os.path.join(log_dir, f"{self.name}.log"), "w")
        # A new session: the server and all its workers share its session id.
        self.process = subprocess.Popen(
            ["taskset", "-c", self.cores, *self.command],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT,
        )

    def wait_ready(self, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout}s; see {self.log.name}")

    def cpu_snapshot(self):
        """Ticks per live PID, plus the master's reaped children (recycled workers)."""
        pids = session_pids(self.process.pid)
        return {pid: cpu_ticks(pid, include_children=(pid == self.process.pid)) for pid in pids}

    def stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        terminate(self.process)
        # Anything of the session still alive (an orphaned worker) goes too.
        for pid in session_pids(self.process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.log:
            self.log.close()


class External:
    """A server someone else runs: load only, no CPU figures."""

    def __init__(self, name, url):
        self.name = name
        self._url = url.rstrip("/")

    @property
    def url(self):
        return self._url

    def start(self, log_dir):
        pass

    def wait_ready(self, timeout=120):
        pass

    def cpu_snapshot(self):
        return None

    def stop(self):
        pass


def python():
    venv = os.path.join(ROOT, ".venv", "bin", "python")
    return venv if os.path.exists(venv) else sys.executable


def make_mab(name, args, worker_class=None, extra_env=None, app="app:app"):
    port = free_port()
    env = dict(os.environ)
    env.update(
        MAB_DATA=args.data,
        WEB_CONCURRENCY=str(args.workers or len(args.server_cores.split(","))),
        GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{port}",
        MAB_CACHE_DIR=os.path.join(args.work_dir, "cache"),
    )
    env.pop("MAB_CONFIG", None)
    if worker_class:
        env["MAB_WORKER_CLASS"] = worker_class
    env.update(extra_env or {})
    command = [python(), "-m", "gunicorn", "-c", os.path.join(ROOT, "gunicorn.conf.py"), app]
    return Server(name, command, env, port, "/ready", args.server_cores)


class StandIn:
    """The local Vertex AI stand-in (mab.testing.vertex_standin), pinned to
    the load cores: it plays the remote feature store, not the server."""

    def __init__(self, args):
        self.args = args
        self.port = free_port()
        self.process = None
        self.log = None

    def start(self):
        if self.process is not None:
            return
        self.log = open(os.path.join(self.args.work_dir, "standin.log"), "w")
        self.process = subprocess.Popen(
            ["taskset", "-c", self.args.load_cores, python(), "-m", "mab.testing.vertex_standin",
             "--data", self.args.data, "--port", str(self.port), "--latency-ms", str(self.args.standin_latency_ms),
             "--keys-per-message", str(self.args.standin_keys_per_message)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT,
        )
        deadline = time.monotonic() + 60
        while "# serving" not in open(self.log.name).read():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the stand-in did not start; see {self.log.name}")
            time.sleep(0.1)

    def stop(self):
        terminate(self.process)
        if self.log:
            self.log.close()


# The resources the stand-in serves, per backend (its --help prints the same).
STANDIN_RESOURCES = {
    "vertex-legacy": 'featurestore = "mab"\nentity_type = "items"\n',
    "vertex": 'feature_online_store = "mab"\nfeature_view = "items"\n',
}


class RemoteStoreServer(Server):
    """mab on a Vertex backend: the stand-in starts first and stops last."""

    def __init__(self, standin, *a, **kw):
        super().__init__(*a, **kw)
        self.standin = standin

    def start(self, log_dir):
        self.standin.start()
        super().start(log_dir)

    def stop(self):
        super().stop()
        self.standin.stop()


def make_vertex(name, args, backend, cache, read_api=None):
    if args.standin is None:
        args.standin = StandIn(args)
    config = os.path.join(args.work_dir, f"{name}.toml")
    with open(config, "w") as f:
        f.write(
            f'[stores.default]\nbackend = "{backend}"\nproject = "local"\nlocation = "us-central1"\n'
            f"{STANDIN_RESOURCES[backend]}"
            f'api_endpoint = "127.0.0.1:{args.standin.port}"\nplaintext = true\n'
            f"cache_ttl_seconds = {600 if cache else 0}\n"
            + (f"cache_refresh_after_seconds = {args.cache_refresh_after}\n" if cache else "")
            + (f'read_api = "{read_api}"\n' if read_api else "")
        )
    server = make_mab(name, args, extra_env={"MAB_CONFIG": config})
    server.env.pop("MAB_DATA")
    return RemoteStoreServer(args.standin, name, server.command, server.env, server.port, "/ready", server.cores)


def make_go(name, args, sampler):
    binary = os.path.join(args.go_peer, "bin", "go-peer")
    if not os.path.exists(binary):
        print(f"building the Go peer in {args.go_peer} ...", file=sys.stderr)
        subprocess.run(["./build.sh"], cwd=args.go_peer, check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    procs = str(len(args.server_cores.split(",")))
    command = [binary, "-data", args.data, "-sampler", sampler, "-addr", f"127.0.0.1:{port}", "-procs", procs]
    return Server(name, command, dict(os.environ), port, "/health", args.server_cores)


def make_system(spec, args):
    if spec.startswith("url="):
        return External(spec, spec[4:])
    factories = {
        "mab": lambda: make_mab("mab", args),
        "mab-sync": lambda: make_mab("mab-sync", args, "sync"),
        "mab-gthread": lambda: make_mab("mab-gthread", args, "gthread", {"MAB_WORKER_THREADS": "4"}),
        "mab-baseline": lambda: make_mab("mab-baseline", args, app="mab.baseline:create_baseline_app()"),
        "mab-vertex-legacy": lambda: make_vertex("mab-vertex-legacy", args, "vertex-legacy", cache=False),
        "mab-vertex-legacy-cache": lambda: make_vertex("mab-vertex-legacy-cache", args, "vertex-legacy", cache=True),
        "mab-vertex": lambda: make_vertex("mab-vertex", args, "vertex", cache=False),
        "mab-vertex-cache": lambda: make_vertex("mab-vertex-cache", args, "vertex", cache=True),
        "mab-vertex-fetch": lambda: make_vertex("mab-vertex-fetch", args, "vertex", cache=False, read_api="fetch"),
        "go": lambda: make_go("go", args, "go"),
        "go-cgo": lambda: make_go("go-cgo", args, "cgo"),
    }
    if spec not in factories:
        raise SystemExit(f"unknown system {spec!r}; known: {', '.join(factories)}, url=URL")
    return factories[spec]()


# -- load ---------------------------------------------------------------------------


def ensure_wrk():
    if subprocess.run(["which", "wrk"], capture_output=True).returncode == 0:
        return
    print("installing wrk from Debian's packages ...", file=sys.stderr)
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, stdout=subprocess.DEVNULL)


def read_ids(path, limit=None):
    ids = []
    with open(path) as f:
        next(f)
        for line in f:
            ids.append(line.split(",", 1)[0])
            if limit and len(ids) >= limit:
                break
    return ids


def zipf_weights(n, exponent):
    """P(rank r) proportional to 1 / r**exponent, r = 1..n (a Zipf law over n items)."""
    return [1.0 / rank**exponent for rank in range(1, n + 1)]


def write_bodies(path, ids, n_ids, count, seed, zipf=None):
    """`count` request bodies of `n_ids` ids drawn from the data set, one per
    line: distinct uniform draws, or with `zipf` (an exponent) draws with
    replacement from a Zipf law over the ids in a random order of popularity."""
    rng = random.Random(seed)
    if zipf:
        ranked = list(ids)
        rng.shuffle(ranked)
        cumulative = list(itertools.accumulate(zipf_weights(len(ranked), zipf)))
    with open(path, "w") as f:
        for _ in range(count):
            if zipf:
                chosen = rng.choices(ranked, cum_weights=cumulative, k=n_ids)
            else:
                chosen = rng.sample(ids, n_ids) if n_ids <= len(ids) else rng.choices(ids, k=n_ids)
            f.write(json.dumps({"user_id": "u1", "item_ids": chosen}, separators=(",", ":")) + "\n")


@dataclass
class Step:
    system: str
    connections: int
    round: int
    requests: int
    seconds: float
    requests_per_s: float
    predictions_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    non_2xx: int
    cpu_utilisation: float | None = None
    cpu_us_per_request: float | None = None
    cpu_us_per_request_by_worker: dict = field(default_factory=dict)
    # For paced steps: the fraction of this round's peak rate that was
    # offered, and the fraction served.
    paced_fraction: float | None = None
    achieved_fraction: float | None = None


def run_wrk(server, args, connections, duration, bodies_path, script_path, target_rate=None):
    """One step of load; with `target_rate` (req/s) each connection is paced
    to offer about that rate in total."""
    command = [
        "taskset", "-c", args.load_cores, "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s",
        "--timeout", "10s", "-s", script_path, server.url + "/predict",
    ]
    env = dict(os.environ, MAB_BENCH_BODIES=bodies_path)
    if target_rate:
        # wrk truncates delay() to whole milliseconds; long means (many
        # connections) keep that small.
        env["MAB_BENCH_DELAY_MS"] = str(connections / target_rate * 1000)
    before = server.cpu_snapshot()
    started = time.monotonic()
    output = subprocess.run(command, env=env, capture_output=True, text=True, timeout=duration + 60)
    wall = time.monotonic() - started
    after = server.cpu_snapshot()
    line = next((l for l in output.stdout.splitlines() if l.startswith("MABSTATS")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{output.stdout}\n{output.stderr}")
    values = line.split()[1:]
    requests, duration_us, connect, read, write, status, timeout = map(int, values[:7])
    p50, p90, p99, worst = (float(v) / 1000.0 for v in values[7:])
    seconds = duration_us / 1e6
    step = Step(
        system=server.name, connections=connections, round=0, requests=requests, seconds=seconds,
        requests_per_s=requests / seconds, predictions_per_s=requests * args.ids / seconds,
        p50_ms=p50, p90_ms=p90, p99_ms=p99, max_ms=worst,
        errors=connect + read + write + timeout, non_2xx=status,
    )
    if before is not None and requests:
        total = sum(after.values()) - sum(before.get(pid, 0) for pid in after)
        step.cpu_utilisation = total / CLK_TCK / wall
        step.cpu_us_per_request = total / CLK_TCK / requests * 1e6
        master = server.process.pid
        for pid, ticks in after.items():
            if pid != master:
                step.cpu_us_per_request_by_worker[str(pid)] = (ticks - before.get(pid, 0)) / CLK_TCK / requests * 1e6
    return step


# -- reporting ------------------------------------------------------------------------


def summarize(steps, systems, connections, paced=(), paced_connections=None):
    """Median over rounds of every figure, per (system, step)."""
    rows = []
    for c, fraction in [(c, None) for c in connections] + [(paced_connections, f) for f in paced]:
        base = None
        for system in systems:
            mine = [s for s in steps if s.system == system and s.connections == c and s.paced_fraction == fraction]
            if not mine:
                continue

            def med(key):
                values = [getattr(s, key) for s in mine if getattr(s, key) is not None]
                return statistics.median(values) if values else None

            row = {
                "system": system, "connections": c, "paced_fraction": fraction, "rounds": len(mine),
                **{k: med(k) for k in ("requests_per_s", "predictions_per_s", "p50_ms", "p90_ms", "p99_ms",
                                        "max_ms", "cpu_utilisation", "cpu_us_per_request", "achieved_fraction")},
                "errors": sum(s.errors for s in mine), "non_2xx": sum(s.non_2xx for s in mine),
                # Median per worker over the rounds (a worker recycled mid-run has fewer).
                "cpu_us_per_request_by_worker": {
                    pid: statistics.median(s.cpu_us_per_request_by_worker[pid] for s in mine
                                           if pid in s.cpu_us_per_request_by_worker)
                    for pid in dict.fromkeys(p for s in mine for p in s.cpu_us_per_request_by_worker)
                },
            }
            if base is None:
                base = mine
                row["rps_vs_first"] = 1.0
                row["cpu_vs_first"] = 1.0 if row["cpu_us_per_request"] else None
            else:
                # Ratios within each round, then the median: drift cancels.
                pairs = [(a, b) for a in base for b in mine if a.round == b.round]
                row["rps_vs_first"] = statistics.median(b.requests_per_s / a.requests_per_s for a, b in pairs)
                cpu_pairs = [(a, b) for a, b in pairs if a.cpu_us_per_request and b.cpu_us_per_request]
                row["cpu_vs_first"] = (
                    statistics.median(a.cpu_us_per_request / b.cpu_us_per_request for a, b in cpu_pairs)
                    if cpu_pairs else None
                )
            rows.append(row)
    return rows


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def print_workers(rows):
    """CPU per request of each worker, where a system has more than one."""
    lines = [
        f"- {r['system']}, {r['connections']} connections: "
        + ", ".join(f"worker {pid}: {us:.0f} us" for pid, us in r["cpu_us_per_request_by_worker"].items())
        for r in rows if len(r["cpu_us_per_request_by_worker"]) > 1
    ]
    if lines:
        print("\nServer CPU per request (of all requests) by worker:")
        print("\n".join(lines))


def print_table(rows, first):
    print(f"\n| system | connections | req/s | predictions/s | p50 ms | p90 ms | p99 ms | max ms | errors | "
          f"server CPU | CPU us/req | req/s vs {first} | CPU/req: {first} / system |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        step = str(r["connections"]) if r["paced_fraction"] is None else (
            f"{r['connections']}, paced to {r['paced_fraction']:.0%} of peak (served {r['achieved_fraction']:.0%})")
        print(
            f"| {r['system']} | {step} | {fmt(r['requests_per_s'], ',.0f')} "
            f"| {fmt(r['predictions_per_s'], ',.0f')} | {fmt(r['p50_ms'], '.2f')} | {fmt(r['p90_ms'], '.2f')} "
            f"| {fmt(r['p99_ms'], '.2f')} | {fmt(r['max_ms'], '.1f')} | {r['errors'] + r['non_2xx']} "
            f"| {fmt(r['cpu_utilisation'] and 100 * r['cpu_utilisation'], '.0f')}% "
            f"| {fmt(r['cpu_us_per_request'], '.0f')} | {fmt(r['rps_vs_first'], '.2f')}x "
            f"| {fmt(r['cpu_vs_first'], '.2f')}x |"
        )


def write_chart(rows, path, title):
    """Throughput against p99 latency, one line per system (points: concurrency steps)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no chart", file=sys.stderr)
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for system in dict.fromkeys(r["system"] for r in rows):
        mine = sorted((r for r in rows if r["system"] == system), key=lambda r: r["predictions_per_s"])
        xs = [r["predictions_per_s"] / 1e6 for r in mine]
        ys = [r["p99_ms"] for r in mine]
        ax.plot(xs, ys, marker="o", label=system)
        for r, x, y in zip(mine, xs, ys):
            label = str(r["connections"]) if r["paced_fraction"] is None else f"{r['paced_fraction']:.0%}"
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("million predictions per second")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", default="mab,go,go-cgo", help="comma-separated; the first is the reference")
    parser.add_argument("--connections", default="32", help="comma-separated concurrency steps (default 32)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per step (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of load before measuring each system")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported (default 3)")
    parser.add_argument("--paced", default="", metavar="FRACTIONS",
                        help="also offer these fractions of each system's peak rate (e.g. 0.5,0.8) each round, "
                             "pacing each of --paced-connections connections")
    parser.add_argument("--paced-connections", type=int, default=64)
    parser.add_argument("--ids", type=int, default=400, help="item_ids per request (default 400)")
    parser.add_argument("--items", type=int, default=100_000, help="items in the generated data set")
    parser.add_argument("--data", help="CSV to serve (default: generated, --items items)")
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: one per server core)")
    parser.add_argument("--server-cores", default="0", help="taskset list for the servers (default 0)")
    parser.add_argument("--load-cores", default="1", help="taskset list for wrk (default 1)")
    parser.add_argument("--go-peer", default=os.path.join(ROOT, "..", "shared", "peers", "go-peer"))
    parser.add_argument("--standin-latency-ms", type=float, default=0.0,
                        help="latency the Vertex stand-in adds to every call (default 0)")
    parser.add_argument("--standin-keys-per-message", type=int, default=0, metavar="N",
                        help="keys per streamed answer of the stand-in (default 0: one answer per request message)")
    parser.add_argument("--cache-refresh-after", type=float, default=5.0, metavar="SECONDS",
                        help="cache_refresh_after_seconds of the -cache systems (default 5; their TTL is 600)")
    parser.add_argument("--zipf", type=float, metavar="S",
                        help="draw ids from a Zipf law of exponent S (e.g. 1.1) instead of uniformly")
    parser.add_argument("--bodies", type=int, default=32,
                        help="different request bodies wrk rotates through (default 32)")
    parser.add_argument("--out", help="JSON results path (default bench-results/<time>.json); the chart goes beside it")
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
    args = parser.parse_args(argv)

    ensure_wrk()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    args.work_dir = tempfile.mkdtemp(prefix="mab-bench-")
    args.go_peer = os.path.abspath(args.go_peer)
    if not args.data:
        args.data = os.path.join(args.work_dir, f"items-{args.items}.csv")
        subprocess.run([python(), os.path.join(ROOT, "scripts", "make_demo_data.py"), "--items", str(args.items),
                        "--out", args.data], check=True, stderr=subprocess.DEVNULL)
    bodies_path = os.path.join(args.work_dir, "bodies.jsonl")
    write_bodies(bodies_path, read_ids(args.data), args.ids, count=args.bodies, seed=20261122, zipf=args.zipf)
    script_path = os.path.join(args.work_dir, "bench.lua")
    with open(script_path, "w") as f:
        f.write(WRK_SCRIPT)
    connections = [int(c) for c in args.connections.split(",")]
    args.standin = None
    systems = [make_system(spec.strip(), args) for spec in args.systems.split(",")]

    steps = []
    # SIGTERM (from a CI runner, say) ends the run like Ctrl-C does: cleanly.
    signal.signal(signal.SIGTERM, interrupt)
    try:
        for system in systems:
            system.start(args.work_dir)
        for system in systems:
            system.wait_ready()
            if args.warmup > 0:
                run_wrk(system, args, min(connections), args.warmup, bodies_path, script_path)
        paced = [float(f) for f in args.paced.split(",")] if args.paced else []
        total = args.rounds * (len(connections) + len(paced)) * len(systems)
        done = 0
        for round_no in range(args.rounds):
            for c in connections:
                for system in systems:
                    done += 1
                    print(f"[{done}/{total}] round {round_no + 1}, {system.name}, {c} connections ...",
                          file=sys.stderr, flush=True)
                    step = run_wrk(system, args, c, args.duration, bodies_path, script_path)
                    step.round = round_no
                    steps.append(step)
                    print(f"    {step.requests_per_s:,.0f} req/s, p99 {step.p99_ms:.1f} ms, "
                          f"CPU {fmt(step.cpu_us_per_request, '.0f')} us/req", file=sys.stderr, flush=True)
            for fraction in paced:
                for system in systems:
                    done += 1
                    peak = max(s.requests_per_s for s in steps if s.system == system.name and s.round == round_no
                               and s.paced_fraction is None)
                    print(f"[{done}/{total}] round {round_no + 1}, {system.name}, paced at {fraction:.0%} of "
                          f"{peak:,.0f} req/s ...", file=sys.stderr, flush=True)
                    # A short run first: responses take time too, so a connection
                    # offers less than connections / mean; scale the target by
                    # what that run served, then measure.
                    target = fraction * peak
                    trial = run_wrk(system, args, args.paced_connections, 3, bodies_path, script_path,
                                    target_rate=target)
                    target *= target / max(trial.requests_per_s, 1.0)
                    step = run_wrk(system, args, args.paced_connections, args.duration, bodies_path, script_path,
                                   target_rate=target)
                    step.achieved_fraction = step.requests_per_s / peak
                    step.round, step.paced_fraction = round_no, fraction
                    steps.append(step)
                    print(f"    {step.requests_per_s:,.0f} req/s, p99 {step.p99_ms:.1f} ms", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted: stopping the servers", file=sys.stderr)
        raise SystemExit(130)
    finally:
        for system in systems:
            system.stop()

    names = [s.name for s in systems]
    rows = summarize(steps, names, connections, [float(f) for f in args.paced.split(",")] if args.paced else [],
                     args.paced_connections)
    draw = f"Zipf({args.zipf:g}) ids, {args.bodies} bodies" if args.zipf else f"uniform ids, {args.bodies} bodies"
    title = (f"{args.ids} ids per request ({draw}), {args.items:,} items; servers on cores {args.server_cores}, "
             f"wrk on cores {args.load_cores}; medians of {args.rounds} rounds of {args.duration:g}s")
    print("\n" + title)
    print_table(rows, names[0])
    print_workers(rows)
    out = args.out or os.path.join(ROOT, "bench-results", f"bench-{stamp}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"arguments": {k: v for k, v in vars(args).items() if k != "standin"}, "summary": rows,
                   "server_pids": {s.name: s.process.pid for s in systems if getattr(s, "process", None)},
                   "steps": [asdict(s) for s in steps]}, f, indent=2)
    print(f"\nresults: {out}", file=sys.stderr)
    if not args.no_chart:
        chart = write_chart(rows, os.path.splitext(out)[0] + ".png", title)
        if chart:
            print(f"chart: {chart}", file=sys.stderr)


if __name__ == "__main__":
    main()
