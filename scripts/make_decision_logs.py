#!/usr/bin/env python3
"""Write synthetic decision logs and rewards, to measure and test ``mab evaluate``.

The records follow the decision-log contract (mab/evaluation/schema.py), one
Parquet file per simulated worker; the rewards are the clicks of a known
position-based click model (mab/evaluation/synthetic.py). For example, the
10-million-decision log of docs/evaluation.md:

    python scripts/make_decision_logs.py --out /tmp/logs --decisions 10000000 \\
        --candidates 200 --top-k 10 --files 4 --rewards /tmp/rewards.parquet

Deterministic in --seed: the same arguments write the same records.
"""

import argparse
import os
import sys
import time

from mab.evaluation import synthetic


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory for the Parquet files (decisions-wNN.parquet)")
    parser.add_argument("--decisions", type=int, default=100_000, help="decisions to write (default 100,000)")
    parser.add_argument("--candidates", type=int, default=200, help="candidates per decision (default 200)")
    parser.add_argument("--top-k", type=int, default=10, help="ranked items per decision (default 10)")
    parser.add_argument("--items", type=int, default=100_000, help="items in the catalogue (default 100,000)")
    parser.add_argument("--files", type=int, default=4, help="files, as from that many workers (default 4)")
    parser.add_argument("--rewards", help="rewards file: .parquet, else JSON Lines (default: none)")
    parser.add_argument("--zeros", action="store_true", help="also write reward 0 for shown items not clicked")
    parser.add_argument("--impressions-median", type=float, default=20_000.0,
                        help="median impressions per item (log-normal, sigma --impressions-sigma; default 20,000)")
    parser.add_argument("--impressions-sigma", type=float, default=2.0, help="log-scale sigma (default 2)")
    parser.add_argument("--new-fraction", type=float, default=0.02,
                        help="share of items without counts, scored from the prior (default 0.02)")
    parser.add_argument("--prior", default="1,1", metavar="ALPHA,BETA", help="the logging prior (default 1,1)")
    parser.add_argument("--half-life", type=float, help="the logging half-life in seconds (default: no decay)")
    parser.add_argument("--max-age", type=float, default=86_400.0,
                        help="with --half-life: count ages uniform below this many seconds (default 86,400)")
    parser.add_argument("--batch-rows", type=int, default=50_000, help="decisions per row group (default 50,000)")
    parser.add_argument("--threads", type=int, default=1, help="sampler threads (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    args = parser.parse_args(argv)
    try:
        alpha, beta = (float(x) for x in args.prior.split(","))
    except ValueError:
        parser.error(f"--prior must be ALPHA,BETA, got {args.prior!r}")
    args.policy = synthetic.Policy(alpha, beta, args.half_life)
    for name in ("decisions", "candidates", "top_k", "items", "files", "batch_rows", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not args.top_k <= args.candidates <= args.items:
        parser.error("need --top-k <= --candidates <= --items")
    return args


def main(argv=None):
    args = parse_args(argv)
    started = time.monotonic()
    catalogue = synthetic.make_catalogue(
        args.items, seed=args.seed, impressions_median=args.impressions_median,
        impressions_sigma=args.impressions_sigma, new_fraction=args.new_fraction,
        max_age_seconds=args.max_age if args.half_life else None)
    last = [0.0]

    def progress(done):
        now = time.monotonic()
        if now - last[0] >= 5 or done == args.decisions:
            last[0] = now
            print(f"wrote {done:,} of {args.decisions:,} decisions, {now - started:.0f} s", file=sys.stderr)

    paths = synthetic.write_logs(args.out, catalogue, args.decisions, candidates=args.candidates,
                                 top_k=args.top_k, policy=args.policy, seed=args.seed, files=args.files,
                                 batch_rows=args.batch_rows, rewards_path=args.rewards, zeros=args.zeros,
                                 n_threads=args.threads, progress=progress)
    size = sum(os.path.getsize(p) for p in paths)
    print(f"{len(paths)} file(s), {size / 1e6:,.1f} MB ({size / args.decisions:,.0f} bytes per decision) in "
          f"{args.out}" + (f"; rewards in {args.rewards}" if args.rewards else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
