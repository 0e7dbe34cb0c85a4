"""The queue and the writer thread: batches, a sink that blocks, a sink that
fails, closing. Every selected decision ends logged or dropped, by reason.

Waits are on events with generous timeouts, never on elapsed time: the
writer is a thread, and the machine may be busy.
"""

import threading
import time
from collections import Counter

import pytest

from mab.decisions.log import DecisionLog
from mab.decisions.sinks import SinkError
from tests.decisions.test_arrow import make_record

WAIT = 60


class Model:
    """What the log reads of a model: its config and its store."""

    def __init__(self, name="default"):
        from types import SimpleNamespace

        self.config = SimpleNamespace(prior_alpha=1.0, prior_beta=1.0, log_fraction=1.0)
        self.store = SimpleNamespace(compiled_path=f"/cache/{name}.csv-0000000000000000")


MODELS = {"default": Model(), "other": Model("other")}


class ListSink:
    """Keeps what it is given; ``gate`` (an Event) holds every write until set."""

    name = "list"

    def __init__(self, gate=None, fail=None):
        self.batches = []
        self.gate = gate
        self.fail = fail
        self.entered = threading.Event()
        self.closed = threading.Event()

    def write(self, records, infos):
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(WAIT), "the test never released the sink"
        if self.fail is not None:
            raise self.fail
        self.batches.append(list(records))
        return Counter(r[2] for r in records)

    def rotate_if_due(self, now=None):
        return {}

    def close(self):
        self.closed.set()
        return {}

    def describe(self):
        return {"sink": self.name}


def records(n, model="default", start=0):
    return [make_record(i, ["a", "b"], model=model) for i in range(start, start + n)]


def started(sink, **kwargs):
    kwargs.setdefault("drain_seconds", 0.01)
    log = DecisionLog(sink, **kwargs)
    log.bind(MODELS)
    log.start()
    return log


def test_records_are_written_in_batches_and_counted(monkeypatch):
    sink = ListSink()
    log = started(sink, queue_records=1000, batch_records=64, flush_seconds=0.05)
    submitted = records(150) + records(10, model="other")
    for record in submitted:
        log.submit(record)
    assert log.close(WAIT)
    written = [r for b in sink.batches for r in b]
    assert [r[0] for r in written] == [r[0] for r in submitted]          # in order, each once
    assert all(len(b) <= 64 for b in sink.batches)
    assert sink.closed.is_set()
    assert log.counts() == ({"default": 150, "other": 10}, {})
    assert log.describe()["state"] == "stopped"


def test_a_partial_batch_is_written_after_flush_seconds():
    sink = ListSink()
    log = started(sink, queue_records=100, batch_records=64, flush_seconds=0.05)
    log.submit(records(1)[0])
    deadline = time.monotonic() + WAIT
    while not sink.batches and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [len(b) for b in sink.batches] == [1], "written without close, once flush_seconds passed"
    log.close(WAIT)


def test_a_blocked_sink_never_blocks_submit_and_drops_are_counted():
    gate = threading.Event()
    sink = ListSink(gate=gate)
    log = started(sink, queue_records=8, batch_records=4, flush_seconds=0.0)
    log.submit(records(1)[0])
    assert sink.entered.wait(WAIT), "the writer took the first record and is now stuck in the sink"
    # Submitting never waits: 1000 records go through while the sink is stuck.
    done = threading.Event()
    more = records(1000, start=1)

    def submit_all():
        for record in more:
            log.submit(record)
        done.set()

    threading.Thread(target=submit_all, daemon=True).start()
    assert done.wait(WAIT), "submit blocked behind a blocked sink"
    logged, dropped = log.counts()
    # At most the queue (8) and the writer's partial batch (< 4) were taken.
    assert dropped[("default", "queue_full")] >= 1000 - 8 - 3
    assert log.describe()["queued"] == 8
    gate.set()
    assert log.close(WAIT)
    logged, dropped = log.counts()
    assert logged["default"] + dropped[("default", "queue_full")] == 1001
    assert sum(len(b) for b in sink.batches) == logged["default"]


def test_stalled_shows_in_describe(monkeypatch):
    from mab.decisions import log as log_module

    monkeypatch.setattr(log_module, "STALL_SECONDS", 0.0)
    gate = threading.Event()
    sink = ListSink(gate=gate)
    log = started(sink, queue_records=8, batch_records=1)
    log.submit(records(1)[0])
    assert sink.entered.wait(WAIT)
    time.sleep(0.01)
    assert log.describe()["state"] == "stalled"
    gate.set()
    log.close(WAIT)
    assert log.describe()["state"] == "stopped"


def test_close_gives_up_on_a_hung_sink_and_counts_what_was_queued():
    gate = threading.Event()
    sink = ListSink(gate=gate)
    log = started(sink, queue_records=10, batch_records=1)
    log.submit(records(1)[0])
    assert sink.entered.wait(WAIT)
    for record in records(5, start=1):
        log.submit(record)
    assert log.close(timeout=0.2) is False
    logged, dropped = log.counts()
    assert dropped == {("default", "shutdown"): 5}
    assert log.describe()["state"] == "abandoned"
    gate.set()          # let the thread finish; its record was taken before the close


@pytest.mark.parametrize("error", [SinkError("disk full", committed={"default": 2}, lost={"default": 5}),
                                   RuntimeError("an injected sink's own error")])
def test_a_failing_sink_drops_and_counts(error, caplog):
    sink = ListSink(fail=error)
    log = started(sink, queue_records=100, batch_records=3, flush_seconds=0.0)
    for record in records(3):
        log.submit(record)
    assert log.close(WAIT)
    logged, dropped = log.counts()
    if isinstance(error, SinkError):
        assert logged == {"default": 2} and dropped == {("default", "write_error"): 5}
        assert log.describe()["last_error"] == "disk full"
    else:
        assert logged == {} and dropped == {("default", "write_error"): 3}
        assert "RuntimeError" in log.describe()["last_error"]
    assert "decision log" in caplog.text


def test_a_log_never_started_counts_its_queue_at_close():
    log = DecisionLog(ListSink(), queue_records=4)
    for record in records(6):
        log.submit(record)
    assert log.close()
    assert log.counts() == ({}, {("default", "queue_full"): 2, ("default", "shutdown"): 4})


# -- through the app ------------------------------------------------------------------


def test_predictions_go_on_while_the_sink_is_stuck(make_config, items_csv, monkeypatch):
    # A sink that blocks (a hung disk) while 300 predictions are answered:
    # none waits for it, the queue fills, the rest are dropped and counted,
    # in /metrics and /ready. Released, the sink gets what was queued.
    from falcon import testing

    from mab import metrics
    from mab.decisions import log as log_module
    from mab.web import create_app
    from tests.test_metrics import samples, value

    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    monkeypatch.setattr(log_module, "STALL_SECONDS", 0.0)
    gate = threading.Event()
    sink = ListSink(gate=gate)
    config = make_config({"models": {"default": {"log_fraction": 1.0}},
                          "decision_log": {"sink": "jsonl", "queue_records": 16}}, MAB_DATA=str(items_csv))
    app = create_app(config, load="now", decision_sink=sink)
    client = testing.TestClient(app)
    first = client.simulate_post("/predict", json={"item_ids": ["item-1", "item-2"]})
    assert first.status_code == 200
    assert sink.entered.wait(WAIT), "the writer took the first record and is stuck in the sink"

    answered = []

    def predict_all():
        for i in range(300):
            result = client.simulate_post("/predict", json={"item_ids": ["item-1", "item-2", "new"], "seed": i})
            answered.append(result.status_code)

    thread = threading.Thread(target=predict_all, daemon=True)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive(), "a prediction waited for the stuck sink"
    assert answered == [200] * 300

    ready = client.simulate_get("/ready").json["decision_log"]
    assert ready["state"] == "stalled" and ready["queued"] == 16 and ready["sink"] == "list"
    assert ready["dropped"]["queue_full"] >= 300 - 16
    scraped = samples(client.simulate_get("/metrics").text)
    dropped = value(scraped, "mab_decisions_dropped_total", model="default", reason="queue_full")
    assert dropped == ready["dropped"]["queue_full"]

    gate.set()
    app.service.close()
    logged, dropped_counts = app.service.decision_log.counts()
    assert logged["default"] + dropped_counts[("default", "queue_full")] == 301
    assert sum(len(b) for b in sink.batches) == logged["default"] >= 1 + 16
    scraped = samples(client.simulate_get("/metrics").text)
    assert value(scraped, "mab_decisions_logged_total", model="default") == logged["default"]
    assert value(scraped, "mab_decisions_dropped_total", model="default", reason="queue_full") \
        == dropped_counts[("default", "queue_full")]
