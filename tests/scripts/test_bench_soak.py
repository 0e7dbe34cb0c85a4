"""A few seconds of scripts/bench_soak.py, so the tool cannot rot."""

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
def test_short_soak_samples_memory_and_files(tmp_path):
    out = tmp_path / "soak.json"
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "bench_soak.py"), "--minutes", "0.25", "--warmup", "4",
         "--every", "2", "--peak", "200", "--items", "2000", "--ids", "10", "--connections", "4",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300,
        # A test of memory and open files, not of admission control (its own
        # tests are in tests/http): on a busy machine a stalled worker would
        # shed requests with 503, which this test counts as failures.
        env=dict(os.environ, MAB_MAX_QUEUE_MS="0"),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text())
    assert result["load"]["requests"] > 0 and result["load"]["non_2xx"] == 0
    assert len(result["samples"]) >= 5
    assert result["rss_after_warmup_mib"] > 0 and 0 <= result["rss_max_deviation"] < 1
    assert result["fds"] and all(n > 0 for n in result["fds"])
    assert "largest deviation" in run.stdout
