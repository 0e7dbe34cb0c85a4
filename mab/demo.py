"""Deterministic demo data for the embedded store (``mab data demo``).

The layout is the one ../shared/peers/go-peer reads, so both services can be
benchmarked on one file:

    item_id,successes,failures
    item-000000,33,33570

successes are uniform in 0..1000 and failures in 0..100,000 (as in the Go
peer's generator), drawn from numpy's PCG64 seeded with ``seed``: the same
arguments always write the same bytes.
"""

import os

import numpy as np

CHUNK = 1_000_000


def write_items(path, n_items, seed=42):
    """Write ``n_items`` rows (ids ``item-000000``, ...) to the CSV file ``path``.

    The file appears under its name only when complete (written beside it,
    then renamed), so a reader never sees half of it. Parent directories are
    created. Raises ``OSError`` when the file cannot be written.
    """
    if n_items < 0:
        raise ValueError(f"n_items must be >= 0, got {n_items}")
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = f"{path}.partial"
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
