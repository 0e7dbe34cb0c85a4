"""Bytes and CPU per logged decision (mab.decisions), in process.

    python scripts/decisions_cost.py [--ids 400] [--decisions 4096] [--id-style demo|uuid]
                                     [--compression zstd] [--repeat 5]

Builds the service on a demo store (100,000 items), answers requests of
``--ids`` distinct ids drawn uniformly (as scripts/bench.py does, through
the compiled body parser), and reports:

- the request path: CPU per ``PredictionService.predict`` with the decision
  logged and not logged (best of ``--repeat`` rounds, one round each
  alternately, so both see the same machine), and the difference;
- the whole: CPU of this process per prediction with every decision
  logged by a running writer thread into Parquet files, the last one
  closed, against predictions not logged;
- the writer thread's work per decision: building the Arrow columns and
  writing them as Parquet row groups of 512 decisions (CPU seconds of this
  process, best of ``--repeat``), and as JSON Lines to /dev/null;
- bytes per decision of the Parquet files and of the JSON lines.

These are rough in-process figures: the cost on a server, side by side with
logging off, is what ``scripts/bench.py --systems mab,mab-decisionlog``
measures. ``--id-style uuid`` uses 36-character ids instead of the demo's
11-character ``item-000042``.
"""

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mab.config import config_from_document  # noqa: E402
from mab.decisions.log import BATCH_RECORDS, DecisionLog  # noqa: E402
from mab.decisions.record import model_info  # noqa: E402
from mab.decisions.sinks import JsonLinesSink, ParquetSink  # noqa: E402
from mab.service import PredictionService, read_prediction_request  # noqa: E402
from mab.stores import create_store  # noqa: E402


class Holding:
    """A sink that keeps nothing: the queue is drained by hand here."""

    name = "none"


def write_data(path, n_items, id_style, seed=42):
    rng = random.Random(seed)
    ids = [f"item-{i:06d}" if id_style == "demo" else str(uuid.UUID(int=rng.getrandbits(128))) for i in range(n_items)]
    with open(path, "w") as f:
        f.write("item_id,successes,failures\n")
        for item in ids:
            f.write(f"{item},{rng.randint(0, 1000)},{rng.randint(0, 100_000)}\n")
    return ids


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--ids", type=int, default=400)
    parser.add_argument("--decisions", type=int, default=4096)
    parser.add_argument("--id-style", choices=("demo", "uuid"), default="demo")
    parser.add_argument("--compression", default="zstd")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    work = tempfile.mkdtemp(prefix="mab-decisions-cost-")
    try:
        data = os.path.join(work, "items.csv")
        ids = write_data(data, args.items, args.id_style)
        config = config_from_document(
            {"models": {"default": {"log_fraction": 1.0}}, "decision_log": {"directory": os.path.join(work, "out")}},
            {"MAB_DATA": data, "MAB_CACHE_DIR": os.path.join(work, "cache")},
        )
        stores = {name: create_store(settings, config.cache_dir) for name, settings in config.stores.items()}
        decision_log = DecisionLog(Holding(), queue_records=args.decisions + 1)
        logging_service = PredictionService(config, stores, decision_log=decision_log)
        logging_service.load()
        plain_service = PredictionService(config, stores)
        plain_service.load()
        rng = random.Random(1)
        bodies = [json.dumps({"user_id": "u1", "item_ids": rng.sample(ids, args.ids)}, separators=(",", ":")).encode()
                  for _ in range(256)]

        def run(service, n, chunk=256):
            # Timed in chunks, the queue emptied between them (untimed), as
            # the writer thread keeps it short: the allocator then reuses
            # the memory of written records, as it does in a server.
            seconds = 0.0
            for done in range(0, n, chunk):
                start = time.process_time()
                for i in range(done, min(n, done + chunk)):
                    service.predict(read_prediction_request(bodies[i % len(bodies)], 100_000))
                seconds += time.process_time() - start
                while not decision_log._queue.empty():
                    decision_log._queue.get_nowait()
            return seconds / n

        n_timed = min(args.decisions, 2000)
        best_plain = best_logged = float("inf")
        for _ in range(args.repeat):
            best_plain = min(best_plain, run(plain_service, n_timed))
            best_logged = min(best_logged, run(logging_service, n_timed))
        # The records the writer will write.
        for i in range(args.decisions):
            logging_service.predict(read_prediction_request(bodies[i % len(bodies)], 100_000))
        records = [decision_log._queue.get_nowait() for _ in range(args.decisions)]
        infos = {"default": model_info(logging_service.models["default"])}

        def write_parquet():
            directory = os.path.join(work, "out")
            shutil.rmtree(directory, ignore_errors=True)
            sink = ParquetSink(directory, rotate_records=0, rotate_seconds=0, compression=args.compression)
            start = time.process_time()
            for i in range(0, len(records), BATCH_RECORDS):
                sink.write(records[i:i + BATCH_RECORDS], infos)
            sink.close()
            seconds = time.process_time() - start
            size = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))
            return seconds / len(records), size / len(records)

        def write_json_lines():
            fd = os.open(os.devnull, os.O_WRONLY)
            try:
                sink = JsonLinesSink(fd)
                start = time.process_time()
                for i in range(0, len(records), BATCH_RECORDS):
                    sink.write(records[i:i + BATCH_RECORDS], infos)
                return (time.process_time() - start) / len(records)
            finally:
                os.close(fd)

        def whole(n):
            # Everything a worker does: predictions with the writer thread
            # running beside them, until the last file is closed.
            directory = os.path.join(work, "whole")
            shutil.rmtree(directory, ignore_errors=True)
            live = DecisionLog(ParquetSink(directory, compression=args.compression),
                               queue_records=config.decision_log.queue_records)
            service = PredictionService(config, stores, decision_log=live)
            service.load()
            live.start()
            start = time.process_time()
            for i in range(n):
                service.predict(read_prediction_request(bodies[i % len(bodies)], 100_000))
            live.close()
            seconds = time.process_time() - start
            logged, dropped = live.counts()
            return seconds / n, sum(logged.values()), sum(dropped.values())

        best_whole = float("inf")
        for _ in range(args.repeat):
            best_plain = min(best_plain, run(plain_service, n_timed))
            seconds, logged, dropped = whole(n_timed)
            best_whole = min(best_whole, seconds)
        parquet = [write_parquet() for _ in range(args.repeat)]
        parquet_seconds = min(seconds for seconds, _ in parquet)
        parquet_bytes = parquet[0][1]
        json_seconds = min(write_json_lines() for _ in range(args.repeat))
        from mab.decisions.record import json_line

        json_bytes = sum(len(json_line(r, infos["default"])) for r in records) / len(records)
        figures = {
            "ids": args.ids, "id_style": args.id_style, "decisions": len(records), "compression": args.compression,
            "request_path_us": {"not_logged": best_plain * 1e6, "logged": best_logged * 1e6,
                                "difference": (best_logged - best_plain) * 1e6},
            "with_writer_us": {"logged": best_whole * 1e6, "difference": (best_whole - best_plain) * 1e6,
                               "last_run_logged": logged, "last_run_dropped": dropped},
            "writer_us_per_decision": {"parquet": parquet_seconds * 1e6, "jsonl": json_seconds * 1e6},
            "bytes_per_decision": {"parquet": parquet_bytes, "jsonl": json_bytes},
        }
        if args.json:
            print(json.dumps(figures, indent=2))
        else:
            print(f"{args.ids} candidates per decision, {args.id_style} ids, {len(records)} decisions, "
                  f"Parquet {args.compression}")
            print(f"  request path, predict():  {best_plain * 1e6:7.1f} us not logged, {best_logged * 1e6:7.1f} us "
                  f"logged ({(best_logged - best_plain) * 1e6:+.1f} us)")
            print(f"  predict() + writer thread:{best_whole * 1e6:7.1f} us per decision, all logged "
                  f"({(best_whole - best_plain) * 1e6:+.1f} us; last run {logged} logged, {dropped} dropped)")
            print(f"  writer, per decision:     {parquet_seconds * 1e6:7.1f} us Parquet, "
                  f"{json_seconds * 1e6:7.1f} us JSON Lines")
            print(f"  bytes per decision:       {parquet_bytes:7.0f} Parquet, {json_bytes:7.0f} JSON Lines")
        for store in stores.values():
            store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
