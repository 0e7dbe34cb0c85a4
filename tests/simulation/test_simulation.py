"""A small simulation: Thompson sampling's regret grows sublinearly, and the
true value of each candidate setting lies inside the evaluator's interval.

Two versions of the same checks:

* ``test_in_process_simulation``: against ``FakeService``, an in-process
  stand-in for /predict, /feedback and the decision log (the service's own
  sampler and ranking, the contract's records). Fixed seeds. Runs now.
* ``test_real_service_simulation`` (and tests/cli/test_simulate.py's
  ``test_simulate_command``): the same against the real service (gunicorn,
  HTTP, /predict and /feedback, its decision log).

The sublinear-regret criterion: the regret summed over the second half of
the run is below 0.6 of the first half's (a linear regret makes them equal;
Thompson sampling's logarithmic regret makes the second far smaller), and
the least-squares slope of log cumulative regret against log t, over the
last 90% of the run, is below 0.85 (1 for linear regret).
"""

import os

import pytest

from mab.evaluation.candidate import Candidate
from mab.evaluation.evaluate import evaluate
from mab.simulation import report
from mab.simulation.client import HttpService
from mab.simulation.environment import ClickEnvironment, loglog_slope, regret_halves
from mab.simulation.run import check_estimates, run
from mab.simulation.server import ServedService, Setting
from tests.simulation.fake_service import FakeService

SETTINGS = [Setting("ts", 1.0, 1.0), Setting("pessimist", 1.0, 30.0), Setting("jeffreys", 0.5, 0.5)]
STEPS = 1500


def check_run(result, checks):
    first, second = regret_halves(result.regret["ts"])
    assert second < 0.6 * first, (first, second)
    assert loglog_slope(result.regret["ts"]) < 0.85
    for check in checks:
        for name in ("ips", "snips"):
            assert check[name]["covers"]["per_decision"], (check["setting"], name, check[name], check["true"])
            assert check[name]["covers"]["top1"], (check["setting"], name, check[name], check["true"])
    return {c["setting"]: c for c in checks}


def test_in_process_simulation(tmp_path):
    env = ClickEnvironment(20, 3, seed=1)
    service = FakeService(SETTINGS, env.item_ids, str(tmp_path / "log"), seed=1)
    result = run(service, env, SETTINGS, steps=STEPS, rewards_path=str(tmp_path / "rewards.jsonl"), seed=1)
    service.close()
    assert result.events == STEPS * len(SETTINGS) * 3
    assert len(result.decision_steps) == STEPS * len(SETTINGS)
    # Twelve interval checks (three settings, IPS and SNIPS, per decision
    # and top-1): at 95% each, a correct evaluator would fail about half of
    # all seeds; at 99.9%, about 1%.
    checks = check_estimates(str(tmp_path / "log"), result, env, truth_draws=1000, seed=1, confidence=0.999)
    by_setting = check_run(result, checks)
    # The logging setting evaluated on its own log is its empirical mean.
    ts = by_setting["ts"]
    assert ts["ips"]["per_decision"]["estimate"] == pytest.approx(ts["logged"]["estimate"], rel=1e-12)
    # The other settings are evaluated on every logged decision.
    assert all(c["decisions"] == STEPS for c in checks)
    png = tmp_path / "report.png"
    report.plot(png, result, checks)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = report.summary(result, checks)
    assert set(summary["settings"]) == {"ts", "pessimist", "jeffreys"}
    # A setting the log cannot show: Beta(5, 5) ranks first the items seen
    # least, which Beta(1, 1) with the same counts almost never does. The
    # report says so: a quarter of its first-position mass has no weight.
    flat = evaluate([tmp_path / "log"], [tmp_path / "rewards.jsonl"], Candidate("ts", 5.0, 5.0), seed=1)
    assert flat["result"]["mean_weight"][0].high < 0.9
    assert flat["overlap"]["unestimable_positions"] > 0


def test_in_process_drift_is_harder(tmp_path):
    # A drifting world keeps the best items changing: without decay the
    # regret keeps growing (this is what a half-life setting is for).
    settings = [Setting("ts", 1.0, 1.0)]
    regrets = {}
    for drift in (0.0, 0.15):
        env = ClickEnvironment(20, 3, seed=2, drift=drift)
        service = FakeService(settings, env.item_ids, str(tmp_path / f"log{drift}"), seed=2)
        result = run(service, env, settings, steps=1200, rewards_path=str(tmp_path / f"r{drift}.jsonl"), seed=2)
        first, second = regret_halves(result.regret["ts"])
        regrets[drift] = second / first
    assert regrets[0.15] > regrets[0.0]


def test_real_service_simulation(tmp_path):
    env = ClickEnvironment(20, 3, seed=1)
    settings = SETTINGS[:2]
    with ServedService(tmp_path / "service", settings, env.item_ids, workers=2) as server:
        service = HttpService(server.url)
        assert service.has_feedback()
        result = run(service, env, settings, steps=STEPS, rewards_path=str(tmp_path / "rewards.jsonl"), seed=1)
        service.close()
    files = [f for f in os.listdir(server.log_dir) if f.endswith(".parquet")]
    assert files, f"no decision log in {server.log_dir}:\n{server.output()}"
    # The run's seed fixes every request's draws (and so this run), but not
    # the evaluator's Monte Carlo of the truth: a 99.9% interval keeps a
    # correct evaluator's chance of failing by chance near 0.1% per check.
    checks = check_estimates(server.log_dir, result, env, truth_draws=1000, seed=1, confidence=0.999)
    check_run(result, checks)
    assert all(c["decisions"] == STEPS for c in checks)


def test_real_service_runs_are_reproducible_from_the_seed(tmp_path):
    # Every /predict carries a seed drawn from the run's seed, and feedback
    # is applied before it is acknowledged: two runs against fresh services
    # (two workers each) show the same items at every step.
    env = ClickEnvironment(20, 3, seed=3)
    regrets = []
    for attempt in range(2):
        with ServedService(tmp_path / f"service{attempt}", SETTINGS[:1], env.item_ids, workers=2) as server:
            service = HttpService(server.url)
            result = run(service, env, SETTINGS[:1], steps=200, rewards_path=str(tmp_path / f"r{attempt}.jsonl"),
                         seed=3)
            service.close()
        regrets.append(result.regret["ts"])
    assert regrets[0].tolist() == regrets[1].tolist()
