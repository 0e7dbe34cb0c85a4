"""mab standin: the Vertex stand-in, from the mab command."""

import sys

from tests.cli.command import run_mab
from tests.conftest import ITEMS_CSV
from tests.vertex import StandInProcess


def test_prints_its_settings_serves_and_stops_on_sigterm(tmp_path):
    data = tmp_path / "items.csv"
    data.write_text(ITEMS_CSV)
    process = StandInProcess(tmp_path, data)
    process.command = [sys.executable, "-m", "mab", "standin", "--data", str(data), "--backend", "vertex"]
    process.start()
    try:
        settings = process.settings
        assert settings["backend"] == "vertex" and settings["plaintext"] is True
        assert settings["api_endpoint"].startswith("127.0.0.1:")
        assert f"serving 5 entities from {data}" in process.printed
        # The settings it printed make a valid configuration for mab.
        config = tmp_path / "standin.toml"
        config.write_text(process.printed)
        check = run_mab("config", "check", "--config", config)
        assert check.returncode == 0, check.stderr
    finally:
        returncode = process.stop()
    assert returncode == 0, process.output()


def test_a_missing_file_is_a_usage_error(tmp_path):
    run = run_mab("standin", "--data", tmp_path / "absent.csv")
    assert run.returncode == 2 and "cannot read" in run.stderr
