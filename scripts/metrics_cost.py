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

# What mab does per /predict instead (mab.metrics.Recorder): plain numbers
# under one lock, plus the perf_counter calls of the stage timings.
import time
from mab import metrics
recorder = metrics.Recorder()
environ = {metrics.MODEL_KEY: "default", metrics.PREDICTION_KEY: (400, 3, 0, (1e-5, 6e-5, 4e-5, 2e-5, 1e-5))}
def one_request():
    recorder.started()
    t = time.perf_counter()
    for _ in range(7):
        time.perf_counter()
    recorder.request("/predict", "200", time.perf_counter() - t, environ, True, 0.0001)
ops["mab Recorder, one /predict"] = one_request
for name, op in ops.items():
    n = 20000
    best = min(timeit.repeat(op, number=n, repeat=5)) / n
    print(f"  {name:32s} {best * 1e6:6.2f} us")
for _ in range(1000):
    one_request()
n = 200
best = min(timeit.repeat(lambda: (one_request(), recorder.flush()), number=n, repeat=5)) / n
print(f"  {'flush after a request':32s} {best * 1e6:6.2f} us (once a second)")
"""

# The whole of it on one request through the app: GET /health (no
# prediction), with the recorder and with it detached.
APP = r"""
import os, tempfile, timeit
from falcon import testing
from mab.config import config_from_document
from mab.web import create_app
directory = tempfile.mkdtemp()
with open(os.path.join(directory, "items.csv"), "w") as f:
    f.write("item_id,successes,failures\n" + "".join(f"i{k},{k},{k}\n" for k in range(10)))
app = create_app(config_from_document({}, {"MAB_DATA": os.path.join(directory, "items.csv"),
                                           "MAB_CACHE_DIR": os.path.join(directory, "cache")}), load="now")
environ = testing.create_environ(path="/health")
def start_response(status, headers, exc_info=None):
    pass
def call():
    app(dict(environ), start_response)
recorder = app.metrics
for label, value in (("with metrics", recorder), ("without metrics", None)) * 2:
    app.metrics = value
    best = min(timeit.repeat(call, number=20000, repeat=5)) / 20000
    print(f"  GET /health {label:20s} {best * 1e6:6.2f} us")
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
    print("the app (plain mode):")
    sys.stdout.flush()
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    subprocess.run([sys.executable, "-c", APP], env=env, check=True)


if __name__ == "__main__":
    main()
