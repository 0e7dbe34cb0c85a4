#!/usr/bin/env python3
"""Load time and memory per worker of the embedded store, under gunicorn.

For each data size it writes a demo CSV, starts gunicorn (2 workers by
default) with an empty cache directory, and reports:

* the master's compile time (CSV -> mapped arrays, done once before fork);
* each worker's load time (mapping the compiled arrays), from /ready;
* after --requests random 400-id predictions spread over the workers, the
  memory of the master and of each worker from /proc/PID/smaps_rollup:
  RSS (resident, shared pages counted in full), PSS (shared pages divided
  among the processes that map them) and USS (private to the process).

    .venv/bin/python scripts/bench_memory.py --items 1000000,10000000
"""

import argparse
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from bench import free_port, python, session_pids, terminate  # noqa: E402


def smaps_kib(pid):
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1])
    return {
        "rss_mib": fields["Rss"] / 1024,
        "pss_mib": fields["Pss"] / 1024,
        "uss_mib": (fields["Private_Clean"] + fields["Private_Dirty"]) / 1024,
    }


def request(port, method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def measure(n_items, args, work_dir):
    data = os.path.join(work_dir, f"items-{n_items}.csv")
    if not os.path.exists(data):
        print(f"writing {n_items:,} items ...", file=sys.stderr)
        subprocess.run([python(), os.path.join(ROOT, "scripts", "make_demo_data.py"), "--items", str(n_items),
                        "--out", data], check=True, stderr=subprocess.DEVNULL)
    cache = os.path.join(work_dir, f"cache-{n_items}")
    shutil.rmtree(cache, ignore_errors=True)
    port = free_port()
    env = dict(os.environ, MAB_DATA=data, MAB_CACHE_DIR=cache, WEB_CONCURRENCY=str(args.workers),
               GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{port}")
    log = open(os.path.join(work_dir, f"gunicorn-{n_items}.log"), "w")
    started = time.monotonic()
    server = subprocess.Popen(
        [python(), "-m", "gunicorn", "-c", os.path.join(ROOT, "gunicorn.conf.py"), "app:app"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        ready = {}
        while len(ready) < args.workers:
            if server.poll() is not None:
                raise RuntimeError(f"gunicorn exited; see {log.name}")
            try:
                status, body = request(port, "GET", "/ready")
            except OSError:
                time.sleep(0.05)
                continue
            if status == 200:
                details = json.loads(body)
                ready[details["worker"]] = details
            time.sleep(0.01)
        start_to_ready = time.monotonic() - started
        meta_dirs = [d for d in os.listdir(cache) if not d.endswith(".lock") and not d.startswith(".")]
        with open(os.path.join(cache, meta_dirs[0], "meta.json")) as f:
            compile_seconds = json.load(f)["build_seconds"]
        on_disk = sum(
            os.path.getsize(os.path.join(cache, meta_dirs[0], name)) for name in os.listdir(os.path.join(cache, meta_dirs[0]))
        )

        rng = random.Random(1)
        for _ in range(args.requests):
            ids = [f"item-{i:06d}" for i in rng.sample(range(n_items), 400)]
            status, _ = request(port, "POST", "/predict", json.dumps({"item_ids": ids}).encode())
            assert status == 200

        master = server.pid
        processes = []
        for pid in sorted(session_pids(master)):
            role = "master" if pid == master else "worker"
            processes.append({"pid": pid, "role": role, **smaps_kib(pid)})
        load_seconds = {str(worker): d["stores"]["default"]["load_seconds"] for worker, d in ready.items()}
        return {
            "items": n_items,
            "csv_mib": os.path.getsize(data) / 2**20,
            "compiled_mib": on_disk / 2**20,
            "compile_seconds": compile_seconds,
            "start_to_all_ready_seconds": start_to_ready,
            "worker_load_seconds": load_seconds,
            "processes": processes,
        }
    finally:
        terminate(server, timeout=60)
        log.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", default="1000000,10000000", help="comma-separated data sizes")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--requests", type=int, default=2000, help="random 400-id predictions before measuring")
    parser.add_argument("--work-dir", help="keep data here (default: a temporary directory, removed)")
    args = parser.parse_args(argv)
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="mab-memory-")
    results = []
    try:
        for n in (int(x) for x in args.items.split(",")):
            results.append(measure(n, args, work_dir))
    finally:
        if not args.work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
    print(f"\n{args.workers} workers; memory after {args.requests} random 400-id predictions\n")
    print("| items | CSV MiB | compiled MiB | compile s (master, once) | worker load s | process | RSS MiB | PSS MiB | USS MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        loads = ", ".join(f"{v:.3f}" for v in r["worker_load_seconds"].values())
        for i, p in enumerate(r["processes"]):
            head = (f"| {r['items']:,} | {r['csv_mib']:.0f} | {r['compiled_mib']:.0f} | {r['compile_seconds']:.2f} | {loads} "
                    if i == 0 else "| | | | | ")
            print(f"{head}| {p['role']} {p['pid']} | {p['rss_mib']:.0f} | {p['pss_mib']:.0f} | {p['uss_mib']:.0f} |")
    print(json.dumps(results, indent=2), file=sys.stderr)


if __name__ == "__main__":
    main()
