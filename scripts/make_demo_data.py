#!/usr/bin/env python3
"""Write a deterministic demo CSV for the embedded store.

The layout is the one ../shared/peers/go-peer reads, so both services can be
benchmarked on one file:

    item_id,successes,failures
    item-000000,33,33570

successes are uniform in 0..1000 and failures in 0..100,000 (as in the Go
peer's generator), drawn from numpy's PCG64 seeded with --seed: the same
arguments always write the same bytes.

    python scripts/make_demo_data.py --items 100000 --out data/items.csv
"""

import argparse
import os
import sys

import numpy as np

CHUNK = 1_000_000


def write_items(path, n_items, seed):
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = path + ".partial"
    with open(partial, "w") as f:
        f.write("item_id,successes,failures\n")
        for start in range(0, n_items, CHUNK):
            count = min(CHUNK, n_items - start)
            successes = rng.integers(0, 1001, count)
            failures = rng.integers(0, 100_001, count)
            f.writelines(
                f"item-{i:06d},{s},{fl}\n"
                for i, s, fl in zip(range(start, start + count), successes.tolist(), failures.tolist())
            )
    os.replace(partial, path)   # never leave a half-written file under the real name


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000, help="number of items (default 100,000)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument("--out", default="data/items.csv", help="output path (default data/items.csv)")
    args = parser.parse_args(argv)
    if args.items < 0:
        parser.error("--items must be >= 0")
    write_items(args.out, args.items, args.seed)
    print(f"wrote {args.items:,} items to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
