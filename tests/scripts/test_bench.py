"""A few seconds of scripts/bench.py, so the tool cannot rot."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.serving import ROOT

needs_wrk = pytest.mark.skipif(
    shutil.which("wrk") is None and os.environ.get("MAB_REQUIRE_WRK") != "1",
    reason="wrk is not installed (CI sets MAB_REQUIRE_WRK=1 and installs it)",
)


@needs_wrk
def test_smoke_run_measures_and_cleans_up(tmp_path):
    out = tmp_path / "result.json"
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "--systems", "mab,mab-gthread",
         "--connections", "2,4", "--duration", "1", "--warmup", "0", "--rounds", "1",
         "--items", "2000", "--ids", "10", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    rows = result["summary"]
    assert {(r["system"], r["connections"]) for r in rows} == {
        ("mab", 2), ("mab", 4), ("mab-gthread", 2), ("mab-gthread", 4)}
    for row in rows:
        assert row["requests_per_s"] > 0 and row["errors"] == 0 and row["non_2xx"] == 0
        assert row["predictions_per_s"] == pytest.approx(10 * row["requests_per_s"])
        assert 0 < row["cpu_us_per_request"] and 0 < row["cpu_utilisation"] <= 1.5
        assert row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert (tmp_path / "result.png").stat().st_size > 0
    assert "| mab | 2 |" in run.stdout
    # Nothing it started survives it.
    started = set(result["server_pids"].values())
    for step in result["steps"]:
        started.update(int(pid) for pid in step["cpu_us_per_request_by_worker"])
    assert len(started) >= 4
    for pid in started:
        assert not os.path.exists(f"/proc/{pid}"), f"process {pid} still running"


def test_zipf_bodies_follow_the_law(tmp_path):
    """The most and second most drawn ids come as often as ranks 1 and 2 of
    Zipf(1.1) predict, within 5 binomial standard deviations."""
    import collections
    import importlib.util
    import math

    spec = importlib.util.spec_from_file_location("bench", os.path.join(ROOT, "scripts", "bench.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ids = [f"item-{i}" for i in range(1000)]
    path = tmp_path / "bodies.jsonl"
    bench.write_bodies(path, ids, n_ids=50, count=200, seed=1, zipf=1.1)
    counts = collections.Counter(i for line in path.read_text().splitlines() for i in json.loads(line)["item_ids"])
    n = sum(counts.values())
    assert n == 200 * 50
    weights = bench.zipf_weights(len(ids), 1.1)
    for rank, (_, count) in enumerate(counts.most_common(2)):
        p = weights[rank] / sum(weights)
        assert abs(count - n * p) < 5 * math.sqrt(n * p * (1 - p)), (rank, count, n * p)
    # Uniform draws stay distinct within a body.
    bench.write_bodies(path, ids, n_ids=50, count=3, seed=1)
    assert all(len(set(json.loads(line)["item_ids"])) == 50 for line in path.read_text().splitlines())
