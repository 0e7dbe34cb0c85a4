"""Rollouts and data refreshes under load lose nothing (issue 10 section 2).

Each test is one drill of mab.testing.rollout: gunicorn with 2 workers on
a demo CSV, 16 keep-alive connections of 400-id requests (wrk; for TERM
the accounting client of mab.testing.keepalive_load), and mid-run a HUP
after a change, or a TERM. scripts/bench_rollout.py runs the same drills
on 10 million rows for docs/deploy.md.

Admission control is off (MAB_MAX_QUEUE_MS=0), as in tests/serving.py: on
a busy test machine a worker stalls for 100 ms at times whatever happens,
and its 503s would hide what these tests look for.
"""

import hashlib
import http.client
import os
import shutil
import time

import pytest

from mab.testing.rollout import PROBE_ID, Drill

ROWS = 200_000
CONNECTIONS = 16
ENV = {"MAB_MAX_QUEUE_MS": "0"}

needs_wrk = pytest.mark.skipif(
    shutil.which("wrk") is None and os.environ.get("MAB_REQUIRE_WRK") != "1",
    reason="wrk is not installed (CI sets MAB_REQUIRE_WRK=1 and installs it)",
)


@pytest.fixture
def drill(tmp_path):
    with Drill(tmp_path / "drill", rows=ROWS, connections=CONNECTIONS, env=ENV) as drill:
        drill.prepare()
        drill.start_server()
        yield drill


def scrape(drill):
    """{(name, sorted labels): value} of one GET /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    connection = http.client.HTTPConnection("127.0.0.1", drill.server.port, timeout=30)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def wait_for_metrics(drill, condition, timeout=30):
    """The first scrape that meets `condition` (workers flush every second)."""
    deadline = time.monotonic() + timeout
    while True:
        values = scrape(drill)
        if condition(values):
            return values
        assert time.monotonic() < deadline, f"no scrape met the condition in {timeout}s: {values}"
        time.sleep(0.2)


def snapshots(values):
    """The sha256 labels of mab_snapshot_info for the store default."""
    return sorted(dict(labels)["sha256"] for (name, labels) in values
                  if name == "mab_snapshot_info" and ("store", "default") in labels)


def reloads(values, result):
    return values.get(("mab_reloads_total", (("result", result),)), 0)


def assert_handed_over(result):
    """Nothing lost, and the load moved from the old workers to the new."""
    load = result.load
    assert (load.non_2xx, load.connect, load.read, load.write, load.timeout) == (0, 0, 0, 0, 0), load
    assert result.probe_failures == [] and result.lost == 0
    assert result.outcome_seconds is not None, "the change was served by new workers only"
    assert len(result.workers_after) == 2 and not set(result.workers_after) & set(result.workers_before)
    # The old workers served until the new ones were ready (mab.handover):
    # gunicorn sends them TERM as soon as it has forked the new ones.
    assert result.drained_after_ready
    # Each connection was open on an old worker when it drained, and left
    # after an answer that said Connection: close.
    assert load.closes >= CONNECTIONS
    assert load.requests > 10 * CONNECTIONS


@needs_wrk
def test_a_new_csv_on_hup_is_served_and_nothing_is_lost(drill):
    result = drill.run("hup-data")
    assert_handed_over(result)
    assert result.error_lines == []
    store = result.ready_after["stores"]["default"]
    with open(drill.data, "rb") as f:
        assert store["sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert store["items"] == ROWS + 1 and result.ready_after["reload"]["status"] == "applied"
    # The new counts: the probe row only the new file holds is found.
    status, answer = drill._post({"item_ids": [PROBE_ID], "seed": 1})
    assert status == 200 and answer["missing"] == 0
    # /metrics: the new snapshot only, once the old workers are gone.
    values = wait_for_metrics(drill, lambda values: snapshots(values) == [store["sha256"]])
    assert values[("mab_snapshot_rows", (("store", "default"),))] == ROWS + 1
    assert values[("mab_snapshot_created_timestamp_seconds", (("store", "default"),))] == store["source_mtime"]
    assert (reloads(values, "applied"), reloads(values, "refused")) == (1, 0)
    # Compiled once, by the master, before the new workers started.
    log = drill.server.output()
    assert log.count(f"compiled {drill.data} ({ROWS + 1} rows)") == 1
    assert "'compiled_here': True" not in log


@needs_wrk
def test_a_changed_configuration_on_hup_is_served_and_nothing_is_lost(drill):
    result = drill.run("hup-config")
    assert_handed_over(result)
    assert result.error_lines == []
    assert set(result.ready_after["models"]) == {"default", "fresh"}


@needs_wrk
def test_idle_keep_alive_connections_are_not_closed_under_their_clients(tmp_path):
    # Each connection pauses 300 ms on average between requests, so at any
    # moment most are idle. Closing an idle connection races its client's
    # next request: wrk counts a read error even for one closed while idle.
    with Drill(tmp_path / "drill", rows=ROWS, connections=CONNECTIONS, pause_ms=300, env=ENV) as drill:
        drill.prepare()
        drill.start_server()
        result = drill.run("hup-config", tail=1.0)
    load = result.load
    assert (load.non_2xx, load.connect, load.read, load.write, load.timeout) == (0, 0, 0, 0, 0), load
    assert result.lost == 0 and load.closes >= CONNECTIONS and result.outcome_seconds is not None


@needs_wrk
@pytest.mark.parametrize("scenario, reason", [
    ("hup-bad-data", "line 3, column 'successes': '-3' is not a count"),
    ("hup-missing-column", "has no feature(s) 'failures'"),
])
def test_a_bad_new_file_leaves_the_old_snapshot_serving_and_says_why(drill, scenario, reason):
    before = drill._ready()["stores"]["default"]
    result = drill.run(scenario)
    assert_handed_over(result)
    # Loudly: an ERROR line naming the file and the reason, and /ready.
    assert len(result.error_lines) == 1
    assert "reload refused" in result.error_lines[0] and drill.data in result.error_lines[0]
    assert reason in result.error_lines[0]
    reload = result.ready_after["reload"]
    assert reload["status"] == "refused" and reason in reload["error"] and drill.data in reload["error"]
    # The old snapshot, as before.
    after = result.ready_after["stores"]["default"]
    assert (after["snapshot"], after["sha256"], after["items"]) == (before["snapshot"], before["sha256"], ROWS)
    values = wait_for_metrics(drill, lambda values: reloads(values, "refused") == 1)
    assert snapshots(values) == [before["sha256"]] and reloads(values, "applied") == 0


def test_term_answers_every_request_sent_before_the_listening_socket_closed(drill):
    """What "lose nothing" means for a server that stops (TERM):

    - every request sent on a connection the server accepted is answered
      2xx, the last one on each connection with ``Connection: close``;
    - every connection ends cleanly after that answer (a FIN, never a
      reset, never a close while a request is out or while idle);
    - connections made after the listening socket closed are refused
      (ECONNREFUSED: no request is sent on them); those waiting in its
      queue when the workers stopped accepting are served;
    - the master exits 0 once the workers are done.
    """
    result = drill.run("term")
    tally = result.tally
    assert result.exit_status == 0
    assert (tally.lost, tally.unclean, tally.non_2xx) == (0, 0, 0), tally.events
    assert result.lost == 0
    assert tally.closed_after_close == tally.answers_with_close >= CONNECTIONS
    # The socket did close: later connects were refused, and only after the TERM.
    assert tally.refused > 0
    kinds = [kind for _, kind, _ in tally.events]
    assert set(kinds) == {"mark", "refused"} and kinds.index("refused") > kinds.index("mark")
    assert tally.answered > 10 * CONNECTIONS
