#!/usr/bin/env python3
"""Where the server's CPU time per request goes, stage by stage.

Starts the service (one worker, pinned to --server-cores), drives it with wrk
(pinned to --load-cores), samples the worker with py-spy (Python stacks,
non-blocking, so the sampling does not slow the worker), and reads the
worker's CPU time from /proc. Each sample is assigned to the first stage of
STAGES that its stack matches; a stage's share of the busy samples times
the CPU time per request gives its microseconds per request.

Samples whose innermost Python frame is waiting in the event loop's
``select`` are idle (the worker waiting for requests) or in the kernel's
epoll; they are counted apart and not charged to any stage.

    .venv/bin/python scripts/profile_server.py [--ids 400] [--seconds 15]
    .venv/bin/python scripts/profile_server.py --backend vertex [--cache] [--zipf 1.1]

With --backend vertex or vertex-legacy the service reads its features from
the local Vertex AI stand-in (pinned to --load-cores beside wrk), and every
thread of the worker is sampled: request threads, the shared stream's
reader, the cache's refresher and gRPC's own threads.

Needs py-spy (pip install -e '.[bench]') and wrk.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from bench import (  # noqa: E402
    CLK_TCK, WRK_SCRIPT, cpu_ticks, ensure_wrk, free_port, make_vertex, python, read_ids, write_bodies,
)

# (stage, predicate over the frames of one sample, outermost first). Order
# matters: the first match wins, so narrow stages come before broad ones.
STAGES = [
    ("remote features: cache lookup (compiled)", lambda f: any(x.startswith(("FeatureCache.lookup", "EntityCache")) for x in f)),
    ("remote features: cache refresher (background)", lambda f: any(x.startswith("FeatureCache._refresh") for x in f)),
    ("remote features: decoding answers", lambda f: any(x.startswith(("Store._read_answer", "FeatureViewAnswers.", "Store._counts", "VertexStore._counts")) for x in f)),
    ("remote features: shared stream, receiving (reader thread)", lambda f: any(x.startswith("SharedStream._read") for x in f)),
    ("remote features: building request messages", lambda f: any(x.startswith("Store._requests") for x in f)),
    ("remote features: sending (gRPC's request thread)", lambda f: any("_consume_request_iterator" in x for x in f)),
    ("remote features: waiting for answers, hand-off (request thread)", lambda f: any(x.startswith("SharedStream.fetch") for x in f)),
    ("remote features: batch assembly and bookkeeping", lambda f: any(x.startswith(("VertexStore.fetch", "Store._fetch_remote", "VertexStore._fetch_remote", "Store.fetch ")) for x in f)
        and any("_vertex" in x or "vertex.py" in x for x in f)),
    ("gRPC (channel threads)", lambda f: any("grpc" in x for x in f)),
    ("body parsing (mab._wire, compiled)", lambda f: any(x.startswith("read_prediction_request") and "parse_predict_body" in x for x in f)
        or any(x.startswith("request_from_fields") for x in f)),
    ("JSON encode", lambda f: any(x.startswith("ranked_ids_json") for x in f)),
    ("JSON decode (orjson, bodies the compiled parser declines)", lambda f: any(x.startswith("decode_prediction_request") and "orjson.loads" in x for x in f)),
    ("request validation (general path)", lambda f: any(x.startswith(("parse_prediction_request", "_check_unique_names")) for x in f)),
    ("feature lookup", lambda f: any(x.startswith(("Store.fetch", "IdIndex", "gather")) for x in f)),
    ("Beta parameters", lambda f: any(x.startswith("BetaModel.parameters") for x in f)),
    ("sampling", lambda f: any(x.startswith(("sample_beta", "numpy_sample_beta")) for x in f)
        or any(x.startswith("PredictionService.predict") and "sampler" in x for x in f)),
    ("ranking", lambda f: any(x.startswith(("rank ", "rank(", "take")) for x in f)),
    ("prediction, other", lambda f: any(x.startswith("PredictionService.predict") for x in f)),
    ("JSON encode", lambda f: any(x.startswith("PredictionResource.on_post") and "dumps" in x for x in f)),
    ("resource, other (body read, content type and length, headers)", lambda f: any(x.startswith(("PredictionResource.on_post", "read_json_body")) for x in f)),
    ("Falcon (routing, request and response objects)", lambda f: any(x.startswith("App.__call__") for x in f)),
    ("worker: HTTP parsing (httptools + callbacks)", lambda f: any(x.startswith(("Connection.on_", "Request.__init__")) for x in f)
        or any(x.startswith("HttptoolsWorker.readable") and "feed_data" in x for x in f)),
    ("worker: environ, response head, hooks", lambda f: any(x.startswith(("HttptoolsWorker.handle", "HttptoolsWorker.environ", "HttptoolsWorker._http_date")) for x in f)),
    ("worker: socket send and receive", lambda f: any(x.startswith("HttptoolsWorker._flush") for x in f)
        or any(x.startswith("HttptoolsWorker.readable") and "recv" in x for x in f)),
    ("worker: event loop", lambda f: any(x.startswith("HttptoolsWorker.") for x in f)),
]
IDLE = "waiting (epoll, locks, queues: idle, or the kernel)"
# Innermost frames of a thread that is blocked, not working: py-spy's own idle
# detection does not recognise them on this kind of VM, so a sampled thread
# waiting on a lock or a queue would otherwise be charged as busy.
BLOCKED = (
    "Condition.wait (threading.py", "Event.wait (threading.py", "EpollSelector.select (selectors.py",
    "_worker (concurrent/futures/thread.py", "channel_spin (grpc/_channel.py",
    "consume_request_iterator (grpc/_channel.py:276)",
)


def frames_of(stack, sources):
    """py-spy raw frames 'func (file:line)' with the source line appended."""
    frames = []
    for frame in stack.split(";"):
        text = frame
        if frame.endswith(")") and ":" in frame:
            location = frame[frame.rfind("(") + 1:-1]
            path, _, line = location.rpartition(":")
            if line.isdigit():
                text = f"{frame} {sources(path, int(line))}"
        frames.append(text)
    return frames


def make_source_reader():
    cache = {}

    def source(path, line):
        if path not in cache:
            candidates = [path, os.path.join(ROOT, path)]
            cache[path] = next((open(p).read().splitlines() for p in candidates if os.path.exists(p)), [])
        lines = cache[path]
        return lines[line - 1].strip() if 0 < line <= len(lines) else ""

    return source


def classify(raw_path):
    sources = make_source_reader()
    counts, total = Counter(), 0
    with open(raw_path) as f:
        for record in f:
            stack, _, n = record.rstrip("\n").rpartition(" ")
            n = int(n)
            total += n
            frames = frames_of(stack, sources)
            innermost = frames[-1] if frames else ""
            if ("select" in innermost.split(" (")[0].lower() or innermost.startswith(("EpollSelector", "poll"))
                    or any(marker in innermost for marker in BLOCKED)):
                counts[IDLE] += n
                continue
            for stage, matches in STAGES:
                if matches(frames):
                    counts[stage] += n
                    break
            else:
                counts["other"] += n
    return counts, total


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ids", type=int, default=400)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--server-cores", default="0")
    parser.add_argument("--load-cores", default="1")
    parser.add_argument("--app", default="app:app", help="WSGI app (e.g. 'mab.baseline:create_baseline_app()')")
    parser.add_argument("--backend", choices=("embedded", "vertex", "vertex-legacy"), default="embedded",
                        help="where features come from (default embedded; the Vertex ones from the local stand-in)")
    parser.add_argument("--cache", action="store_true", help="with a Vertex backend: the cache on (600 s TTL)")
    parser.add_argument("--zipf", type=float, metavar="S", help="draw ids from a Zipf law (see bench.py)")
    parser.add_argument("--bodies", type=int, default=32)
    args = parser.parse_args(argv)
    ensure_wrk()
    work = tempfile.mkdtemp(prefix="mab-profile-")
    data = os.path.join(work, "items.csv")
    subprocess.run([python(), os.path.join(ROOT, "scripts", "make_demo_data.py"), "--items", str(args.items),
                    "--out", data], check=True, stderr=subprocess.DEVNULL)
    bodies = os.path.join(work, "bodies.jsonl")
    write_bodies(bodies, read_ids(data), args.ids, count=args.bodies, seed=20261122, zipf=args.zipf)
    script = os.path.join(work, "bench.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT)
    port = free_port()
    env = dict(os.environ, MAB_DATA=data, MAB_CACHE_DIR=os.path.join(work, "cache"), WEB_CONCURRENCY="1",
               GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{port}")
    standin = None
    if args.backend != "embedded":
        args.data, args.work_dir, args.standin = data, work, None
        args.standin_latency_ms, args.standin_keys_per_message, args.cache_refresh_after = 0.0, 0, 5.0
        args.workers = 1
        system = make_vertex(f"profile-{args.backend}", args, args.backend, cache=args.cache)
        standin = system.standin
        standin.start()
        env.pop("MAB_DATA")
        env["MAB_CONFIG"] = system.env["MAB_CONFIG"]
    log = open(os.path.join(work, "server.log"), "w")
    server = subprocess.Popen(["taskset", "-c", args.server_cores, python(), "-m", "gunicorn", "-c",
                               os.path.join(ROOT, "gunicorn.conf.py"), args.app],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wrk = None
    try:
        deadline = time.monotonic() + 60
        worker = None
        while worker is None and time.monotonic() < deadline:
            children = subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True, text=True).stdout.split()
            worker = int(children[0]) if children else None
            time.sleep(0.2)
        time.sleep(2)
        wrk = subprocess.Popen(
            ["taskset", "-c", args.load_cores, "wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds + 6}s",
             "--timeout", "10s", "-s", script, f"http://127.0.0.1:{port}/predict"],
            env=dict(os.environ, MAB_BENCH_BODIES=bodies), stdout=subprocess.PIPE, text=True,
        )
        time.sleep(3)
        raw = os.path.join(work, "profile.txt")
        ticks0, t0 = cpu_ticks(worker), time.monotonic()
        spy = subprocess.run([os.path.join(os.path.dirname(python()), "py-spy"), "record", "-p", str(worker),
                              "-d", str(args.seconds), "-r", "500", "-f", "raw", "-o", raw, "--nonblocking"],
                             capture_output=True, text=True)
        ticks1, t1 = cpu_ticks(worker), time.monotonic()
        out, _ = wrk.communicate(timeout=args.seconds + 60)
    finally:
        if wrk and wrk.poll() is None:
            wrk.kill()
        server.terminate()
        server.wait(30)
        log.close()
        if standin is not None:
            standin.stop()
    if spy.returncode != 0:
        raise SystemExit(f"py-spy failed: {spy.stderr}")
    stats = next(line for line in out.splitlines() if line.startswith("MABSTATS")).split()
    requests, duration_us = int(stats[1]), int(stats[2])
    rate = requests / (duration_us / 1e6)
    cpu_seconds = (ticks1 - ticks0) / CLK_TCK
    us_per_request = cpu_seconds / (rate * (t1 - t0)) * 1e6
    counts, total = classify(raw)
    busy = total - counts[IDLE]
    print(f"{args.ids} ids per request; worker CPU {us_per_request:.0f} us per request at {rate:,.0f} req/s "
          f"(utilisation {cpu_seconds / (t1 - t0):.0%}); {total} samples, {busy} busy\n")
    print("| stage | share of busy samples | us per request |")
    print("|---|---|---|")
    # Busy samples are user-space Python stacks; the kernel time of recv,
    # send and epoll shows up in the stage that made the call.
    rows = []
    for stage, n in counts.most_common():
        if stage == IDLE:
            continue
        rows.append({"stage": stage, "share": n / busy, "us_per_request": n / busy * us_per_request})
        print(f"| {stage} | {n / busy:.1%} | {n / busy * us_per_request:.1f} |")
    print(f"| (idle or in epoll_wait: {counts[IDLE] / total:.1%} of all samples, not charged) | | |")
    print(json.dumps({"us_per_request": us_per_request, "requests_per_s": rate, "stages": rows}), file=sys.stderr)


if __name__ == "__main__":
    main()
