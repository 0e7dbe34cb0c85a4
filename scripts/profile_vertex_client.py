#!/usr/bin/env python3
"""Where the Python Vertex AI client spends its CPU: per call, and by function.

Starts the local stand-in (``python -m mab.testing.vertex_standin``) in a
process of its own, so that ``time.process_time()`` here counts the client
alone (all of this process's threads, gRPC's included), or uses a plaintext
endpoint given with --endpoint. Then, for each way of fetching, it makes
--calls calls and reports wall and CPU time per call:

- ``streaming_read_feature_values`` of --ids entity ids (legacy Featurestore),
  through the generated client, reading every streamed message;
- the same through mab's ``vertex-legacy`` store (one chunk, its thread pool);
- ``fetch_feature_values`` of one key through the generated client (blocking);
- --ids keys as concurrent gRPC futures, as mab's ``vertex`` store issues
  them with ``read_api = "fetch"``, and the same through that store;
- ``StreamingFetchFeatureValues`` (v1beta1) of --stream-ids keys in request
  messages of 100: one stream per request through the library's stub, as
  mab's ``vertex`` store reads by default; a long-lived stream shared by the
  requests (a prototype here, only for the comparison: a reader thread
  dispatches answers by key to the waiting requests); and mab's ``vertex``
  store itself.

The stand-in it starts answers each streaming request message in
--keys-per-message keys per message (0: one message per request message).

Then --threads request threads fetch --stream-ids random ids each (drawn
from the stand-in's data) through mab's ``vertex`` store at once, as a
worker's request threads do under load, and the CPU of each kind of thread
is read from ``/proc/self/task``: the request threads, the shared stream's
reader, gRPC's Python threads (channel spin, request consumer) and gRPC
core's own threads.

Finally cProfile, timing CPU of the calling thread, shows the top functions
of a streaming read and of a batch of futures. It sees only that thread:
gRPC's channel thread, which also handles every message, is the difference
from the process's CPU, printed beside it.

    python scripts/profile_vertex_client.py                   # a stand-in on 1,000 items
    python scripts/profile_vertex_client.py --calls 200 --data data/items.csv
    python scripts/profile_vertex_client.py --endpoint 127.0.0.1:9010 --ids 100

Run it on a quiet machine, pinned if you want stable numbers, for example
``taskset -c 1 python scripts/profile_vertex_client.py`` with the stand-in on
the other core (--endpoint).
"""

import argparse
import cProfile
import csv
import os
import pstats
import queue
import random
import selectors
import subprocess
import sys
import tempfile
import threading
import time
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import grpc  # noqa: E402
from google.cloud import aiplatform_v1 as v1  # noqa: E402
from google.cloud import aiplatform_v1beta1 as v1beta1  # noqa: E402
from google.cloud.aiplatform_v1beta1.services.feature_online_store_service.transports import (  # noqa: E402
    FeatureOnlineStoreServiceGrpcTransport as BetaTransport,
)
from google.cloud.aiplatform_v1.services.feature_online_store_service.transports import (  # noqa: E402
    FeatureOnlineStoreServiceGrpcTransport,
)
from google.cloud.aiplatform_v1.services.featurestore_online_serving_service.transports import (  # noqa: E402
    FeaturestoreOnlineServingServiceGrpcTransport,
)

from mab.config import config_from_document  # noqa: E402
from mab.stores import create_store  # noqa: E402
from mab.testing.processes import terminate  # noqa: E402
from mab.testing.vertex_standin import SERVING_LINE  # noqa: E402

FEATURES = ("successes", "failures")


def write_items(path, n):
    with open(path, "w") as f:
        f.write("item_id,successes,failures\n")
        f.writelines(f"item-{i:06d},{(i * 37) % 1001},{(i * 7919) % 100_001}\n" for i in range(n))


def start_standin(data, keys_per_message=0):
    """The stand-in's command in its own session; (process, printed settings)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "mab.testing.vertex_standin", "--data", data, "--port", "0",
         "--keys-per-message", str(keys_per_message)],
        stdout=subprocess.PIPE, start_new_session=True, cwd=ROOT,
    )
    printed = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while not printed.endswith(SERVING_LINE.encode() + b"\n"):
            if not selector.select(60):
                terminate(process)
                sys.exit("the stand-in did not start within 60 s")
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                sys.exit(f"the stand-in exited with {process.wait()}")
            printed += chunk
    return process, tomllib.loads(printed.decode())["stores"]["default"]


def data_ids(path):
    """The ids (first column) of a CSV of items."""
    with open(path, newline="") as f:
        rows = csv.reader(f)
        next(rows)
        return [row[0] for row in rows if row]


def thread_cpu():
    """{thread id: (name, whether Python runs it, CPU seconds, context
    switches)} of this process's threads, from /proc/self/task (utime +
    stime; voluntary and involuntary switches). Python threads are named by
    ``threading``, others by their kernel name (gRPC core names its own). The kernel counts CPU in clock
    ticks (10 ms here), charged to whichever thread runs at the tick: sums
    over thousands of fetches are fair, a thread's few ms are not."""
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    threads = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/self/task/{tid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/self/task/{tid}/status") as f:
                switches = sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
        except FileNotFoundError:
            continue   # the thread ended meanwhile
        python = int(tid) in names
        threads[int(tid)] = (names[int(tid)] if python else comm, python,
                             (int(fields[11]) + int(fields[12])) / tick, switches)
    return threads


def by_thread(store, universe, n_keys, threads, calls):
    """``threads`` request threads make ``calls`` fetches in all, of
    ``n_keys`` random ids of ``universe`` each, through ``store``; returns
    rows (kind of thread, CPU us per fetch, context switches per fetch) and
    the process's CPU us per fetch. The request threads are held until all
    are counted, so that their CPU is read before they end."""
    rng = random.Random(1)
    samples = [rng.sample(universe, n_keys) for _ in range(64)]
    per_thread = calls // threads
    counted, release = threading.Barrier(threads + 1), threading.Event()

    def request_thread():
        for i in range(per_thread):
            batch = store.fetch(samples[i % len(samples)], "", "", FEATURES)
            assert batch.failed == 0, store.describe()["fetches"]["last_error"]
        counted.wait()
        release.wait()

    for sample in samples[:8]:
        store.fetch(sample, "", "", FEATURES)   # warm: the stream, first-use costs
    before, cpu = thread_cpu(), time.process_time()
    workers = [threading.Thread(target=request_thread, name=f"profile-request-{i}") for i in range(threads)]
    for worker in workers:
        worker.start()
    counted.wait()
    cpu, after = time.process_time() - cpu, thread_cpu()
    release.set()
    for worker in workers:
        worker.join()
    fetches = per_thread * threads
    kinds = {}
    for tid, (name, python, seconds, switches) in after.items():
        _, _, seconds_before, switches_before = before.get(tid, (name, python, 0.0, 0))
        if name.startswith("profile-request-"):
            kind = "request threads (mab: requests, registration, batch)"
        elif name.startswith("mab-stream-"):
            kind = "the shared stream's reader (mab: decode, handout)"
        elif python:
            kind = "gRPC's Python threads (channel spin, request consumer)" if name != "MainThread" else "main thread"
        else:
            kind = "gRPC core's threads (C)"
        total = kinds.setdefault(kind, [0.0, 0])
        total[0] += seconds - seconds_before
        total[1] += switches - switches_before
    rows = sorted(((kind, s / fetches * 1e6, n / fetches) for kind, (s, n) in kinds.items()), key=lambda row: -row[1])
    return rows, cpu / fetches * 1e6


def measure(name, calls, entities_per_call, fn):
    fn()   # warm: connection, first-use costs
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return (name, calls, wall / calls * 1e3, cpu / calls * 1e3, cpu / calls / entities_per_call * 1e6)


def profile(fn, repeat, top):
    """Top functions by CPU time of the calling thread (time.thread_time):
    time spent blocked, waiting for the network or for gRPC's thread, is not
    counted; the CPU of gRPC's own threads is the rest of the process's."""
    fn()
    profiler = cProfile.Profile(time.thread_time)
    process_cpu = time.process_time()
    profiler.enable()
    for _ in range(repeat):
        fn()
    profiler.disable()
    process_cpu = (time.process_time() - process_cpu) / repeat * 1e3
    stats = pstats.Stats(profiler)
    rows = []
    for (path, line, function), (_, calls, tottime, cumtime, _) in stats.stats.items():
        where = f"{os.path.basename(path)}:{line}({function})" if line else function
        rows.append((tottime / repeat * 1e3, cumtime / repeat * 1e3, calls / repeat, where))
    rows.sort(reverse=True)
    total = sum(row[0] for row in rows)
    print(
        f"  CPU per run: {process_cpu:.2f} ms in the process, {total:.2f} ms in this thread "
        f"(profiled, with the profiler's own overhead), the rest in gRPC's threads"
    )
    print(f"  {'own ms/run':>10} {'incl ms/run':>11} {'calls/run':>9}  function")
    for own, cumulative, calls, where in rows[:top]:
        print(f"  {own:10.3f} {cumulative:11.3f} {calls:9.1f}  {where}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", help="a plaintext endpoint serving the stand-in's resources (default: start one)")
    parser.add_argument("--data", help="CSV for the stand-in it starts (default: 1,000 generated items)")
    parser.add_argument("--ids", type=int, default=100, help="entity ids per call (at most 100 for the legacy API)")
    parser.add_argument("--stream-ids", type=int, default=400, help="keys per streaming fetch (default 400)")
    parser.add_argument("--keys-per-message", type=int, default=0,
                        help="the stand-in's keys per streamed answer (default 0: one per request message)")
    parser.add_argument("--calls", type=int, default=20, help="calls per measurement")
    parser.add_argument("--threads", type=int, default=16,
                        help="request threads fetching at once for the CPU by thread (default 16)")
    parser.add_argument("--top", type=int, default=12, help="functions shown per profile")
    parser.add_argument("--project", default="local")
    parser.add_argument("--location", default="us-central1")
    parser.add_argument("--featurestore", default="mab")
    parser.add_argument("--entity-type", default="items")
    parser.add_argument("--feature-online-store", default="mab")
    parser.add_argument("--feature-view", default="items")
    args = parser.parse_args()

    standin = None
    scratch = tempfile.TemporaryDirectory(prefix="mab-profile-")
    try:
        if args.endpoint:
            endpoint = args.endpoint
        else:
            data = args.data
            if data is None:
                data = os.path.join(scratch.name, "items.csv")
                write_items(data, 1000)
            standin, settings = start_standin(data, args.keys_per_message)
            endpoint = settings["api_endpoint"]
        run(args, endpoint, data_ids(args.data or data) if not args.endpoint or args.data else None)
    finally:
        if standin is not None:
            terminate(standin)
        scratch.cleanup()


class SharedStream:
    """A prototype of the alternative the vertex store does not take: one
    long-lived StreamingFetchFeatureValues stream, shared by the requests of a
    worker. Requests queue their messages for gRPC's consumer thread; a reader
    thread dispatches each answer by key to the request waiting for it."""

    def __init__(self, rpc, unwrap):
        self.unwrap = unwrap
        self.outgoing = queue.SimpleQueue()
        self.waiting = {}
        self.lock = threading.Lock()
        self.responses = rpc(iter(self.outgoing.get, None))
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        try:
            for response in self.responses:
                message = self.unwrap(response)
                with self.lock:
                    for entry in message.data:
                        waiter = self.waiting.pop(entry.data_key.key, None)
                        if waiter is not None:
                            waiter[1].append(entry)
                            if len(waiter[1]) == waiter[2]:
                                waiter[0].set()
        except grpc.RpcError:
            pass   # cancelled by close()

    def fetch(self, keys, requests):
        waiter = (threading.Event(), [], len(keys))
        with self.lock:
            for key in keys:
                self.waiting[key] = waiter
        for request in requests:
            self.outgoing.put(request)
        if not waiter[0].wait(30):
            raise RuntimeError("no answer from the shared stream")
        return waiter[1]

    def close(self):
        self.outgoing.put(None)
        self.responses.cancel()
        self.reader.join(5)


def run(args, endpoint, universe):
    base = f"projects/{args.project}/locations/{args.location}"
    entity_type = f"{base}/featurestores/{args.featurestore}/entityTypes/{args.entity_type}"
    feature_view = f"{base}/featureOnlineStores/{args.feature_online_store}/featureViews/{args.feature_view}"
    ids = [f"item-{i:06d}" for i in range(args.ids)]
    common = {"project": args.project, "location": args.location, "api_endpoint": endpoint, "plaintext": True,
              "deadline_ms": 60_000}

    legacy_channel = grpc.insecure_channel(endpoint)
    legacy = v1.FeaturestoreOnlineServingServiceClient(
        transport=FeaturestoreOnlineServingServiceGrpcTransport(channel=legacy_channel)
    )
    online_channel = grpc.insecure_channel(endpoint)
    online = v1.FeatureOnlineStoreServiceClient(transport=FeatureOnlineStoreServiceGrpcTransport(channel=online_channel))
    read_request = v1.StreamingReadFeatureValuesRequest(
        entity_type=entity_type, entity_ids=ids,
        feature_selector=v1.FeatureSelector(id_matcher=v1.IdMatcher(ids=list(FEATURES))),
    )
    fetch_requests = [
        v1.FetchFeatureValuesRequest(
            feature_view=feature_view, data_key=v1.FeatureViewDataKey(key=key),
            data_format=v1.FeatureViewDataFormat.KEY_VALUE,
        )
        for key in ids
    ]

    def streaming_read():
        n = 0
        for response in legacy.streaming_read_feature_values(request=read_request, timeout=30):
            n += len(type(response).pb(response).entity_view.data)
        assert n == len(ids) * len(FEATURES), n

    def fetch_one():
        online.fetch_feature_values(request=fetch_requests[0], timeout=30)

    rpc = online.transport.fetch_feature_values

    def fetch_futures():
        calls = [rpc.future(request, timeout=30) for request in fetch_requests]
        for call in calls:
            call.result()

    stream_ids = [f"item-{i:06d}" for i in range(args.stream_ids)]
    beta_channel = grpc.insecure_channel(endpoint)
    beta = v1beta1.FeatureOnlineStoreServiceClient(transport=BetaTransport(channel=beta_channel))
    stream_rpc = beta.transport.streaming_fetch_feature_values
    request_class, response_class = v1beta1.StreamingFetchFeatureValuesRequest, v1beta1.StreamingFetchFeatureValuesResponse
    data_key = v1beta1.FeatureViewDataKey.pb()
    key_value = int(v1beta1.FeatureViewDataFormat.KEY_VALUE)

    def stream_requests(keys):
        return [
            request_class.wrap(request_class.pb()(
                feature_view=feature_view, data_keys=[data_key(key=k) for k in keys[i : i + 100]], data_format=key_value
            ))
            for i in range(0, len(keys), 100)
        ]

    def stream_per_request():
        n = 0
        for response in stream_rpc(iter(stream_requests(stream_ids)), timeout=30):
            n += len(response_class.pb(response).data)
        assert n == len(stream_ids), n

    shared = SharedStream(stream_rpc, response_class.pb)

    def shared_stream():
        assert len(shared.fetch(stream_ids, stream_requests(stream_ids))) == len(stream_ids)

    stores = {}
    for name, backend, resource in (
        ("vertex-legacy", "vertex-legacy", {"featurestore": args.featurestore, "entity_type": args.entity_type}),
        ("vertex-fetch", "vertex", {"feature_online_store": args.feature_online_store,
                                    "feature_view": args.feature_view, "read_api": "fetch"}),
        ("vertex", "vertex", {"feature_online_store": args.feature_online_store, "feature_view": args.feature_view}),
    ):
        config = config_from_document({"stores": {"default": dict(common, backend=backend, **resource)}}, {"MAB_CACHE_DIR": os.devnull})
        store = create_store(config.stores["default"], config.cache_dir)
        store.load()
        stores[name] = store

    def store_fetch(name, keys=ids):
        def fetch():
            batch = stores[name].fetch(keys, "", "", FEATURES)
            assert batch.failed == 0, stores[name].describe()["fetches"]["last_error"]
        return fetch

    n = len(ids)
    rows = [
        measure(f"streaming_read_feature_values, {n} ids", args.calls, n, streaming_read),
        measure(f"mab vertex-legacy store, {n} ids", args.calls, n, store_fetch("vertex-legacy")),
        measure("fetch_feature_values, 1 key (blocking)", args.calls * 10, 1, fetch_one),
        measure(f"FetchFeatureValues futures, {n} keys", args.calls, n, fetch_futures),
        measure(f"mab vertex store (read_api fetch), {n} ids", args.calls, n, store_fetch("vertex-fetch")),
        measure(f"StreamingFetch, stream per request, {len(stream_ids)}", args.calls * 5, len(stream_ids), stream_per_request),
        measure(f"StreamingFetch, shared stream, {len(stream_ids)}", args.calls * 5, len(stream_ids), shared_stream),
        measure(f"mab vertex store (streaming), {len(stream_ids)} ids", args.calls * 5, len(stream_ids),
                store_fetch("vertex", stream_ids)),
    ]
    print(f"client at {endpoint}; CPU = time.process_time() of this process (all its threads)\n")
    print(f"{'what':<46} {'calls':>6} {'wall ms/call':>13} {'CPU ms/call':>12} {'CPU us/entity':>14}")
    for name, calls, wall, cpu, per_entity in rows:
        print(f"{name:<46} {calls:6d} {wall:13.2f} {cpu:12.2f} {per_entity:14.1f}")

    if universe is not None and len(universe) >= args.stream_ids:
        rows, process = by_thread(stores["vertex"], universe, args.stream_ids, args.threads, args.calls * 160)
        print(f"\nwhere the CPU goes: mab vertex store (streaming), {args.threads} request threads fetching "
              f"{args.stream_ids} random ids of {len(universe):,} each, per fetch (/proc/self/task)")
        print(f"  {'threads':<56} {'CPU us':>7} {'switches':>9}")
        for kind, microseconds, switches in rows:
            print(f"  {kind:<56} {microseconds:7.0f} {switches:9.1f}")
        print(f"  {'the process (time.process_time)':<56} {process:7.0f}")
    else:
        print("\n(CPU by thread: needs --data, or the generated data, with at least --stream-ids ids)")

    repeat = max(1, min(args.calls, 10))
    print(f"\nwhere the time goes: streaming_read_feature_values, {n} ids (cProfile, calling thread)")
    profile(streaming_read, repeat, args.top)
    print(f"\nwhere the time goes: FetchFeatureValues futures, {n} keys (cProfile, calling thread)")
    profile(fetch_futures, repeat, args.top)
    print(f"\nwhere the time goes: mab vertex store (streaming), {len(stream_ids)} ids (cProfile, calling thread)")
    profile(store_fetch("vertex", stream_ids), repeat * 5, args.top)

    shared.close()
    beta_channel.close()
    for store in stores.values():
        store.close()
    legacy_channel.close()
    online_channel.close()


if __name__ == "__main__":
    main()
