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
