import os

import numpy as np
import pytest

from mab.config import MAX_PRIOR, EntityTemplate, load_config
from mab.errors import ConfigError
from mab.stores.embedded import Settings as EmbeddedSettings


def test_defaults_from_environment(make_config, items_csv):
    config = make_config(MAB_DATA=str(items_csv))
    assert config.max_items == 10_000
    assert list(config.models) == ["default"]
    model = config.models["default"]
    assert (model.successes, model.failures, model.prior_alpha, model.prior_beta) == ("successes", "failures", 1.0, 1.0)
    assert model.entity_id.text == "{item_id}"
    assert config.stores["default"] == EmbeddedSettings(name="default", path=str(items_csv))


def test_environment_overrides_file(make_config, items_csv, tmp_path):
    config = make_config(
        {"max_items": 5, "stores": {"default": {"path": "elsewhere.csv"}}},
        MAB_DATA=str(items_csv),
        MAB_MAX_ITEMS="7",
        MAB_MAX_BODY_BYTES="2048",
    )
    assert config.max_items == 7
    assert config.max_body_bytes == 2048
    assert config.stores["default"].path == str(items_csv)


def test_toml_file(tmp_path, items_csv, monkeypatch):
    path = tmp_path / "mab.toml"
    path.write_text(
        f"""
max_items = 100
[stores.default]
path = "{items_csv.name}"
[models.default]
prior_alpha = 2
[models.per_user]
entity_id = "{{user_id}}:{{item_id}}"
"""
    )
    config = load_config({"MAB_CONFIG": str(path)})
    assert config.max_items == 100
    # Relative paths are relative to the file.
    assert config.stores["default"].path == str(items_csv)
    assert config.models["default"].prior_alpha == 2.0
    assert config.models["per_user"].entity_id.needs_user
    assert config.source == str(path)


@pytest.mark.parametrize(
    ("document", "environ", "message"),
    [
        ({}, {}, r"stores\.default\.path: the embedded store needs a CSV file \(set MAB_DATA\)"),
        ({"max_items": 0}, {"MAB_DATA": "x.csv"}, "max_items must be an integer >= 1"),
        ({}, {"MAB_DATA": "x.csv", "MAB_MAX_ITEMS": "many"}, "MAB_MAX_ITEMS must be an integer"),
        ({"colour": "blue"}, {"MAB_DATA": "x.csv"}, "top level: unknown setting.*colour"),
        ({"models": {"default": {"prior_alpha": 0}}}, {"MAB_DATA": "x.csv"}, r"models\.default\.prior_alpha must be > 0 and <= 1e\+290"),
        ({"models": {"default": {"prior_alpha": -1e-300}}}, {"MAB_DATA": "x.csv"}, r"prior_alpha must be > 0"),
        ({"models": {"default": {"prior_beta": float("nan")}}}, {"MAB_DATA": "x.csv"}, r"prior_beta must be > 0 and <= 1e\+290, got nan"),
        ({"models": {"default": {"prior_beta": float("inf")}}}, {"MAB_DATA": "x.csv"}, r"prior_beta must be > 0 and <= 1e\+290, got inf"),
        ({"models": {"default": {"prior_beta": 2e290}}}, {"MAB_DATA": "x.csv"}, r"prior_beta must be > 0 and <= 1e\+290"),
        ({"models": {"default": {"prior_alpha": 10**400}}}, {"MAB_DATA": "x.csv"}, r"models\.default\.prior_alpha is too large"),
        ({"models": {"default": {"prior_beta": "1"}}}, {"MAB_DATA": "x.csv"}, r"models\.default\.prior_beta must be float"),
        ({"models": {"default": {"store": "nope"}}}, {"MAB_DATA": "x.csv"}, r"no store named 'nope'"),
        ({"models": {"default": {"priors": 1}}}, {"MAB_DATA": "x.csv"}, r"models\.default: unknown setting.*priors"),
        ({"models": {"default": {"entity_id": "{user_id}"}}}, {"MAB_DATA": "x.csv"}, r"\{item_id\} exactly once"),
        ({"models": {"default": {"on_store_error": "shrug"}}}, {"MAB_DATA": "x.csv"}, "on_store_error"),
        ({"stores": {"default": {"backend": "redis"}}}, {}, "unknown backend 'redis'"),
        ({"stores": {"default": {"path": "x.csv", "mode": "fast"}}}, {}, r"stores\.default: unknown setting.*mode"),
        ({"models": {"default": {"log_fraction": 1.5}}}, {"MAB_DATA": "x.csv"}, r"models\.default\.log_fraction must be in \[0, 1\]"),
        ({"models": {"default": {"log_fraction": -0.1}}}, {"MAB_DATA": "x.csv"}, r"log_fraction must be in \[0, 1\]"),
        ({"models": {"default": {"log_fraction": float("nan")}}}, {"MAB_DATA": "x.csv"}, r"log_fraction must be in"),
        ({"models": {"default": {"log_fraction": "all"}}}, {"MAB_DATA": "x.csv"}, r"log_fraction must be float"),
        ({"models": {"default": {"log_fraction": 0.1}}}, {"MAB_DATA": "x.csv"},
         r"decision_log\.directory: model\(s\) default log decisions .* needs a directory"),
        ({"decision_log": {"sink": "kafka"}}, {"MAB_DATA": "x.csv"}, r"decision_log\.sink must be one of parquet, jsonl"),
        ({"decision_log": {"queue_records": 0}}, {"MAB_DATA": "x.csv"}, r"decision_log\.queue_records must be >= 1"),
        ({"decision_log": {"queue_records": True}}, {"MAB_DATA": "x.csv"}, r"decision_log\.queue_records must be int"),
        ({"decision_log": {"rotate_records": -1}}, {"MAB_DATA": "x.csv"}, r"rotate_records must be >= 0"),
        ({"decision_log": {"rotate_seconds": float("inf")}}, {"MAB_DATA": "x.csv"}, r"rotate_seconds must be >= 0"),
        ({"decision_log": {"compression": "zip"}}, {"MAB_DATA": "x.csv"}, r"decision_log\.compression must be one of"),
        ({"decision_log": {"dir": "x"}}, {"MAB_DATA": "x.csv"}, r"decision_log: unknown setting.*dir"),
        ({"decision_log": "on"}, {"MAB_DATA": "x.csv"}, r"decision_log must be a table"),
        ({"models": {"default": {"half_life_seconds": 0}}}, {"MAB_DATA": "x.csv"}, r"half_life_seconds must be > 0 and finite"),
        ({"models": {"default": {"half_life_seconds": float("inf")}}}, {"MAB_DATA": "x.csv"}, r"half_life_seconds must be > 0"),
        ({"models": {"default": {"online_updates": 1}}}, {"MAB_DATA": "x.csv"}, r"online_updates must be bool"),
        ({"stores": {"default": {"backend": "vertex", "project": "p", "location": "l", "feature_online_store": "s",
                                 "feature_view": "v"}},
          "models": {"default": {"online_updates": True}}}, {}, r"models\.default\.online_updates: only a model on an embedded"),
        ({"feedback": {"fsync": "sometimes"}}, {"MAB_DATA": "x.csv"}, r"feedback\.fsync must be one of 'batch', 'interval', 'never'"),
        ({"feedback": {"dedup_entries": 0}}, {"MAB_DATA": "x.csv"}, r"feedback\.dedup_entries must be an integer >= 1"),
        ({"feedback": {"dedup_seconds": -1}}, {"MAB_DATA": "x.csv"}, r"feedback\.dedup_seconds must be >= 0"),
        ({"feedback": {"max_events": True}}, {"MAB_DATA": "x.csv"}, r"feedback\.max_events must be an integer >= 1"),
        ({"feedback": {"overlay_max_entries": 2**31}}, {"MAB_DATA": "x.csv"}, r"overlay_max_entries must be < 2\*\*31"),
        ({"feedback": {"journal": 5}}, {"MAB_DATA": "x.csv"}, r"feedback\.journal must be str"),
        ({"feedback": {"sync": "never"}}, {"MAB_DATA": "x.csv"}, r"feedback: unknown setting.*sync"),
    ],
)
def test_invalid_configurations(make_config, document, environ, message):
    with pytest.raises(ConfigError, match=message):
        make_config(document, **environ)


def test_decision_log_settings(tmp_path, items_csv):
    path = tmp_path / "mab.toml"
    path.write_text(
        f"""
[stores.default]
path = "{items_csv.name}"
[models.default]
log_fraction = 0.05
[models.quiet]
[decision_log]
directory = "decisions"
rotate_records = 5000
rotate_seconds = 60
queue_records = 100
compression = "lz4"
"""
    )
    config = load_config({"MAB_CONFIG": str(path)})
    assert config.models["default"].log_fraction == 0.05 and config.models["quiet"].log_fraction == 0.0
    assert config.logs_decisions
    settings = config.decision_log
    # A relative directory is relative to the file, like a store's path.
    assert settings.directory == str(tmp_path / "decisions")
    assert (settings.sink, settings.rotate_records, settings.rotate_seconds, settings.queue_records,
            settings.compression) == ("parquet", 5000, 60.0, 100, "lz4")


def test_decision_logging_is_off_by_default(make_config, items_csv):
    config = make_config(MAB_DATA=str(items_csv))
    assert config.models["default"].log_fraction == 0.0 and not config.logs_decisions
    assert config.decision_log.sink == "parquet" and config.decision_log.directory is None
    # JSON Lines needs no directory.
    assert make_config({"models": {"default": {"log_fraction": 1}}, "decision_log": {"sink": "jsonl"}},
                       MAB_DATA=str(items_csv)).logs_decisions


def test_feedback_settings(make_config, items_csv, tmp_path):
    config = make_config(MAB_DATA=str(items_csv))
    feedback = config.feedback
    assert feedback.journal == os.path.join(config.cache_dir, "feedback-journal")
    assert feedback.state_dir == os.path.join(config.cache_dir, "feedback-state")
    assert (feedback.fsync, feedback.dedup_entries, feedback.dedup_seconds, feedback.max_events) == ("batch", 200_000, 3600.0, 1000)
    model = config.models["default"]
    assert (model.online_updates, model.half_life_seconds) == (False, None)
    path = tmp_path / "mab.toml"
    path.write_text(f"""
[stores.default]
path = "{items_csv.name}"
[models.default]
online_updates = true
half_life_seconds = 86400
[feedback]
journal = "rewards"
state_dir = "/dev/shm"
fsync = "interval"
fsync_interval_ms = 20
""")
    config = load_config({"MAB_CONFIG": str(path)})
    assert config.feedback.journal == str(tmp_path / "rewards")      # relative to the file
    assert (config.feedback.state_dir, config.feedback.fsync, config.feedback.fsync_interval_ms) == ("/dev/shm", "interval", 20)
    assert (config.models["default"].online_updates, config.models["default"].half_life_seconds) == (True, 86400.0)
    config = load_config({"MAB_CONFIG": str(path), "MAB_FEEDBACK_JOURNAL": "elsewhere"})
    assert config.feedback.journal == os.path.abspath("elsewhere")


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="No such file"):
        load_config({"MAB_CONFIG": str(tmp_path / "absent.toml")})
    bad = tmp_path / "bad.toml"
    bad.write_text("max_items = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config({"MAB_CONFIG": str(bad)})


@pytest.mark.parametrize(
    ("text", "user", "parts"),
    [
        ("{item_id}", None, ("", "")),
        ("{user_id}:{item_id}", "u-17", ("u-17:", "")),
        ("item/{item_id}@{user_id}", "u", ("item/", "@u")),
        ("{{{item_id}}}", None, ("{", "}")),
    ],
)
def test_entity_templates(text, user, parts):
    assert EntityTemplate(text).parts(user) == parts


@pytest.mark.parametrize("text", ["{item}", "{item_id}{item_id}", "{user_id}{user_id}{item_id}", "{item_id:>5}", "{item_id"])
def test_bad_entity_templates(text):
    with pytest.raises(ConfigError):
        EntityTemplate(text)


def test_default_cache_dir_is_per_user(make_config, items_csv):
    config = load_config({"MAB_DATA": str(items_csv)})
    assert config.cache_dir.endswith(f"mab-cache-{os.getuid()}")


@pytest.mark.parametrize("prior", [5e-324, 1e-310, 1e-3, 1.0, MAX_PRIOR])
def test_priors_in_the_supported_range_are_accepted(make_config, prior):
    # The sampler is exact for every finite shape > 0 (tests/test_sampling.py).
    config = make_config({"models": {"default": {"prior_alpha": prior, "prior_beta": prior}}}, MAB_DATA="x.csv")
    assert config.models["default"].prior_alpha == prior == config.models["default"].prior_beta


def test_largest_prior_plus_largest_count_is_finite():
    # Why MAX_PRIOR: any finite count plus any accepted prior stays finite.
    largest_count = np.finfo(np.float64).max
    assert np.isfinite(np.float64(largest_count) + MAX_PRIOR)
    assert np.isfinite(np.add(np.array([largest_count]), MAX_PRIOR)).all()
    # ... and the bound is not far from where that stops holding.
    with np.errstate(over="ignore"):
        assert np.isinf(np.float64(largest_count) + 2.0**970)
