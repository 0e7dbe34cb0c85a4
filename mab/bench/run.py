"""A benchmark run: start the systems, take turns with load, report, stop them."""

import datetime
import json
import os
import signal
import sys
import tempfile
from dataclasses import asdict

from mab.bench.load import WRK_SCRIPT, ensure_wrk, read_ids, run_wrk, write_bodies
from mab.bench.report import fmt, print_table, print_workers, summarize, write_chart
from mab.bench.systems import make_system
from mab.demo import write_items


def interrupt(signum, frame):
    raise KeyboardInterrupt


def run(args):
    """Run the benchmark ``args`` describes (``mab bench``'s options, see
    ``mab.cli.bench``): print a line per step to stderr as it goes, then the
    table to stdout, and write the JSON results and the chart to
    ``args.out``. Every process it starts is stopped by PID, also on Ctrl-C
    or SIGTERM (then it exits with status 130)."""
    ensure_wrk()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    args.work_dir = tempfile.mkdtemp(prefix="mab-bench-")
    if args.go_peer:
        args.go_peer = os.path.abspath(args.go_peer)
    if not args.data:
        args.data = os.path.join(args.work_dir, f"items-{args.items}.csv")
        write_items(args.data, args.items, seed=42)
    # The servers and the stand-in run in the work directory.
    args.data = os.path.abspath(args.data)
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
    out = args.out or os.path.join(args.results_dir, f"bench-{stamp}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    arguments = {k: v for k, v in vars(args).items() if k != "standin" and not callable(v)}
    with open(out, "w") as f:
        json.dump({"arguments": arguments, "summary": rows,
                   "server_pids": {s.name: s.process.pid for s in systems if getattr(s, "process", None)},
                   "steps": [asdict(s) for s in steps]}, f, indent=2)
    print(f"\nresults: {out}", file=sys.stderr)
    if not args.no_chart:
        chart = write_chart(rows, os.path.splitext(out)[0] + ".png", title)
        if chart:
            print(f"chart: {chart}", file=sys.stderr)
