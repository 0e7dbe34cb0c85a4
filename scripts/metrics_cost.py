"""Cost of one prometheus-client operation, plain and in multiprocess mode.

    python scripts/metrics_cost.py

Prints microseconds per operation (best of 5 timeit repeats), for the
operations the /predict path makes (docs/metrics.md). Multiprocess mode is
chosen when prometheus_client is imported, so each mode runs in a child
process of its own.
"""

import os
import subprocess
import sys
import tempfile

CHILD = r"""
import timeit
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
r = CollectorRegistry()
c = Counter("c", "c", ["route", "status", "model"], registry=r)
g = Gauge("g", "g", multiprocess_mode="livesum", registry=r)
h = Histogram("h", "h", ["route"], registry=r)
cl = c.labels("/predict", "200", "default")
hl = h.labels("/predict")
ops = {
    "counter.labels(...).inc()": lambda: c.labels("/predict", "200", "default").inc(),
    "counter child .inc()": lambda: cl.inc(),
    "gauge .inc() + .dec()": lambda: (g.inc(), g.dec()),
    "histogram child .observe()": lambda: hl.observe(0.0012),
}
for name, op in ops.items():
    n = 20000
    best = min(timeit.repeat(op, number=n, repeat=5)) / n
    print(f"  {name:32s} {best * 1e6:6.2f} us")
"""


def main():
    for mode in ("plain", "multiprocess"):
        env = dict(os.environ)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        with tempfile.TemporaryDirectory() as directory:
            if mode == "multiprocess":
                env["PROMETHEUS_MULTIPROC_DIR"] = directory
            print(f"{mode}:")
            sys.stdout.flush()
            subprocess.run([sys.executable, "-c", CHILD], env=env, check=True)


if __name__ == "__main__":
    main()
