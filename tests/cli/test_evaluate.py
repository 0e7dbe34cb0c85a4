"""``mab evaluate`` as a user runs it: a process of its own, on synthetic logs."""

import json

import pytest

from mab.evaluation import synthetic
from tests.cli.command import run_mab


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluate")
    catalogue = synthetic.make_catalogue(200, seed=1, impressions_median=400.0)
    synthetic.write_logs(tmp / "log", catalogue, 2000, candidates=15, top_k=3, seed=2, files=2,
                         rewards_path=str(tmp / "rewards.jsonl"))
    (tmp / "candidate.toml").write_text("[models.default]\nprior_alpha = 2.0\nprior_beta = 5.0\n")
    return tmp


def test_help():
    run = run_mab("evaluate", "--help")
    assert run.returncode == 0
    assert "LOG" in run.stdout and "REWARDS" in run.stdout and "--model-config" in run.stdout


def test_table_and_json(logs):
    run = run_mab("evaluate", logs / "log", logs / "rewards.jsonl", "--model-config", logs / "candidate.toml",
                  "--output", logs / "report.json", "--threads", "2")
    assert run.returncode == 0, run.stderr
    assert "candidate: model 'default', prior Beta(2, 5), no decay" in run.stdout
    assert "2,000 decisions of model 'default' in 2 file(s), 3 position(s)" in run.stdout
    assert "evaluated 2,000 of 2,000 decisions (100%)" in run.stderr
    report = json.loads((logs / "report.json").read_text())
    assert report["input"]["decisions"] == 2000
    per_decision = report["result"]["estimates"]["ips"]["first_k"][-1]
    assert per_decision["low"] <= per_decision["estimate"] <= per_decision["high"]
    run = run_mab("evaluate", logs / "log" / "*.parquet", logs / "rewards.jsonl", "--model-config",
                  logs / "candidate.toml", "--json", "--quiet", "--positions", "2")
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert json.loads(run.stdout)["input"]["positions"] == 2


@pytest.mark.parametrize(("args", "message"), [
    (["nowhere", "REWARDS", "--model-config", "CONFIG"], "decision log: nowhere: no such file"),
    (["LOG", "REWARDS", "--model-config", "missing.toml"], "missing.toml"),
    (["LOG", "REWARDS", "--model-config", "CONFIG", "--model", "other"], "no model 'other'"),
    (["LOG", "REWARDS", "--model-config", "CONFIG", "--target-se", "2"], "target relative standard error"),
    (["LOG", "REWARDS", "--model-config", "CONFIG", "--threads", "0"], "--threads must be >= 1"),
    (["LOG", "REWARDS", "--model-config", "CONFIG", "--confidence", "1.5"], "confidence"),
    (["LOG", "LOG", "--model-config", "CONFIG"], "rewards: missing column"),
])
def test_errors_exit_1_with_a_message(logs, args, message):
    names = {"LOG": str(logs / "log"), "REWARDS": str(logs / "rewards.jsonl"), "CONFIG": str(logs / "candidate.toml")}
    run = run_mab("evaluate", *[names.get(a, a) for a in args], "--quiet", cwd=logs)
    assert run.returncode == 1, run.stdout
    assert run.stderr.startswith("mab evaluate: ") and message in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def test_usage_errors_exit_2(logs):
    run = run_mab("evaluate", logs / "log")
    assert run.returncode == 2
