"""A few seconds of scripts/bench_rollout.py, so the tool cannot rot (the
drills themselves are tested in tests/testing/test_rollout.py)."""

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
def test_a_short_run_reports_and_cleans_up(tmp_path):
    out = tmp_path / "rollout.json"
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "bench_rollout.py"), "--rows", "20000", "--scenarios",
         "steady", "--at", "1", "--tail", "0.5", "--connections", "4", "--ids", "10", "--max-queue-ms", "0",
         "--work-dir", str(tmp_path / "work"), "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    (result,) = json.loads(out.read_text())["results"]
    assert result["scenario"] == "steady" and result["lost"] == 0 and result["requests"] > 0
    assert result["load"]["statuses"] == {"200": result["requests"]}
    assert "| steady |" in run.stdout
    # Nothing it started survives it.
    for pid in result["workers_before"] + result["workers_after"]:
        assert not os.path.exists(f"/proc/{pid}"), f"process {pid} still running"
