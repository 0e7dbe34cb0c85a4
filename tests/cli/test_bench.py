"""mab bench: its defaults in and out of a checkout, and a short run from
a directory outside the checkout (the smoke test of scripts/bench.py, the
same code, covers the rest)."""

import json
import os
import re
import shutil

import pytest

from mab.cli.bench import checkout_root, default_go_peer, default_results_dir
from tests.cli.command import run_mab
from tests.serving import ROOT

needs_wrk = pytest.mark.skipif(
    shutil.which("wrk") is None and os.environ.get("MAB_REQUIRE_WRK") != "1",
    reason="wrk is not installed (CI sets MAB_REQUIRE_WRK=1 and installs it)",
)


def test_defaults_in_a_checkout():
    assert checkout_root() == ROOT
    assert default_go_peer() == os.path.normpath(os.path.join(ROOT, "..", "shared", "peers", "go-peer"))
    assert default_results_dir() == os.path.join(ROOT, "bench-results")
    text = " ".join(run_mab("bench", "--help").stdout.split())
    assert f"here: {default_go_peer()})" in text


def test_no_checkout_no_default(tmp_path):
    """Installed in site-packages, mab has no checkout around it."""
    site = tmp_path / "site-packages"
    module = site / "mab" / "cli" / "bench.py"
    module.parent.mkdir(parents=True)
    module.write_text("")
    (site / "mab" / "gunicorn_conf.py").write_text("")     # installed with the package
    (site / "pyproject.toml").write_text("")                # some other project's, say
    assert checkout_root(str(module)) is None
    assert checkout_root(os.path.join(ROOT, "mab", "cli", "bench.py")) == ROOT


@needs_wrk
def test_runs_from_outside_the_checkout(tmp_path):
    out = tmp_path / "r.json"
    run = run_mab("bench", "--systems", "mab", "--connections", "2", "--duration", "1", "--warmup", "0",
                  "--rounds", "1", "--items", "500", "--ids", "5", "--no-chart", "--out", out,
                  cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "[1/1] round 1, mab, 2 connections ..." in run.stderr     # progress, step by step
    assert "| mab | 2 |" in run.stdout
    result = json.loads(out.read_text())
    (row,) = result["summary"]
    assert row["requests_per_s"] > 0 and row["errors"] == 0 and row["non_2xx"] == 0
    assert not os.path.exists(f"/proc/{result['server_pids']['mab']}")


@needs_wrk
def test_the_decision_log_system_reports_and_removes_its_files(tmp_path):
    out = tmp_path / "r.json"
    run = run_mab("bench", "--systems", "mab-decisionlog", "--connections", "2", "--duration", "1", "--warmup", "0",
                  "--rounds", "1", "--items", "500", "--ids", "5", "--no-chart", "--out", out,
                  cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    (row,) = result["summary"]
    assert row["errors"] == 0 and row["non_2xx"] == 0
    match = re.search(r"mab-decisionlog: ([\d,]+) decisions logged in [\d.,]+ MB, ([\d,]+) bytes per decision; "
                      r"files removed", run.stderr)
    assert match, run.stderr
    # Every request of the step was logged, and the worker's last file
    # closed when it stopped (wrk does not count the requests its 2
    # connections still had in flight when the step ended).
    (step,) = result["steps"]
    assert step["requests"] <= int(match[1].replace(",", "")) <= step["requests"] + 2
    work_dir = result["arguments"]["work_dir"]
    assert not os.path.exists(os.path.join(work_dir, "mab-decisionlog-decisions"))
