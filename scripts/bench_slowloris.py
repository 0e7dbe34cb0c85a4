#!/usr/bin/env python3
"""A normal client's latency while many slow clients hold connections open.

Issue 9 section 5: with 1,000 connections each sending one byte per second
(a request head that never ends, "slowloris"), a normal client must still
get answers, p99 at most 100 ms. This script starts the service under
gunicorn with the project's worker, pinned with taskset to the server cores
(one worker per core), opens the slow connections from this process pinned
to the client cores, and once they are all open measures a normal client:
POST /predict with --ids ids, --rate requests a second, on a keep-alive
connection with a new connection every --fresh-every requests. It prints
the latency percentiles, the statuses, how often the server closed a slow
connection (each is opened again at once), and the server's CPU; and it
stops everything it started, by PID, also on Ctrl-C.

    .venv/bin/python scripts/bench_slowloris.py                         # 1,000 slow connections, 30 s
    .venv/bin/python scripts/bench_slowloris.py --slow 2000 --worker-connections 1000
    .venv/bin/python scripts/bench_slowloris.py --slow 200 --duration 3 # a smoke run
"""

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from mab.testing.processes import Gunicorn, cpu_seconds, session_pids
from mab.testing.slowloris import Slowloris, raise_open_file_limit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_request(ids, n_ids, seed):
    body = json.dumps({"item_ids": random.Random(seed).sample(ids, n_ids)}, separators=(",", ":")).encode()
    return (b"POST /predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body))


def read_response(sock, buffer):
    """(status, rest of the buffer) of one response framed by Content-Length."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buffer += chunk
    head, buffer = buffer.split(b"\r\n\r\n", 1)
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(buffer) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buffer += chunk
    return status, buffer[length:]


def measure(port, request, seconds, rate, fresh_every, timeout):
    """Latencies (s) and statuses of a paced client for `seconds`."""
    latencies, statuses, errors = [], {}, 0
    sock, buffer = None, b""
    next_at = time.monotonic()
    deadline = next_at + seconds
    sent = 0
    while next_at < deadline:
        time.sleep(max(0.0, next_at - time.monotonic()))
        next_at += 1.0 / rate
        started = time.monotonic()
        try:
            if sock is None or sent % fresh_every == 0:
                if sock is not None:
                    sock.close()
                sock, buffer = socket.create_connection(("127.0.0.1", port), timeout=timeout), b""
            sent += 1
            sock.sendall(request)
            status, buffer = read_response(sock, buffer)
        except OSError as exc:
            errors += 1
            statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1
            if sock is not None:
                sock.close()
            sock = None
            continue
        latencies.append(time.monotonic() - started)
        statuses[status] = statuses.get(status, 0) + 1
    if sock is not None:
        sock.close()
    return latencies, statuses, errors


def percentile(values, q):
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1] if len(values) > 1 else float("nan")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slow", type=int, default=1000, help="slow connections (default 1000)")
    parser.add_argument("--byte-every", type=float, default=1.0, help="seconds between bytes of a slow connection")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds the normal client is measured")
    parser.add_argument("--rate", type=float, default=50.0, help="normal client's requests a second")
    parser.add_argument("--fresh-every", type=int, default=10, help="a new connection every N requests")
    parser.add_argument("--ids", type=int, default=400, help="item ids per request")
    parser.add_argument("--items", type=int, default=100_000, help="items in the demo data")
    parser.add_argument("--server-cores", default="0", help="taskset list for the server (one worker each)")
    parser.add_argument("--client-cores", default="1", help="taskset list for this process's clients")
    parser.add_argument("--worker-connections", type=int, default=None, help="gunicorn's worker_connections")
    parser.add_argument("--work-dir", default=None, help="where data and logs go (default: a new temporary one)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    work_dir = args.work_dir or tempfile.mkdtemp(prefix="mab-slowloris-")
    os.makedirs(work_dir, exist_ok=True)
    data = os.path.join(work_dir, "items.csv")
    if not os.path.exists(data):
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_demo_data.py"), "--items",
                        str(args.items), "--out", data], check=True)
    ids = [line.split(",", 1)[0] for line in open(data).read().splitlines()[1:]]
    request = make_request(ids, args.ids, seed=1)
    raise_open_file_limit(args.slow + 1024)
    os.sched_setaffinity(0, {int(core) for core in args.client_cores.split(",")})

    gunicorn_args = f"--worker-connections {args.worker_connections}" if args.worker_connections else ""
    server = Gunicorn(ROOT, {
        "MAB_DATA": data, "MAB_CACHE_DIR": os.path.join(work_dir, "cache"),
        "WEB_CONCURRENCY": str(len(args.server_cores.split(","))), "GUNICORN_CMD_ARGS": gunicorn_args,
    }, os.path.join(work_dir, "gunicorn.log"), cores=args.server_cores)
    try:
        server.start()
        server.wait_ready()
        baseline, _, _ = measure(server.port, request, 2.0, args.rate, args.fresh_every, timeout=10)
        with Slowloris(server.port, args.slow, interval=args.byte_every) as slow:
            time.sleep(2 * args.byte_every)
            pids = session_pids(server.process.pid)
            cpu_before, wall_before = cpu_seconds(pids), time.monotonic()
            latencies, statuses, errors = measure(server.port, request, args.duration, args.rate,
                                                  args.fresh_every, timeout=10)
            cpu = (cpu_seconds(pids) - cpu_before) / (time.monotonic() - wall_before)
            reopened, failed = slow.reopened, slow.failed
    finally:
        server.stop()

    result = {
        "slow_connections": args.slow, "byte_every_s": args.byte_every, "duration_s": args.duration,
        "requests": len(latencies) + errors, "errors": errors,
        "statuses": {str(k): v for k, v in statuses.items()},
        "p50_ms": percentile(latencies, 50) * 1000, "p90_ms": percentile(latencies, 90) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000, "max_ms": max(latencies, default=float("nan")) * 1000,
        "p99_ms_without_slow_clients": percentile(baseline, 99) * 1000,
        "slow_connections_closed_by_the_server": reopened, "slow_connections_not_reopened": failed,
        "server_cpu_utilisation": cpu, "log": server.log_path, "server_pids": sorted(pids),
    }
    print(f"{args.slow} slow connections (a byte every {args.byte_every:g} s); normal client {args.rate:g} req/s, "
          f"{args.ids} ids, a new connection every {args.fresh_every}:")
    print(f"  {result['requests']} requests, statuses {result['statuses']}, errors {errors}")
    print(f"  latency p50 {result['p50_ms']:.1f} ms  p90 {result['p90_ms']:.1f} ms  p99 {result['p99_ms']:.1f} ms  "
          f"max {result['max_ms']:.1f} ms  (p99 without slow clients {result['p99_ms_without_slow_clients']:.1f} ms)")
    print(f"  slow connections closed by the server (and reopened): {reopened}; server CPU {cpu:.0%}")
    print(f"  server log: {server.log_path}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
