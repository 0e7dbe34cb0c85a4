"""The decision log under gunicorn: one file series per worker, files that
appear whole, counts in /metrics from every worker, and the last file
closed into place when the workers stop (the worker_exit hook)."""

import os
import time

import pyarrow.parquet as pq

from mab.decisions import read_parquet, replay
from tests.conftest import ITEMS_CSV
from tests.serving import Server
from tests.test_metrics import samples

N_REQUESTS = 60


def visible_rows(directory):
    names = [n for n in os.listdir(directory) if n.endswith(".parquet") and not n.startswith(".")]
    return sum(pq.ParquetFile(os.path.join(directory, n)).metadata.num_rows for n in names)


def wait_for(condition, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def start_logging_server(tmp_path, decision_log, log_fraction=1.0, **env):
    """A started server on ITEMS_CSV whose default model logs decisions
    (``log_fraction``), with ``decision_log`` the lines of the
    ``[decision_log]`` table and ``env`` more of the server's environment."""
    (tmp_path / "items.csv").write_text(ITEMS_CSV)
    config = tmp_path / "mab.toml"
    config.write_text(
        f'[stores.default]\npath = "items.csv"\n[models.default]\nlog_fraction = {log_fraction}\n'
        f"[decision_log]\n{decision_log}\n"
    )
    server = Server(tmp_path, {"MAB_CONFIG": str(config), "MAB_CACHE_DIR": str(tmp_path / "cache"), **env})
    server.start()
    return server


def test_two_workers_log_every_decision(tmp_path):
    directory = tmp_path / "decisions"
    server = start_logging_server(tmp_path, f'directory = "{directory}"\nrotate_seconds = 1', WEB_CONCURRENCY="2",
                                  PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"))
    try:
        server.wait_ready()
        workers = server.wait_for_workers(2)
        answers = {}
        served_by = set()
        for i in range(N_REQUESTS):
            worker, body = server.predict({"item_ids": ["item-1", "item-2", "item-3", "new"], "top_k": 2})
            served_by.add(int(worker.rsplit("/", 1)[1]))
            answers[body["decision_id"]] = body
        # Files close every second while the server runs; the counts reach
        # /metrics from whichever worker answers the scrape.
        assert wait_for(lambda: visible_rows(directory) == N_REQUESTS), os.listdir(directory)

        def logged_total():
            scraped = samples(server.request("GET", "/metrics")[2].decode())
            return scraped.get(("mab_decisions_logged_total", (("model", "default"),)))

        assert wait_for(lambda: logged_total() == N_REQUESTS)
        status, _, ready = server.request("GET", "/ready")
        assert b'"decision_log"' in ready and b'"state":"running"' in ready
    finally:
        server.stop()
    # Stopped: nothing left open, every decision in a file of the worker that made it.
    names = os.listdir(directory)
    assert names and not [n for n in names if n.startswith(".") or not n.endswith(".parquet")]
    pids = {int(n.split("-")[-2]) for n in names}
    assert pids <= set(workers) and served_by <= pids
    rows = read_parquet(str(directory)).to_pylist()
    assert sorted(row["decision_id"] for row in rows) == sorted(answers)
    for row in rows:
        assert replay(row).matches(row)
        assert [row["item_ids"][i] for i in row["ranked"]] == answers[row["decision_id"]]["item_ids"]


def test_the_last_file_is_closed_when_the_worker_stops(tmp_path):
    # No rotation while it runs: the file is completed by worker_exit.
    directory = tmp_path / "decisions"
    server = start_logging_server(tmp_path, f'directory = "{directory}"\nrotate_seconds = 0\nrotate_records = 0',
                                  WEB_CONCURRENCY="1")
    try:
        server.wait_ready()
        ids = {server.predict({"item_ids": ["item-1", "item-2"]})[1]["decision_id"] for _ in range(10)}
        # Written to the open file within a second (flush), but not visible.
        assert wait_for(lambda: any(n.startswith(".") for n in os.listdir(directory)))
        assert visible_rows(directory) == 0
    finally:
        assert server.stop() == 0
    names = os.listdir(directory)
    assert len(names) == 1 and not names[0].startswith(".")
    assert set(read_parquet(str(directory)).column("decision_id").to_pylist()) == ids


def test_a_directory_the_workers_cannot_write_stops_the_start(tmp_path):
    (tmp_path / "taken").write_text("a file where the directory should be")
    server = start_logging_server(tmp_path, 'directory = "taken/decisions"', log_fraction=0.5)
    assert server.process.wait(60) != 0
    server.log.close()
    assert f"mab: decision_log.directory: {tmp_path}/taken/decisions: Not a directory" in server.output()
    assert "Traceback" not in server.output()


def test_json_lines_go_to_the_workers_stdout(tmp_path):
    from mab.decisions import read_json_lines

    server = start_logging_server(tmp_path, 'sink = "jsonl"', WEB_CONCURRENCY="1")
    try:
        server.wait_ready()
        answers = {}
        for _ in range(10):
            body = server.predict({"item_ids": ["item-1", "item-2", "new"], "top_k": 2})[1]
            answers[body["decision_id"]] = body
    finally:
        assert server.stop() == 0
    # Beside gunicorn's own log lines, in the same stream.
    rows = read_json_lines(server.log_path)
    assert sorted(row["decision_id"] for row in rows) == sorted(answers)
    for row in rows:
        assert replay(row).matches(row)
        assert [row["item_ids"][i] for i in row["ranked"]] == answers[row["decision_id"]]["item_ids"]
