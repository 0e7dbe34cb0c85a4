"""A few seconds each of scripts/bench_overload.py and scripts/bench_slowloris.py,
so the tools cannot rot: they run, report, and leave nothing running."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.serving import ROOT


def run_script(name, tmp_path, *args):
    out = tmp_path / "result.json"
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", name), "--items", "2000", "--work-dir", str(tmp_path / "work"),
         "--json", str(out), *args],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text())
    assert len(result["server_pids"]) >= 2, "the master and a worker"
    for pid in result["server_pids"]:
        assert not os.path.exists(f"/proc/{pid}"), f"process {pid} still running"
    return result, run.stdout


@pytest.mark.skipif(shutil.which("h2load") is None and os.geteuid() != 0,
                    reason="h2load (nghttp2-client) is not installed, and the script cannot install it unless root")
def test_overload_smoke_run(tmp_path):
    result, stdout = run_script("bench_overload.py", tmp_path, "--peak-seconds", "2", "--seconds", "2",
                                "--ids", "50")
    overload = result["overload_run"]
    assert result["peak_per_s"] > 0 and result["offered_per_s"] == pytest.approx(2 * result["peak_per_s"])
    assert overload["requests"] > 0 and overload["goodput_per_s"] > 0
    assert overload["p50_ms"] <= overload["p99_ms"] <= overload["max_ms"]
    assert set(overload["statuses"]) <= {"200", "503"}, overload["statuses"]
    assert result["probe"]["503"] == result["probe"]["503_with_retry_after"]
    assert result["worker_timeouts"] == 0
    assert "goodput" in stdout


def test_slowloris_smoke_run(tmp_path):
    result, stdout = run_script("bench_slowloris.py", tmp_path, "--slow", "50", "--duration", "1", "--ids", "50",
                                "--server-cores", "0", "--client-cores", "0")
    assert result["requests"] > 0 and result["errors"] == 0
    assert result["statuses"] == {"200": result["requests"]}
    assert result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert "slow connections" in stdout
