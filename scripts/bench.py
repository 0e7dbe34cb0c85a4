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
    mab-sync     the same with gunicorn's sync worker
    mab-gthread  the same with gunicorn's gthread worker
    mab-httptools  the same with mab.worker.HttptoolsWorker
    go           ../shared/peers/go-peer with its pure-Go sampler (the stronger peer)
    go-cgo       the Go peer with its C++ sampler called through cgo
    url=URL      an already running server (no CPU figures)
"""

import argparse
import datetime
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")

WRK_SCRIPT = r"""
-- Rotates through prepared bodies (one JSON document per line) and prints
-- one machine-readable summary line at the end.
local bodies = {}
for line in io.lines(os.getenv("MAB_BENCH_BODIES")) do bodies[#bodies + 1] = line end
local headers = {["Content-Type"] = "application/json"}
local i = 0
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
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
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


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def python():
    venv = os.path.join(ROOT, ".venv", "bin", "python")
    return venv if os.path.exists(venv) else sys.executable


def make_mab(name, args, worker_class=None, extra_env=None):
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
    command = [python(), "-m", "gunicorn", "-c", os.path.join(ROOT, "gunicorn.conf.py"), "app:app"]
    return Server(name, command, env, port, "/ready", args.server_cores)


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
        "mab-gthread": lambda: make_mab("mab-gthread", args, "gthread"),
        "mab-httptools": lambda: make_mab("mab-httptools", args, "mab.worker.HttptoolsWorker"),
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


def write_bodies(path, ids, n_ids, count, seed):
    """`count` request bodies of `n_ids` ids drawn from the data set, one per line."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(count):
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


def run_wrk(server, args, connections, duration, bodies_path, script_path):
    command = [
        "taskset", "-c", args.load_cores, "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s",
        "--timeout", "10s", "-s", script_path, server.url + "/predict",
    ]
    env = dict(os.environ, MAB_BENCH_BODIES=bodies_path)
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


def summarize(steps, systems, connections):
    """Median over rounds of every figure, per (system, connections)."""
    rows = []
    for c in connections:
        base = None
        for system in systems:
            mine = [s for s in steps if s.system == system and s.connections == c]
            if not mine:
                continue

            def med(key):
                values = [getattr(s, key) for s in mine if getattr(s, key) is not None]
                return statistics.median(values) if values else None

            row = {
                "system": system, "connections": c, "rounds": len(mine),
                **{k: med(k) for k in ("requests_per_s", "predictions_per_s", "p50_ms", "p90_ms", "p99_ms",
                                        "max_ms", "cpu_utilisation", "cpu_us_per_request")},
                "errors": sum(s.errors for s in mine), "non_2xx": sum(s.non_2xx for s in mine),
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


def print_table(rows, first):
    print(f"\n| system | conns | req/s | predictions/s | p50 ms | p90 ms | p99 ms | max ms | errors | "
          f"server CPU | CPU us/req | req/s vs {first} | CPU/req: {first} / system |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['system']} | {r['connections']} | {fmt(r['requests_per_s'], ',.0f')} "
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
        mine = sorted((r for r in rows if r["system"] == system), key=lambda r: r["connections"])
        xs = [r["predictions_per_s"] / 1e6 for r in mine]
        ys = [r["p99_ms"] for r in mine]
        ax.plot(xs, ys, marker="o", label=system)
        for r, x, y in zip(mine, xs, ys):
            ax.annotate(str(r["connections"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
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
    parser.add_argument("--ids", type=int, default=400, help="item_ids per request (default 400)")
    parser.add_argument("--items", type=int, default=100_000, help="items in the generated data set")
    parser.add_argument("--data", help="CSV to serve (default: generated, --items items)")
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: one per server core)")
    parser.add_argument("--server-cores", default="0", help="taskset list for the servers (default 0)")
    parser.add_argument("--load-cores", default="1", help="taskset list for wrk (default 1)")
    parser.add_argument("--go-peer", default=os.path.join(ROOT, "..", "shared", "peers", "go-peer"))
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
    write_bodies(bodies_path, read_ids(args.data), args.ids, count=32, seed=20261122)
    script_path = os.path.join(args.work_dir, "bench.lua")
    with open(script_path, "w") as f:
        f.write(WRK_SCRIPT)
    connections = [int(c) for c in args.connections.split(",")]
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
                run_wrk(system, args, max(connections), args.warmup, bodies_path, script_path)
        total = args.rounds * len(connections) * len(systems)
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
    except KeyboardInterrupt:
        print("interrupted: stopping the servers", file=sys.stderr)
        raise SystemExit(130)
    finally:
        for system in systems:
            system.stop()

    names = [s.name for s in systems]
    rows = summarize(steps, names, connections)
    title = (f"{args.ids} ids per request, {args.items:,} items; servers on cores {args.server_cores}, "
             f"wrk on cores {args.load_cores}; medians of {args.rounds} rounds of {args.duration:g}s")
    print("\n" + title)
    print_table(rows, names[0])
    out = args.out or os.path.join(ROOT, "bench-results", f"bench-{stamp}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"arguments": {k: v for k, v in vars(args).items()}, "summary": rows,
                   "server_pids": {s.name: s.process.pid for s in systems if getattr(s, "process", None)},
                   "steps": [asdict(s) for s in steps]}, f, indent=2)
    print(f"\nresults: {out}", file=sys.stderr)
    if not args.no_chart:
        chart = write_chart(rows, os.path.splitext(out)[0] + ".png", title)
        if chart:
            print(f"chart: {chart}", file=sys.stderr)


if __name__ == "__main__":
    main()
