"""A few seconds of scripts/fuzz.py, so the fuzzer cannot rot."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.serving import ROOT

needs_atheris = pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None and os.environ.get("MAB_REQUIRE_ATHERIS") != "1",
    reason="atheris is not installed (pip install -e '.[fuzz]'; CI sets MAB_REQUIRE_ATHERIS=1)",
)


def fuzz(tmp_path, *args, env=None):
    summary = tmp_path / "summary.json"
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "fuzz.py"), "--work-dir", str(tmp_path),
         "--summary", str(summary), *args],
        capture_output=True, text=True, timeout=300, env=env,
    )
    return run, json.loads(summary.read_text()) if summary.exists() else None


def planted_finding(data):
    """A target for the test below: every input is a finding."""
    raise ValueError("planted finding")


@needs_atheris
def test_the_wire_target_runs_and_reports_its_figures(tmp_path):
    run, summary = fuzz(tmp_path, "--target", "wire", "--seconds", "5")
    assert run.returncode == 0, run.stderr[-3000:]
    assert summary["target"] == "mab.testing.fuzz_wire:fuzz_one_input" and not summary["sanitized"]
    assert summary["executions"] > 100 and summary["executions_per_second"] > 0
    assert summary["cov"] > 0 and summary["ft"] >= summary["cov"]
    assert summary["findings"] == [] and summary["reports"] == []
    # Seeded with generated valid bodies, which the corpus keeps.
    seeds = [p for p in (tmp_path / "corpus").iterdir() if p.name.startswith("seed-")]
    assert len(seeds) >= 3 and all(p.stat().st_size < 4096 for p in seeds)
    assert "no findings" in run.stderr


@needs_atheris
def test_a_module_function_target_and_its_finding(tmp_path):
    # module:function targets plug in without changes to fuzz.py; a finding
    # fails the run and leaves the input in the artifact directory.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    run, summary = fuzz(tmp_path, "--target", "tests.scripts.test_fuzz:planted_finding", "--seconds", "30", env=env)
    assert run.returncode == 1
    assert "planted finding" in run.stderr
    assert summary["findings"] and all(name.startswith("crash-") for name in summary["findings"])
    assert (tmp_path / "artifacts" / summary["findings"][0]).exists()


def test_an_unknown_target_is_refused(tmp_path):
    run, _ = fuzz(tmp_path, "--target", "nothing")
    assert run.returncode != 0 and "unknown target" in run.stderr
