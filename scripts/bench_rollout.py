#!/usr/bin/env python3
"""Does a data refresh, a configuration change or a stop lose requests?
(issue 10 section 2; the drills are ``mab.testing.rollout``.)

For each scenario it starts gunicorn with --workers workers on a demo CSV of
--rows rows (named by a configuration file), drives it with wrk
(--connections keep-alive connections, --ids-id /predict bodies), and after
--at seconds renames a new CSV or configuration file into place and sends
the master HUP, or sends it TERM (then the load is the accounting client of
mab.testing.keepalive_load: wrk would count the connects refused once the
server has stopped listening as lost requests), or does nothing (steady:
the control). After a HUP it probes on fresh connections until the change
is served by new workers only (for a bad file: until the old data is still
served and /ready says why), lets the load run --tail seconds more, and
stops it. It reports requests answered, answers by status (and the 503s of
admission control among them), socket errors, the requests lost, how long
the change took to be served, whether the old workers drained only after
the new ones were ready, and the server log's ERROR lines. Everything it
starts it stops, by PID. Every scenario starts a fresh server.

    .venv/bin/python scripts/bench_rollout.py                            # 10 million rows, every scenario
    .venv/bin/python scripts/bench_rollout.py --rows 200000 --scenarios term
    .venv/bin/python scripts/bench_rollout.py --max-queue-ms 0           # admission control off
    .venv/bin/python scripts/bench_rollout.py --pause-ms 1000 --scenarios hup-config   # idle connections

Exit status 0 when no scenario lost a request, 1 otherwise. The files go to
--work-dir (default: a new temporary directory, removed at the end; 10
million rows take about 290 MB as CSV, and each compiled copy about 550 MB).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

from mab.bench.load import ensure_wrk
from mab.testing.rollout import SCENARIOS, Drill


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows of the CSV (default 10,000,000)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated, of {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--ids", type=int, default=400, help="ids per request (default 400)")
    parser.add_argument("--pause-ms", type=float, default=0,
                        help="mean pause of a connection between an answer and its next request, so connections "
                        "sit idle (default 0: none; HUP scenarios only)")
    parser.add_argument("--at", type=float, default=3.0, help="seconds of load before the signal (default 3)")
    parser.add_argument("--tail", type=float, default=3.0, help="seconds of load after the outcome (default 3)")
    parser.add_argument("--outcome-timeout", type=float, default=300.0,
                        help="longest wait for the change to be served, or the server to stop (default 300 s)")
    parser.add_argument("--server-cores", help="taskset list for the server (default: no pinning)")
    parser.add_argument("--max-queue-ms", help="MAB_MAX_QUEUE_MS for the server (default: the service's default; "
                        "0 turns admission control off)")
    parser.add_argument("--compile-niceness", help="MAB_COMPILE_NICENESS for the server: the niceness of the "
                        "compile a HUP runs (default: the service's, 10)")
    parser.add_argument("--work-dir", help="where the files go (default: a temporary directory, removed after)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    scenarios = args.scenarios.split(",")
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}")
    ensure_wrk()
    work = args.work_dir or tempfile.mkdtemp(prefix="mab-rollout-")
    env = {}
    if args.max_queue_ms is not None:
        env["MAB_MAX_QUEUE_MS"] = args.max_queue_ms
    if args.compile_niceness is not None:
        env["MAB_COMPILE_NICENESS"] = args.compile_niceness
    results = []
    try:
        for scenario in scenarios:
            directory = os.path.join(work, scenario)
            with Drill(directory, rows=args.rows, workers=args.workers, connections=args.connections,
                       ids=args.ids, pause_ms=args.pause_ms, env=env, cores=args.server_cores,
                       outcome_timeout=args.outcome_timeout) as drill:
                print(f"{scenario}: writing {args.rows:,} rows and starting the server ...", file=sys.stderr)
                drill.prepare()
                drill.start_server()
                result = drill.run(scenario, at=args.at, tail=args.tail)
            results.append(result)
            print(line(result), file=sys.stderr)
            if not args.work_dir:
                shutil.rmtree(directory, ignore_errors=True)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(table(results, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": vars(args), "results": [r.as_dict() for r in results]}, f, indent=1)
    return 0 if all(r.lost == 0 for r in results) else 1


def errors(result):
    """The socket errors, as the load tool saw them."""
    if result.load is not None:
        load = result.load
        return f"wrk: connect {load.connect}, read {load.read}, write {load.write}, timeout {load.timeout}"
    tally = result.tally
    return (f"lost {tally.lost}, unclean closes {tally.unclean}, clean closes {tally.closed_after_close}, "
            f"refused connects {tally.refused}")


def statuses(result):
    counts = result.load.statuses if result.load is not None else result.tally.statuses
    text = ", ".join(f"{code}: {n:,}" for code, n in sorted(counts.items()))
    return text + (f" ({result.shed:,} shed: 503 overloaded)" if result.shed else "")


def line(result):
    outcome = "never" if result.outcome_seconds is None else f"{result.outcome_seconds:.1f}s"
    return (f"  {result.scenario}: {result.requests:,} answered ({statuses(result)}); {errors(result)}; "
            f"lost {result.lost:,}; outcome after {outcome}; {len(result.error_lines)} ERROR lines")


def table(results, args):
    rows = [
        f"{args.rows:,} rows, {args.workers} workers, {args.connections} connections, {args.ids} ids per request",
        "",
        "| scenario | answered | statuses | socket errors | lost | outcome after | max latency "
        "| old workers drained after the new were ready |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        outcome = "never" if r.outcome_seconds is None else f"{r.outcome_seconds:.1f} s"
        latency = f"{r.load.max_ms:.0f} ms" if r.load is not None else "-"
        handed_over = {None: "-", True: "yes", False: "no"}[r.drained_after_ready]
        rows.append(f"| {r.scenario} | {r.requests:,} | {statuses(r)} | {errors(r)} | {r.lost:,} | {outcome} "
                    f"| {latency} | {handed_over} |")
    for r in results:
        for error in r.error_lines[:5]:
            rows.append(f"\n{r.scenario}: {error}")
        if r.tally is not None:
            for event in [e for e in r.tally.events if e[1] != "refused"][:10]:
                rows.append(f"\n{r.scenario}: event {event}")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
