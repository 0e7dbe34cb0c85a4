"""mab.preflight: the gunicorn master loads and checks every embedded store
as a worker will, and pins what it checked for the workers."""

import os
import re
import time

import pytest

from mab import preflight
from mab.config import load_config
from mab.errors import ConfigError, DataError
from mab.preflight import check_embedded_stores
from mab.service import PredictionService
from mab.stores import create_store, embedded


@pytest.fixture(autouse=True)
def unpin(monkeypatch):
    monkeypatch.setattr(preflight, "_checked_config", None)
    monkeypatch.setattr(preflight, "_last_reload", None)
    yield
    embedded.pin({})


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def worker_service(config):
    """What a worker does after the fork: its own stores, loaded and checked."""
    stores = {name: create_store(settings, config.cache_dir) for name, settings in config.stores.items()}
    return PredictionService(config, stores)


def test_a_quoted_header_passes_the_master_and_the_workers(tmp_path, make_config):
    # Issue 9: this header passed the master and then failed in every worker.
    path = write(tmp_path, "items.csv", b'"item_id","successes","failures"\r\n"A","9","1"\r\n')
    config = make_config(MAB_DATA=path)
    checked = check_embedded_stores(config)
    assert embedded.pinned() == {path: checked["default"]}
    service = worker_service(config)
    service.load()
    assert service.stores["default"].compiled_path == checked["default"]
    assert service.stores["default"].fetch(["A"], "", "", ("successes", "failures")).columns[0][0] == 9


def test_features_a_model_needs_are_checked_in_the_master(tmp_path, make_config):
    path = write(tmp_path, "items.csv", b"item_id,wins,losses\nA,9,1\n")
    config = make_config(MAB_DATA=path)
    with pytest.raises(ConfigError, match=r"no feature\(s\) 'successes', 'failures'; it has 'wins', 'losses'"):
        check_embedded_stores(config)
    assert embedded.pinned() == {}
    # The worker would have failed the same way: one code path.
    with pytest.raises(ConfigError, match="no feature"):
        worker_service(config).load()


def test_every_store_and_model_is_checked(tmp_path, make_config):
    good = write(tmp_path, "items.csv", b"item_id,successes,failures\nA,9,1\n")
    per_user = write(tmp_path, "users.csv", b"entity,clicks,skips\nu:A,1,2\n")
    document = {
        "stores": {"default": {"path": good}, "per_user": {"path": per_user}},
        "models": {
            "default": {},
            "per_user": {"store": "per_user", "successes": "clicks", "failures": "views",
                         "entity_id": "{user_id}:{item_id}"},
        },
    }
    with pytest.raises(ConfigError, match=r"store 'per_user' .* no feature\(s\) 'views'"):
        check_embedded_stores(make_config(document))
    document["models"]["per_user"]["failures"] = "skips"
    assert set(check_embedded_stores(make_config(document))) == {"default", "per_user"}
    assert set(embedded.pinned()) == {good, per_user}


def test_a_refused_file_pins_nothing_and_keeps_earlier_pins(tmp_path, make_config):
    path = write(tmp_path, "items.csv", b"item_id,successes,failures\nA,9,1\n")
    config = make_config(MAB_DATA=path)
    before = check_embedded_stores(config)["default"]
    # A reload (HUP) after the file went bad: the check fails, the workers
    # forked afterwards keep the copy checked before.
    with open(path, "wb") as f:
        f.write(b"item_id,successes,failures\rA,9,1\rB,2,8\r")
    os.utime(path, ns=(1, 1))
    with pytest.raises(DataError, match=r"items.csv: line 1: a carriage return"):
        check_embedded_stores(config)
    assert embedded.pinned() == {path: before}
    service = worker_service(config)
    service.load()
    assert service.stores["default"].describe()["items"] == 1


def test_a_store_with_no_rows_is_served_with_a_warning(tmp_path, make_config, caplog):
    path = write(tmp_path, "items.csv", b"item_id,successes,failures\n")
    check_embedded_stores(make_config(MAB_DATA=path))
    assert "has no rows: every item will be scored from its prior" in caplog.text


def test_remote_stores_are_left_to_the_workers(tmp_path, make_config):
    config = make_config({
        "stores": {"default": {"backend": "vertex", "project": "p", "location": "us-central1",
                               "feature_online_store": "s", "feature_view": "v"}},
    })
    assert check_embedded_stores(config) == {}


# -- start and reload: the configuration and the data pinned together ------------------


def write_config(tmp_path, text):
    path = tmp_path / "mab.toml"
    partial = tmp_path / "mab.toml.partial"
    partial.write_text(text)
    os.replace(partial, path)
    return str(path)


def test_start_pins_the_configuration_it_checked(tmp_path):
    data = write(tmp_path, "items.csv", b"item_id,successes,failures\nA,9,1\n")
    environ = {"MAB_CONFIG": write_config(tmp_path, f'cache_dir = "{tmp_path}/cache"\n[stores.default]\n'
                                                     f'path = "{data}"\n[models.default]\nprior_alpha = 2.0\n')}
    checked = preflight.start(lambda: load_config(environ))
    assert preflight.checked_config().models["default"].prior_alpha == 2.0
    assert embedded.pinned() == {data: checked["default"]}
    assert preflight.last_reload() is None      # a start is not a reload


def test_a_reload_that_passes_serves_the_new_configuration_and_data(tmp_path):
    data = write(tmp_path, "items.csv", b"item_id,successes,failures\nA,9,1\n")
    text = f'cache_dir = "{tmp_path}/cache"\n[stores.default]\npath = "{data}"\n'
    environ = {"MAB_CONFIG": write_config(tmp_path, text)}
    before = preflight.start(lambda: load_config(environ))["default"]
    write(tmp_path, "items.csv.new", b"item_id,successes,failures\nA,9,1\nB,1,1\n")
    os.replace(tmp_path / "items.csv.new", data)
    write_config(tmp_path, text + "[models.default]\n[models.fresh]\nprior_beta = 3.0\n")
    checked, error = preflight.reload(lambda: load_config(environ))
    assert error is None and checked["default"] != before
    assert set(preflight.checked_config().models) == {"default", "fresh"}
    assert embedded.pinned() == {data: checked["default"]}
    reload = preflight.last_reload()
    assert reload["status"] == "applied" and abs(reload["at"] - time.time()) < 60


@pytest.mark.parametrize("broken, message", [
    ("data", r"items.csv: line 3, column 'successes': '-3' is not a count"),
    ("column", r"store 'default' \(.*items.csv\) has no feature\(s\) 'failures'"),
    ("config", r"models.default.prior_alpha must be > 0"),
])
def test_a_refused_reload_keeps_what_was_checked_and_says_why(tmp_path, broken, message):
    data = write(tmp_path, "items.csv", b"item_id,successes,failures\nA,9,1\n")
    text = f'cache_dir = "{tmp_path}/cache"\n[stores.default]\npath = "{data}"\n'
    environ = {"MAB_CONFIG": write_config(tmp_path, text)}
    before = preflight.start(lambda: load_config(environ))["default"]
    config = preflight.checked_config()
    if broken == "data":
        write(tmp_path, "items.csv.new", b"item_id,successes,failures\nA,9,1\nB,-3,1\n")
        os.replace(tmp_path / "items.csv.new", data)
    elif broken == "column":
        write(tmp_path, "items.csv.new", b"item_id,successes\nA,9\n")
        os.replace(tmp_path / "items.csv.new", data)
    else:
        write_config(tmp_path, text + "[models.default]\nprior_alpha = -1.0\n")
    checked, error = preflight.reload(lambda: load_config(environ))
    assert checked is None and re.search(message, error)
    # The workers forked now serve what was checked before ...
    assert preflight.checked_config() is config
    assert embedded.pinned() == {data: before}
    # ... and /ready says why (mab.web shows last_reload()).
    reload = preflight.last_reload()
    assert reload["status"] == "refused" and reload["error"] == error
    assert reload["serving"] == {data: before}


def test_a_reload_compiles_in_a_child_at_a_lower_priority(tmp_path, make_config, caplog):
    data = write(tmp_path, "items.csv", b"item_id,successes,failures\nA,9,1\n")
    config = make_config(MAB_DATA=data)
    caplog.set_level("INFO", logger="mab.preflight")
    preflight.compile_niced(config, niceness=5)
    target = embedded.cache_path(data, config.cache_dir)
    assert os.path.exists(os.path.join(target, "meta.json"))
    assert f"into {target} in " in caplog.text and f"at niceness {os.nice(0) + 5}" in caplog.text
    # Found compiled: no second child.
    caplog.clear()
    preflight.compile_niced(config)
    assert "compiled" not in caplog.text


def test_a_refused_file_gives_the_same_message_from_the_child(tmp_path, make_config):
    data = write(tmp_path, "items.csv", b"item_id,successes,failures\nA,9,1\nB,-3,1\n")
    config = make_config(MAB_DATA=data)
    with pytest.raises(DataError) as in_process:
        check_embedded_stores(config)
    with pytest.raises(DataError) as in_child:
        preflight.compile_niced(config)
    assert in_child.value.message == in_process.value.message
    assert "items.csv: line 3, column 'successes': '-3' is not a count" in in_child.value.message
