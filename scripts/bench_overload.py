#!/usr/bin/env python3
"""The service offered twice what it can serve, open loop: goodput, latency, shedding.

Issue 9 section 5's targets, at 2x the peak rate with 400 ids a request:
goodput at least 90% of peak, p99 of the accepted requests at most 50 ms,
every excess request answered 503 with Retry-After, no worker killed for
timeout. A closed-loop load generator (wrk) cannot overload a server: it
waits for each answer before it sends again. h2load (Debian's
nghttp2-client) with --rps sends at a set rate whatever the answers.

It starts the service under gunicorn with the project's worker, pinned with
taskset to --server-cores (one worker each), and h2load pinned to
--load-cores, then:

1. peak: h2load closed loop (--clients connections, one request in flight
   each) for --peak-seconds; the peak is its rate of 2xx answers (or give
   --peak to skip this);
2. overload: h2load --h1 --rps at --factor times the peak for --seconds,
   spread over enough connections that each sends --rps-per-client
   requests a second (10). h2load keeps one request in flight per HTTP/1.1
   connection when requests have a body (it pipelines only bodiless ones),
   so a connection holds its rate only while each answer takes less than
   1 / --rps-per-client s: 100 ms, well above what admission control lets
   a request wait. The server's worker_connections is raised to fit. Every
   request's status and latency come from h2load's --log-file. Meanwhile a
   probe sends a request now and then on its own connection and checks
   that every 503 carries Retry-After.

It reports the goodput (2xx a second) and its share of the peak, p50 and
p99 of the 2xx answers, the 503s (and whether each had Retry-After), other
statuses and failures, the worker timeouts in gunicorn's log, and the
server's CPU; as a table and, with --json, as JSON. Everything it starts it
stops, by PID, also on Ctrl-C.

    .venv/bin/python scripts/bench_overload.py                     # one worker on core 0, h2load on core 1
    .venv/bin/python scripts/bench_overload.py --factor 1.5 --seconds 60
    MAB_MAX_QUEUE_MS=0 .venv/bin/python scripts/bench_overload.py   # without the queue limit, to compare
    .venv/bin/python scripts/bench_overload.py --peak-seconds 2 --seconds 3 --items 5000   # a smoke run
"""

import argparse
import json
import math
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from mab.testing.processes import Gunicorn, cpu_seconds, session_pids
from mab.testing.slowloris import raise_open_file_limit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ensure_h2load():
    if shutil.which("h2load"):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing nghttp2-client (h2load)", file=sys.stderr)
        if subprocess.run(["apt-get", "install", "-y", "-q", "nghttp2-client"], capture_output=True).returncode:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-q", "nghttp2-client"], capture_output=True)
    if not shutil.which("h2load"):
        sys.exit("h2load not found: install Debian's nghttp2-client")


def read_log(path):
    """h2load's --log-file rows: (start in s since the epoch, status, seconds to the end of the response)."""
    rows = []
    with open(path) as f:
        for line in f:
            fields = line.split("\t")
            if len(fields) >= 3:
                rows.append((int(fields[0]) / 1e6, int(fields[1]), int(fields[2]) / 1e6))
    return rows


def quantile(values, q):
    if len(values) < 2:
        return float("nan")
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 1000) - 1]


def summarize(rows):
    """Rates over the span of the run, 2xx latencies, statuses."""
    if not rows:
        return {"requests": 0}
    start = min(r[0] for r in rows)
    end = max(r[0] + r[2] for r in rows)
    span = end - start
    ok = [r[2] for r in rows if 200 <= r[1] < 300]
    statuses = {}
    for _, status, _ in rows:
        statuses[status] = statuses.get(status, 0) + 1
    return {
        "requests": len(rows), "seconds": span, "offered_per_s": len(rows) / span, "goodput_per_s": len(ok) / span,
        "p50_ms": quantile(ok, 0.50) * 1000, "p99_ms": quantile(ok, 0.99) * 1000,
        "max_ms": max(ok, default=float("nan")) * 1000,
        "status_503": statuses.get(503, 0), "failed": statuses.get(-1, 0),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def h2load(args, url, body_path, log_path, *, clients, rps=None, requests=None, seconds=None):
    if os.path.exists(log_path):
        os.remove(log_path)                 # h2load appends
    command = ["taskset", "-c", args.load_cores, "h2load", "--h1", "-t", "1", "-c", str(clients),
               "-d", body_path, "-H", "Content-Type: application/json",
               "--log-file", log_path, "-T", "30"]
    if rps is not None:
        command += ["--rps", f"{rps:.3f}", "-n", str(requests)]
    else:
        command += ["-D", str(seconds)]
    run = subprocess.run(command + [url], capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"h2load failed ({run.returncode}):\n{run.stdout}\n{run.stderr}")
    return run.stdout


class Probe:
    """One raw request every `every` s on its own connection: counts 503s
    and those of them with Retry-After."""

    def __init__(self, port, request, every=0.05):
        self.port = port
        self.request = request
        self.every = every
        self.seen = {"503": 0, "503_with_retry_after": 0, "other": 0, "errors": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.every):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                    sock.sendall(self.request)
                    head = b""
                    while b"\r\n\r\n" not in head:
                        chunk = sock.recv(65536)
                        if not chunk:
                            raise ConnectionError("closed")
                        head += chunk
            except OSError:
                self.seen["errors"] += 1
                continue
            head = head.split(b"\r\n\r\n", 1)[0].lower()
            if head[9:12] == b"503":
                self.seen["503"] += 1
                self.seen["503_with_retry_after"] += b"\r\nretry-after:" in head
            else:
                self.seen["other"] += 1

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--factor", type=float, default=2.0, help="offered rate over the peak (default 2)")
    parser.add_argument("--peak", type=float, default=None, help="the peak in requests/s (skip measuring it)")
    parser.add_argument("--peak-seconds", type=int, default=15, help="length of the closed-loop peak run")
    parser.add_argument("--seconds", type=int, default=30, help="length of the overload run")
    parser.add_argument("--clients", type=int, default=32, help="h2load connections of the peak run")
    parser.add_argument("--rps-per-client", type=float, default=10.0,
                        help="requests a second per connection in the overload run (sets the connections)")
    parser.add_argument("--ids", type=int, default=400, help="item ids per request")
    parser.add_argument("--items", type=int, default=100_000, help="items in the demo data")
    parser.add_argument("--server-cores", default="0", help="taskset list for the server (one worker each)")
    parser.add_argument("--load-cores", default="1", help="taskset list for h2load")
    parser.add_argument("--work-dir", default=None, help="where data, logs and h2load logs go")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    ensure_h2load()

    work_dir = args.work_dir or tempfile.mkdtemp(prefix="mab-overload-")
    os.makedirs(work_dir, exist_ok=True)
    data = os.path.join(work_dir, "items.csv")
    if not os.path.exists(data):
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_demo_data.py"), "--items",
                        str(args.items), "--out", data], check=True)
    ids = [line.split(",", 1)[0] for line in open(data).read().splitlines()[1:]]
    body = json.dumps({"item_ids": random.Random(1).sample(ids, min(args.ids, len(ids)))}, separators=(",", ":"))
    body_path = os.path.join(work_dir, "body.json")
    with open(body_path, "w") as f:
        f.write(body)
    probe_request = (b"POST /predict HTTP/1.1\r\nHost: probe\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body.encode()))

    # The overload run's connections, all on one worker at worst.
    most_clients = 20_000
    raise_open_file_limit(most_clients + 1024)
    server = Gunicorn(ROOT, {
        "MAB_DATA": data, "MAB_CACHE_DIR": os.path.join(work_dir, "cache"),
        "WEB_CONCURRENCY": str(len(args.server_cores.split(","))),
        "GUNICORN_CMD_ARGS": f"--worker-connections {most_clients}",
    }, os.path.join(work_dir, "gunicorn.log"), cores=args.server_cores)
    clients = None
    try:
        server.start()
        server.wait_ready()
        url = f"http://127.0.0.1:{server.port}/predict"
        h2load(args, url, body_path, os.path.join(work_dir, "warmup.log"), clients=4, seconds=2)
        peak = args.peak
        peak_summary = None
        if peak is None:
            log = os.path.join(work_dir, "peak.log")
            h2load(args, url, body_path, log, clients=args.clients, seconds=args.peak_seconds)
            peak_summary = summarize(read_log(log))
            peak = peak_summary["goodput_per_s"]
        offered = args.factor * peak
        clients = min(most_clients, max(1, math.ceil(offered / args.rps_per_client)))
        log = os.path.join(work_dir, "overload.log")
        pids = session_pids(server.process.pid)
        server_pids = sorted(pids)
        cpu_before, wall_before = cpu_seconds(pids), time.monotonic()
        with Probe(server.port, probe_request) as probe:
            h2load(args, url, body_path, log, clients=clients, rps=offered / clients,
                   requests=int(offered * args.seconds))
        cpu = (cpu_seconds(session_pids(server.process.pid)) - cpu_before) / (time.monotonic() - wall_before)
        overload = summarize(read_log(log))
    finally:
        server.stop()
    output = server.output()
    worker_timeouts = output.count("WORKER TIMEOUT")

    result = {
        "peak_per_s": peak, "peak_run": peak_summary, "factor": args.factor, "offered_per_s": offered,
        "overload_run": overload, "goodput_share_of_peak": overload.get("goodput_per_s", 0) / peak if peak else None,
        "probe": probe.seen, "worker_timeouts": worker_timeouts, "server_cpu_utilisation": cpu,
        "ids": args.ids, "peak_clients": args.clients, "overload_clients": clients, "work_dir": work_dir,
        "server_pids": server_pids,
    }
    print(f"peak (closed loop, {args.clients} connections): {peak:,.0f} req/s")
    print(f"offered {args.factor:g}x = {offered:,.0f} req/s open loop for {args.seconds} s "
          f"({clients} connections at {offered / clients:.1f} req/s each):")
    print(f"  sent {overload.get('requests', 0):,} at {overload.get('offered_per_s', 0):,.0f} req/s; "
          f"statuses {overload.get('statuses')}")
    print(f"  goodput {overload.get('goodput_per_s', 0):,.0f} req/s = {result['goodput_share_of_peak']:.0%} of peak; "
          f"2xx latency p50 {overload.get('p50_ms', float('nan')):.1f} ms, "
          f"p99 {overload.get('p99_ms', float('nan')):.1f} ms, max {overload.get('max_ms', float('nan')):.1f} ms")
    print(f"  503s: {overload.get('status_503', 0):,}; probe saw {probe.seen['503']} 503s, "
          f"{probe.seen['503_with_retry_after']} with Retry-After")
    print(f"  worker timeouts: {worker_timeouts}; server CPU {cpu:.0%}; logs in {work_dir}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
