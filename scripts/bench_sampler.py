#!/usr/bin/env python3
"""Benchmark mab.sampling.sample_beta against numpy's Generator.beta.

Prints, from one run so the figures are side by side:

* ns per variate at n = 1,000,000 (alpha uniform in 1..1000, beta uniform in
  1..100,000), for numpy and for our sampler on 1 and 2 threads;
* microseconds per call at n = 400 (same parameter ranges), including the
  Python call overhead;
* the contention check: two processes sampling at once, each with 2 OpenMP
  threads, under OMP_WAIT_POLICY=passive (our default) and active, against
  the same two processes on 1 thread each.

Every figure is the median of --repeats timings. Usage:

    .venv/bin/python scripts/bench_sampler.py [--repeats 15] [--markdown]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

N_LARGE = 1_000_000
N_SMALL = 400


def parameters(n, seed=20261122):
    rng = np.random.default_rng(seed)
    return rng.uniform(1.0, 1000.0, n), rng.uniform(1.0, 100_000.0, n)


def timed(fn, inner):
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner


def measure_in_process(repeats):
    """Time every sampler in turn within each round, so that the machine's
    drift (it is shared and noisy) hits all of them alike; report medians."""
    from mab.sampling import build_info, sample_beta

    generator = np.random.default_rng(1)
    large_a, large_b = parameters(N_LARGE)
    small_a, small_b = parameters(N_SMALL)
    variants = [
        ("numpy Generator.beta", 1,
         lambda: generator.beta(large_a, large_b), lambda: generator.beta(small_a, small_b)),
    ] + [
        ("mab sample_beta", t,
         lambda t=t: sample_beta(large_a, large_b, n_threads=t),
         lambda t=t: sample_beta(small_a, small_b, n_threads=t))
        for t in (1, 2)
    ]
    large = [[] for _ in variants]
    small = [[] for _ in variants]
    for _ in range(repeats + 1):
        for i, (_, _, fn_large, fn_small) in enumerate(variants):
            large[i].append(timed(fn_large, 1) / N_LARGE * 1e9)
            small[i].append(timed(fn_small, 2000) * 1e6)
    rows = []
    for i, (name, threads, _, _) in enumerate(variants):
        # The first round warms caches and pages in buffers; it is dropped.
        rows.append({
            "sampler": name,
            "threads": threads,
            "ns_per_variate_1m": statistics.median(large[i][1:]),
            "us_per_call_400": statistics.median(small[i][1:]),
            "speedup_vs_numpy_1m": statistics.median(n / m for n, m in zip(large[0][1:], large[i][1:])),
            "speedup_vs_numpy_400": statistics.median(n / m for n, m in zip(small[0][1:], small[i][1:])),
            "speedup_vs_1_thread_1m": statistics.median(n / m for n, m in zip(large[1][1:], large[i][1:])),
        })
    return build_info(), rows


CONTENTION_CHILD = """
import json, statistics, sys, time
import numpy as np
from mab.sampling import sample_beta
threads, seconds = int(sys.argv[1]), float(sys.argv[2])
rng = np.random.default_rng(7)
a, b = rng.uniform(1, 1000, 1_000_000), rng.uniform(1, 100_000, 1_000_000)
sample_beta(a, b, n_threads=threads)
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()                      # start together with the sibling
done, start = 0, time.perf_counter()
while time.perf_counter() - start < seconds:
    sample_beta(a, b, n_threads=threads)
    done += 1
print(json.dumps({"variates_per_s": done * len(a) / (time.perf_counter() - start)}))
"""


def measure_contention(threads, wait_policy, seconds):
    """Aggregate variates/s of two processes sampling side by side."""
    env = dict(os.environ, OMP_WAIT_POLICY=wait_policy)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONTENTION_CHILD, str(threads), str(seconds)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        for _ in range(2)
    ]
    try:
        for proc in procs:
            proc.stdout.readline()
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [json.loads(proc.communicate(timeout=seconds * 20 + 60)[0]) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return sum(r["variates_per_s"] for r in results)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15, help="timings per figure (median reported)")
    parser.add_argument("--contention-seconds", type=float, default=4.0,
                        help="duration of each two-process contention run (0 skips it)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)

    info, rows = measure_in_process(args.repeats)
    print(f"build: {info}")
    print(f"n={N_LARGE:,}: alpha ~ U(1, 1000), beta ~ U(1, 100000); medians of {args.repeats} repetitions\n")
    print("| sampler | threads | ns/variate, n=1,000,000 | vs numpy | vs 1 thread | us/call, n=400 | vs numpy |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['sampler']} | {row['threads']} | {row['ns_per_variate_1m']:.1f} "
            f"| {row['speedup_vs_numpy_1m']:.2f}x | {row['speedup_vs_1_thread_1m']:.2f}x "
            f"| {row['us_per_call_400']:.1f} | {row['speedup_vs_numpy_400']:.2f}x |"
        )
    print("(ratios are medians of per-round ratios, each round timing every sampler in turn)")

    contention = {}
    if args.contention_seconds > 0:
        print("\nTwo processes sampling n=1,000,000 side by side (aggregate, million variates/s):")
        print("| threads per process | OMP_WAIT_POLICY | Mvariates/s | vs 1 thread each |")
        print("|---|---|---|---|")
        base = measure_contention(1, "passive", args.contention_seconds)
        contention["1 thread"] = base
        print(f"| 1 | (no parallel region) | {base / 1e6:.1f} | 1.00x |")
        for policy in ("passive", "active"):
            rate = measure_contention(2, policy, args.contention_seconds)
            contention[f"2 threads, {policy}"] = rate
            print(f"| 2 | {policy} | {rate / 1e6:.1f} | {rate / base:.2f}x |")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"build": info, "rows": rows, "contention_variates_per_s": contention}, f, indent=2)


if __name__ == "__main__":
    main()
