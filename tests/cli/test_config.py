"""mab config check: the configuration as the service reads it, printed whole."""

import dataclasses
import json
import os
import tomllib

import pytest

from mab.cli.config import config_document
from mab.config import load_config
from mab.stores.embedded import cache_path
from tests.cli.command import run_mab
from tests.conftest import ITEMS_CSV, USER_ITEMS_CSV


@pytest.fixture
def config_file(tmp_path):
    (tmp_path / "items.csv").write_text(ITEMS_CSV)
    (tmp_path / "user_items.csv").write_text(USER_ITEMS_CSV)
    path = tmp_path / "mab.toml"
    path.write_text(f"""
max_items = 50
cache_dir = "{tmp_path / 'cache'}"

[stores.default]
path = "items.csv"                    # relative to this file

[stores.per_user]
path = "user_items.csv"

[stores.remote]
backend = "vertex"
project = "p"
location = "us-central1"
feature_online_store = "s"
feature_view = "v"
deadline_ms = 200
cache_ttl_seconds = 30

[models.default]
prior_alpha = 2.5
log_fraction = 0.1

[decision_log]
directory = "decisions"               # relative to this file
rotate_seconds = 30

[models.per_user]
store = "per_user"
successes = "clicks"
failures = "skips"
entity_id = "{{user_id}}:{{item_id}}"

[models.remote]
store = "remote"
on_store_error = "prior"
""")
    return path


def test_prints_toml_that_reads_back_to_the_same_configuration(tmp_path, config_file):
    run = run_mab("config", "check", "--config", config_file, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"# The effective configuration: the file {config_file}.\n")
    assert "configuration valid" in run.stderr
    printed = tomllib.loads(run.stdout)
    # Every default is filled in.
    assert printed["stores"]["remote"]["attempt_timeout_ms"] == 100.0
    assert printed["stores"]["remote"]["cache_refresh_after_seconds"] == 15.0
    assert printed["stores"]["default"] == {"backend": "embedded", "path": str(tmp_path / "items.csv")}
    assert printed["models"]["per_user"]["entity_id"] == "{user_id}:{item_id}"
    assert "api_endpoint" not in printed["stores"]["remote"]       # unset: TOML has no null
    assert printed["models"]["default"]["log_fraction"] == 0.1 and printed["models"]["per_user"]["log_fraction"] == 0
    assert printed["decision_log"] == {"sink": "parquet", "directory": str(tmp_path / "decisions"),
                                       "rotate_records": 100_000, "rotate_seconds": 30.0, "queue_records": 2048}
    # Read back, from elsewhere, it is the same configuration.
    again = tmp_path / "elsewhere" / "again.toml"
    again.parent.mkdir()
    again.write_text(run.stdout)
    original = load_config({"MAB_CONFIG": str(config_file)})
    reread = load_config({"MAB_CONFIG": str(again)})
    assert dataclasses.replace(reread, source=original.source) == original


def test_json(tmp_path, config_file):
    run = run_mab("config", "check", "--config", config_file, "--format", "json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == config_document(load_config({"MAB_CONFIG": str(config_file)}))


def test_the_environment_overrides_the_file_as_in_the_service(tmp_path, config_file):
    run = run_mab("config", "check", env={"MAB_CONFIG": str(config_file), "MAB_MAX_ITEMS": "7",
                                          "MAB_CACHE_DIR": str(tmp_path / "c2")})
    assert run.returncode == 0, run.stderr
    assert "with MAB_CACHE_DIR, MAB_MAX_ITEMS from the environment" in run.stdout.splitlines()[0]
    printed = tomllib.loads(run.stdout)
    assert printed["max_items"] == 7 and printed["cache_dir"] == str(tmp_path / "c2")


def test_without_a_file_the_environment_alone(tmp_path):
    (tmp_path / "items.csv").write_text(ITEMS_CSV)
    run = run_mab("config", "check", cwd=tmp_path, env={"MAB_DATA": "items.csv"})
    assert run.returncode == 0, run.stderr
    assert "no file (MAB_CONFIG unset), with MAB_DATA from the environment" in run.stdout
    assert tomllib.loads(run.stdout)["stores"]["default"]["path"] == str(tmp_path / "items.csv")


STORE = '[stores.default]\npath = "items.csv"\n'


@pytest.mark.parametrize("text, message", [
    (STORE + "[models.default]\nprior_alpha = 0\n", "models.default.prior_alpha must be > 0"),
    (STORE + '[models.default]\nstore = "nope"\n', "models.default.store: no store named 'nope'"),
    (STORE + '[models.default]\nentity_id = "{user_id}"\n', "must contain {item_id} exactly once"),
    ("bogus = 1\n" + STORE, "top level: unknown setting(s) bogus"),
    ('[stores.default]\nbackend = "vertex"\nproject = "p"\n', "stores.default.location"),
    ("not toml [", "not valid TOML"),
])
def test_a_bad_configuration_exits_1_naming_the_key(tmp_path, text, message):
    (tmp_path / "items.csv").write_text(ITEMS_CSV)
    path = tmp_path / "bad.toml"
    path.write_text(text)
    run = run_mab("config", "check", "--config", path)
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.startswith(f"mab: invalid configuration ({path}): ") or "not valid TOML" in run.stderr
    assert message in run.stderr, run.stderr


def test_a_missing_file(tmp_path):
    run = run_mab("config", "check", "--config", tmp_path / "absent.toml")
    assert run.returncode == 1 and "absent.toml: No such file or directory" in run.stderr


def test_data_checks_each_embedded_store_and_its_models(tmp_path, config_file):
    run = run_mab("config", "check", "--config", config_file, "--data")
    assert run.returncode == 0, run.stderr
    for name, csv in (("default", "items.csv"), ("per_user", "user_items.csv")):
        copy = cache_path(str(tmp_path / csv), str(tmp_path / "cache"))
        assert f"store {name!r}: checked against its models, compiled into {copy}" in run.stderr
        assert os.path.exists(os.path.join(copy, "meta.json"))
    assert "configuration valid, data checked" in run.stderr
    # A model reading a feature the file lacks: the message a worker would give.
    config_file.write_text(config_file.read_text().replace('successes = "clicks"', 'successes = "likes"'))
    run = run_mab("config", "check", "--config", config_file, "--data")
    assert run.returncode == 1 and "has no feature(s) 'likes'" in run.stderr and run.stdout == ""
    # Without --data the configuration itself is valid.
    assert run_mab("config", "check", "--config", config_file).returncode == 0


def test_data_names_the_bad_line(tmp_path):
    (tmp_path / "items.csv").write_text("item_id,successes,failures\na,1,2\nb,x,3\n")
    run = run_mab("config", "check", "--data", cwd=tmp_path,
                  env={"MAB_DATA": "items.csv", "MAB_CACHE_DIR": str(tmp_path / "cache")})
    assert run.returncode == 1 and "line 3, column 'successes'" in run.stderr
