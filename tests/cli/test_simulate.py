"""``mab simulate`` as a user runs it: a process of its own."""

from tests.cli.command import run_mab
from tests.serving import free_port


def test_simulate_command(tmp_path):
    out = tmp_path / "sim"
    run_ = run_mab("simulate", "--out", out, "--steps", "400", "--items", "15", "--top-k", "3",
                   "--setting", "ts:1,1", "--setting", "pessimist:1,30", "--truth-draws", "300", timeout=600)
    assert run_.returncode == 0, run_.stderr
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ts: cumulative regret" in run_.stdout and "pessimist: true" in run_.stdout


def test_simulate_command_reports_an_unreachable_server(tmp_path):
    run_ = run_mab("simulate", "--out", tmp_path / "sim", "--url", f"http://127.0.0.1:{free_port()}",
                   "--no-evaluate", "--steps", "10")
    assert run_.returncode == 1
    assert run_.stderr.startswith("mab simulate: ") and "Traceback" not in run_.stderr


def test_simulate_command_usage_errors(tmp_path):
    for args in (["--setting", "bad"], ["--steps", "1"], ["--items", "3", "--top-k", "5"],
                 ["--candidates", "2", "--top-k", "3"], ["--url", "http://127.0.0.1:1"]):
        run_ = run_mab("simulate", "--out", tmp_path / "sim", *args)
        assert run_.returncode == 1, (args, run_.stdout)
        assert run_.stderr.startswith("mab simulate: ") and "Traceback" not in run_.stderr, run_.stderr
