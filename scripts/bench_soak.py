#!/usr/bin/env python3
"""A long run at a steady fraction of the peak: does memory or the number of
open files grow? (issue 9 section 5: 10 minutes at 80% of peak, RSS within
5% of its value after warm-up, open file descriptors constant.)

It starts the service (one worker, pinned to --server-cores, never recycled by
max_requests), measures the
peak with wrk (closed loop, --connections, a few seconds) unless --peak is
given, then offers --fraction of it with paced wrk connections (random
exponential gaps, as scripts/bench.py's paced steps) for --minutes, pinned
to --load-cores. Every --every seconds it samples the worker's RSS (from
/proc/PID/status), its open file descriptors (/proc/PID/fd) and its
threads. The reference is the first sample after --warmup seconds; the
report gives the largest deviation of RSS from it, the range of open
descriptors, and wrk's totals. Everything it starts it stops, by PID.

    .venv/bin/python scripts/bench_soak.py                       # 10 minutes at 80% of peak
    .venv/bin/python scripts/bench_soak.py --minutes 1 --warmup 15 --every 5   # a short look
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from mab.bench.load import WRK_SCRIPT, ensure_wrk, read_ids, write_bodies
from mab.testing.processes import Gunicorn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker_pid(master_pid, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = subprocess.run(["pgrep", "-P", str(master_pid)], capture_output=True, text=True).stdout.split()
        if children:
            return int(children[0])
        time.sleep(0.2)
    raise RuntimeError("no worker")


def sample(pid):
    """(RSS in KiB, open file descriptors, threads) of a process."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return int(fields["VmRSS"].split()[0]), len(os.listdir(f"/proc/{pid}/fd")), int(fields["Threads"])


def wrk(port, args, connections, seconds, bodies, script, delay_ms=None):
    env = dict(os.environ, MAB_BENCH_BODIES=bodies)
    if delay_ms:
        env["MAB_BENCH_DELAY_MS"] = str(delay_ms)
    return subprocess.Popen(
        ["taskset", "-c", args.load_cores, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
         "-s", script, f"http://127.0.0.1:{port}/predict"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def summary(output):
    line = next((l for l in output.splitlines() if l.startswith("MABSTATS")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{output}")
    values = line.split()[1:]
    requests, duration_us, connect, read, write, status, timeout = map(int, values[:7])
    return {"requests": requests, "seconds": duration_us / 1e6, "requests_per_s": requests / (duration_us / 1e6),
            "socket_errors": connect + read + write + timeout, "non_2xx": status,
            "p50_ms": float(values[7]) / 1000, "p99_ms": float(values[9]) / 1000}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the steady run (default 10)")
    parser.add_argument("--fraction", type=float, default=0.8, help="share of the peak offered (default 0.8)")
    parser.add_argument("--peak", type=float, help="the peak in requests/s (default: measured first)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before the reference sample (default 60)")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--ids", type=int, default=400)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--server-cores", default="0")
    parser.add_argument("--load-cores", default="1")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    ensure_wrk()
    work = tempfile.mkdtemp(prefix="mab-soak-")
    data = os.path.join(work, "items.csv")
    subprocess.run([sys.executable, "-m", "mab", "data", "demo", "--items", str(args.items), "--out", data],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bodies = os.path.join(work, "bodies.jsonl")
    write_bodies(bodies, read_ids(data), args.ids, count=32, seed=20261122)
    script = os.path.join(work, "soak.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT)
    # MAB_MAX_REQUESTS=0: no recycling of the worker by max_requests (about
    # a million requests), which would hide any growth this run looks for.
    server = Gunicorn(ROOT, {"MAB_DATA": data, "MAB_CACHE_DIR": os.path.join(work, "cache"), "WEB_CONCURRENCY": "1",
                             "MAB_MAX_REQUESTS": "0"},
                      os.path.join(work, "server.log"), cores=args.server_cores)
    load = None
    try:
        server.start()
        server.wait_ready()
        pid = worker_pid(server.process.pid)
        peak = args.peak
        if peak is None:
            run = wrk(server.port, args, args.connections, 8, bodies, script)
            peak = summary(run.communicate(timeout=120)[0])["requests_per_s"]
        target = args.fraction * peak
        seconds = int(args.minutes * 60)
        # A short trial first: answers take time too, so paced connections
        # offer less than connections / mean gap; scale the gap by what the
        # trial served (as scripts/bench.py's paced steps do).
        delay_ms = args.connections / target * 1000
        trial = wrk(server.port, args, args.connections, 5, bodies, script, delay_ms=delay_ms)
        served = summary(trial.communicate(timeout=120)[0])["requests_per_s"]
        delay_ms *= served / target
        load = wrk(server.port, args, args.connections, seconds, bodies, script, delay_ms=delay_ms)
        started = time.monotonic()
        samples = []
        # The last sample a full interval before wrk stops: after it, its
        # connections close and the count of open files drops.
        while time.monotonic() - started + 2 * args.every < seconds:
            time.sleep(args.every)
            try:
                rss, fds, threads = sample(pid)
            except FileNotFoundError:
                raise SystemExit(f"the worker {pid} exited during the run; see {server.log_path}") from None
            samples.append({"t": round(time.monotonic() - started, 1), "rss_kib": rss, "fds": fds, "threads": threads})
            print(f"  {samples[-1]['t']:7.1f} s  RSS {rss / 1024:7.1f} MiB  fds {fds}  threads {threads}",
                  file=sys.stderr, flush=True)
        totals = summary(load.communicate(timeout=seconds + 120)[0])
        if worker_pid(server.process.pid) != pid:
            raise SystemExit(f"the worker was replaced during the run; see {server.log_path}")
    finally:
        if load is not None and load.poll() is None:
            load.kill()
        server.stop()
    after = [s for s in samples if s["t"] >= args.warmup]
    if not after:
        raise SystemExit("no sample after the warm-up: run longer or warm up less")
    reference = after[0]["rss_kib"]
    deviation = max(abs(s["rss_kib"] - reference) for s in after) / reference
    result = {
        "peak_requests_per_s": peak, "offered_requests_per_s": target, "minutes": args.minutes,
        "load": totals, "rss_after_warmup_mib": reference / 1024,
        "rss_max_mib": max(s["rss_kib"] for s in after) / 1024, "rss_max_deviation": deviation,
        "fds": sorted({s["fds"] for s in after}), "threads": sorted({s["threads"] for s in after}),
        "samples": samples,
    }
    print(f"\n{args.minutes:g} min at {args.fraction:.0%} of a peak of {peak:,.0f} req/s "
          f"({totals['requests_per_s']:,.0f} req/s served, {totals['requests']:,} requests, "
          f"{totals['non_2xx']} non-2xx, {totals['socket_errors']} socket errors, p99 {totals['p99_ms']:.1f} ms)")
    print(f"RSS after {args.warmup:g} s warm-up: {reference / 1024:.1f} MiB; largest deviation after it: "
          f"{deviation:.2%} (max {result['rss_max_mib']:.1f} MiB)")
    print(f"open file descriptors after the warm-up: {result['fds']}; threads: {result['threads']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
