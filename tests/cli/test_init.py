"""The mab command: its entry point, its help, its usage errors."""

import subprocess

import pytest

from mab.cli import build_parser
from tests.cli.command import MAB, environment, run_mab

COMMANDS = ["serve", "data", "config", "predict", "bench", "standin"]
SUBCOMMANDS = [["data", "demo"], ["data", "compile"], ["data", "validate"], ["data", "inspect"], ["config", "check"]]


def test_console_script_is_installed_and_lists_every_command():
    run = subprocess.run([MAB, "--help"], capture_output=True, text=True, env=environment(), timeout=60)
    assert run.returncode == 0, run.stderr
    for command in COMMANDS:
        assert f"\n    {command} " in run.stdout, command


@pytest.mark.parametrize("command", [[c] for c in COMMANDS] + SUBCOMMANDS, ids=" ".join)
def test_every_command_has_help(command):
    run = run_mab(*command, "--help")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"usage: mab {' '.join(command)}"), run.stdout
    assert run.stderr == ""


def test_help_names_each_commands_options():
    """Spot checks that each help shows the command's own options, not a stub."""
    expected = {
        ("predict",): ["--model", "--user", "--top-k", "--seed", "--url", "--json"],
        ("bench",): ["--systems", "--connections", "--go-peer", "only when mab runs from a", "checkout"],
        ("standin",): ["--data", "--port", "--backend", "--latency-ms", "--fail-first", "--hang", "--max-ids"],
        ("config", "check"): ["--config", "--format", "--data"],
        ("data", "inspect"): ["CSV-OR-CACHE", "--cache-dir", "--json"],
        ("serve",): ["mab serve -- --help", "WEB_CONCURRENCY", "HUP"],
    }
    for command, words in expected.items():
        text = " ".join(run_mab(*command, "--help").stdout.split())
        for word in words:
            assert word in text, (command, word)


def test_version():
    run = run_mab("--version")
    assert run.returncode == 0 and run.stdout.startswith("mab 0."), run.stdout


@pytest.mark.parametrize("argv", [[], ["nope"], ["data"], ["data", "validate"], ["predict"], ["config", "check", "--bogus"]])
def test_usage_errors_exit_2_with_a_message(argv):
    run = run_mab(*argv)
    assert run.returncode == 2
    assert "usage: mab" in run.stderr and "error:" in run.stderr


def test_parser_has_a_handler_for_every_command():
    parser = build_parser()
    for argv in (["serve"], ["data", "demo"], ["data", "compile", "x"], ["data", "validate", "x"],
                 ["data", "inspect", "x"], ["config", "check"], ["predict", "a"], ["bench"],
                 ["standin", "--data", "x"]):
        args, _ = parser.parse_known_args(argv)
        assert callable(args.handler), argv
