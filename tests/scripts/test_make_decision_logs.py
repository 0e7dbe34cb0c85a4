"""scripts/make_decision_logs.py: synthetic logs that `mab evaluate` reads."""

import os
import subprocess
import sys

import pyarrow.parquet as pq

from mab.evaluation.schema import DECISION_SCHEMA
from tests.serving import ROOT

SCRIPT = os.path.join(ROOT, "scripts", "make_decision_logs.py")


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_writes_logs_and_rewards(tmp_path):
    out = run("--out", tmp_path / "log", "--decisions", 3000, "--candidates", 30, "--top-k", 5, "--items", 500,
              "--files", 2, "--rewards", tmp_path / "r.jsonl", "--half-life", 600, "--batch-rows", 1000)
    assert out.returncode == 0, out.stderr
    assert "2 file(s)" in out.stdout and "bytes per decision" in out.stdout
    files = sorted((tmp_path / "log").iterdir())
    assert len(files) == 2
    assert pq.read_schema(files[0]).equals(DECISION_SCHEMA, check_metadata=False)
    assert sum(pq.read_metadata(f).num_rows for f in files) == 3000
    first = pq.read_table(files[0]).slice(0, 1).to_pylist()[0]
    assert first["half_life_seconds"] == 600.0 and len(first["age_seconds"]) == 30
    assert (tmp_path / "r.jsonl").read_text().count("\n") > 0


def test_refuses_bad_arguments(tmp_path):
    for args in (["--top-k", 50, "--candidates", 10], ["--prior", "1"], ["--decisions", 0]):
        out = run("--out", tmp_path / "log", *args)
        assert out.returncode == 2 and "error" in out.stderr
