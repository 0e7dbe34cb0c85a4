"""End to end: a real Prometheus scrapes GET /metrics of gunicorn with 2 workers.

Prometheus is Debian's package (/usr/bin/prometheus; scripts/test installs
it). Where it is absent the test is skipped, unless MAB_REQUIRE_PROMETHEUS=1
(CI) makes that a failure. Prometheus scrapes every second; the test sends
/predict traffic from concurrent keep-alive connections for some seconds,
then asks Prometheus's HTTP API (/api/v1/query) what it saw. docs/metrics.md
describes the test and its queries.

The in-flight gauge needs requests that stay in flight. An embedded-store
request lasts a millisecond, and a worker runs them one at a time in its
loop, so a scrape sees at most one in flight per worker, and only when that
worker's metrics thread happened to sample it mid-request (between 2 and 10
scrapes in 12 when tried here, depending on the machine's load). So besides
the embedded traffic a few connections ask a second model whose store is the
Vertex AI stand-in, answering after SLOW_MS: those requests are in flight
through several scrapes, as requests waiting on a remote store are in
production. (With a remote store configured, the workers run every request
on a pool of threads, mab/gunicorn_conf.py, the embedded ones too.)
"""

import http.client
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import orjson
import pytest

from mab.demo import write_items
from mab.testing.processes import Gunicorn, free_port, terminate, wait_for_200
from mab.testing.vertex_standin import toml_table
from tests.serving import ROOT
from tests.vertex import StandInProcess

PROMETHEUS = shutil.which("prometheus")

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None and os.environ.get("MAB_REQUIRE_PROMETHEUS") != "1",
    reason="prometheus is not installed (CI sets MAB_REQUIRE_PROMETHEUS=1 and scripts/test installs it)",
)

N_ITEMS = 2000
IDS = [f"item-{i:06d}" for i in range(N_ITEMS)]
FAST_CONNECTIONS = 6        # /predict of model "default" (embedded), 2000 ids
SLOW_CONNECTIONS = 4        # /predict of model "slow" (the stand-in), 2 ids
SLOW_MS = 1500
TRAFFIC_SECONDS = 10
PREDICT = 'route="/predict"'


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "items.csv"
    write_items(path, N_ITEMS)
    return path


@pytest.fixture
def standin(tmp_path, data):
    standin = StandInProcess(tmp_path, data, "--latency-ms", str(SLOW_MS))
    try:
        standin.start()
        yield standin
    finally:
        standin.stop()


@pytest.fixture
def server(tmp_path, data, standin):
    config = tmp_path / "mab.toml"
    config.write_text("\n\n".join([
        toml_table("stores.default", {"path": str(data)}),
        toml_table("stores.slow", dict(standin.settings, deadline_ms=20000, attempt_timeout_ms=20000)),
        toml_table("models.default", {}),
        toml_table("models.slow", {"store": "slow"}),
    ]) + "\n")
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    # No queue limit (as in tests/serving.py): a busy machine stalls a worker
    # at times, and this test is about the metrics, not admission control.
    server = Gunicorn(ROOT, {"MAB_CONFIG": str(config), "MAB_CACHE_DIR": str(tmp_path / "cache"),
                             "WEB_CONCURRENCY": "2", "MAB_MAX_QUEUE_MS": "0",
                             "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
                      tmp_path / "gunicorn.log")
    try:
        server.start()
        server.wait_ready()
        yield server
    finally:
        server.stop()


class Prometheus:
    """Debian's prometheus on 127.0.0.1:<free port>, scraping `target`
    (host:port) every second; its data in `tmp_path`; stopped by PID."""

    def __init__(self, tmp_path, target):
        self.port = free_port()
        self.config = tmp_path / "prometheus.yml"
        # scrape_timeout may not exceed scrape_interval (its default is 10 s).
        self.config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "scrape_configs:\n"
            "  - job_name: mab\n"
            "    metrics_path: /metrics\n"
            "    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        self.storage = tmp_path / "prometheus-data"
        self.log_path = tmp_path / "prometheus.log"
        self.process = None
        self._log = None

    def start(self):
        assert PROMETHEUS is not None, "MAB_REQUIRE_PROMETHEUS=1, but there is no prometheus on PATH"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={self.config}", f"--storage.tsdb.path={self.storage}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        return self

    def output(self):
        return self.log_path.read_text()

    def wait_ready(self, timeout=60):
        try:
            wait_for_200(self.process, f"http://127.0.0.1:{self.port}/-/ready", timeout, "prometheus")
        except RuntimeError as exc:
            raise AssertionError(f"{exc}:\n{self.output()}") from None

    def query(self, promql, at=None):
        """The instant vector of `promql` (evaluated now, or at the Unix time
        `at`) as a list of (labels dict, float value)."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=30) as response:
            answer = orjson.loads(response.read())
        assert answer["status"] == "success", answer
        assert answer["data"]["resultType"] == "vector", answer
        return [(item["metric"], float(item["value"][1])) for item in answer["data"]["result"]]

    def value(self, promql, at=None):
        """The single value of `promql`, or None when the result is empty."""
        result = self.query(promql, at)
        assert len(result) <= 1, result
        return result[0][1] if result else None

    def wait_for(self, promql, condition, timeout=60):
        """The value of `promql` once `condition(value)` holds, polling."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.value(promql)
            if value is not None and condition(value):
                return value
            assert time.monotonic() < deadline, f"{promql} = {value} after {timeout}s:\n{self.output()}"
            time.sleep(0.25)

    def stop(self):
        terminate(self.process)
        if self._log is not None:
            self._log.close()


@pytest.fixture
def prometheus(tmp_path, server):
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{server.port}")
    try:
        prometheus.start()
        prometheus.wait_ready()
        yield prometheus
    finally:
        prometheus.stop()


def send_traffic(port, seconds):
    """/predict from FAST_CONNECTIONS + SLOW_CONNECTIONS keep-alive
    connections, each one request after another, for `seconds`:
    ({model: requests answered 200}, {worker: fast requests it answered},
    [any other outcome])."""
    bodies = {
        "default": orjson.dumps({"item_ids": IDS, "top_k": 10}),
        "slow": orjson.dumps({"item_ids": IDS[:2], "model": "slow"}),
    }
    headers = {"Content-Type": "application/json"}
    answered, by_worker, failures = {"default": 0, "slow": 0}, {}, []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(model):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            while time.monotonic() < deadline:
                conn.request("POST", "/predict", body=bodies[model], headers=headers)
                response = conn.getresponse()
                response.read()
                with lock:
                    if response.status == 200:
                        answered[model] += 1
                        if model == "default":
                            worker = response.headers["X-Served-By"]
                            by_worker[worker] = by_worker.get(worker, 0) + 1
                    else:
                        failures.append((model, response.status))
        except OSError as exc:
            with lock:
                failures.append((model, repr(exc)))
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=("default",)) for _ in range(FAST_CONNECTIONS)]
    threads += [threading.Thread(target=client, args=("slow",)) for _ in range(SLOW_CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 60)
    assert not any(thread.is_alive() for thread in threads), "a client hung"
    return answered, by_worker, failures


def test_prometheus_sees_the_rate_and_the_in_flight_requests_of_both_workers(server, prometheus):
    # The target is up, and was scraped before any traffic.
    prometheus.wait_for('up{job="mab"}', lambda up: up == 1)
    assert prometheus.value(f"sum(mab_http_requests_total{{{PREDICT}}})") is None, "no /predict yet"

    started = time.time()
    answered, by_worker, failures = send_traffic(server.port, TRAFFIC_SECONDS)
    elapsed = time.time() - started
    assert failures == [], failures
    assert len(by_worker) == 2, f"both workers answered: {by_worker}"
    assert answered["slow"] >= SLOW_CONNECTIONS, answered

    # The counters, summed over both workers' multiprocess files, reach
    # every request sent once each worker has flushed (within a second) and
    # Prometheus has scraped again (every second); they never pass it.
    for model, sent in answered.items():
        total = f'sum(mab_http_requests_total{{{PREDICT},status="200",model="{model}"}})'
        counted = prometheus.wait_for(total, lambda value: value >= sent)
        assert counted == sent, f"{model}: {counted} counted, {sent} sent"
    assert answered["default"] > max(by_worker.values()), "one worker's count alone would not match"
    assert prometheus.value(f'sum(mab_http_requests_total{{{PREDICT},status!="200"}})') is None

    # Evaluated at one instant from here on, so the windows cover the traffic
    # however long the polling took.
    at = time.time()
    window = int(at - started) + 2

    # The request rate: the highest 5-second rate during the traffic is of
    # the order of the clients' mean rate (a quarter of it at the least: the
    # windows are short and the flushes a second apart, but not a quarter).
    rate = f'sum(rate(mab_http_requests_total{{{PREDICT},model="default"}}[5s]))'
    peak = prometheus.value(f"max_over_time({rate}[{window}s:1s])", at)
    mean = answered["default"] / elapsed
    assert peak is not None and peak >= mean / 4, f"peak rate {peak}/s, clients' mean {mean:.0f}/s"

    # The in-flight gauge, the autoscaling signal: the slow requests were in
    # flight through several scrapes (each lasts SLOW_MS, with a gap of a
    # client's turnaround between two on a connection), so at least one
    # scrape saw all of them. It can never exceed the connections.
    in_flight = f"max_over_time(mab_http_requests_in_flight[{window}s])"
    peak_in_flight = prometheus.value(in_flight, at)
    assert peak_in_flight is not None
    assert SLOW_CONNECTIONS <= peak_in_flight <= SLOW_CONNECTIONS + FAST_CONNECTIONS, peak_in_flight
    # And it falls back to 0 once the traffic has stopped.
    prometheus.wait_for("mab_http_requests_in_flight", lambda value: value == 0)

    # Prometheus's own scrapes are counted, under their route.
    assert prometheus.value('sum(mab_http_requests_total{route="/metrics",status="200"})') > 0
    assert "level=error" not in prometheus.output(), prometheus.output()
    assert "Traceback" not in server.output()
