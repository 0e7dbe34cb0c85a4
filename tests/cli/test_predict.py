"""mab predict against a real gunicorn, started here and stopped by PID."""

import json
import re

import orjson
import pytest

from tests.cli.command import run_mab
from tests.conftest import ITEMS_CSV, USER_ITEMS_CSV
from tests.serving import Server, free_port


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("predict")
    (tmp_path / "items.csv").write_text(ITEMS_CSV)
    (tmp_path / "user_items.csv").write_text(USER_ITEMS_CSV)
    config = tmp_path / "mab.toml"
    config.write_text("""
[stores.default]
path = "items.csv"
[stores.per_user]
path = "user_items.csv"
[models.default]
[models.per_user]
store = "per_user"
successes = "clicks"
failures = "skips"
entity_id = "{user_id}:{item_id}"
""")
    server = Server(tmp_path, {"MAB_CONFIG": str(config), "MAB_CACHE_DIR": str(tmp_path / "cache"),
                               "WEB_CONCURRENCY": "1"})
    server.start()
    try:
        server.wait_ready()
        server.url = f"http://127.0.0.1:{server.port}"
        yield server
    finally:
        server.stop()


def predict(server, *args, **kwargs):
    return run_mab("predict", "--url", server.url, *args, **kwargs)


def test_a_ranked_table_the_same_as_the_servers_answer(server):
    ids = ["item-1", "item-2", "item-3", "not-there"]
    run = predict(server, *ids, "--seed", "5")
    assert run.returncode == 0, run.stderr
    # The same request straight to the server: a seeded answer is replayable.
    status, _, body = server.request("POST", "/predict", orjson.dumps({"item_ids": ids, "seed": 5}),
                                     {"Content-Type": "application/json"})
    assert status == 200
    answer = orjson.loads(body)
    lines = run.stdout.splitlines()
    assert lines[0].startswith("model 'default', seed 5, 1 missing (scored from the prior), served by ")
    assert re.search(r", decision [0-9a-f]{32}$", lines[0])
    assert lines[1].split() == ["rank", "item", "score"]
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["1", "2", "3", "4"]
    assert [r[1] for r in rows] == answer["item_ids"]
    assert [float(r[2]) for r in rows] == pytest.approx(answer["scores"], rel=1e-5)


def test_json_prints_the_answer_as_it_came(server):
    run = predict(server, "item-1", "item-4", "--seed", "9", "--top-k", "1", "--json")
    assert run.returncode == 0, run.stderr
    status, _, body = server.request("POST", "/predict",
                                     orjson.dumps({"item_ids": ["item-1", "item-4"], "top_k": 1, "seed": 9}),
                                     {"Content-Type": "application/json"})
    # Byte for byte, but for the decision_id, which is new in every answer.
    def without_id(text):
        return re.sub(r'"decision_id":"[0-9a-f]{32}"', '"decision_id":"..."', text)

    assert without_id(run.stdout) == without_id(body.decode()) + "\n"
    assert len(json.loads(run.stdout)["item_ids"]) == 1


def test_model_user_and_ids_from_stdin(server):
    run = predict(server, "-", "--model", "per_user", "--user", "u-1", "--seed", "1", "--json",
                  input="item-1\n\nitem-2\n")
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    assert answer["model"] == "per_user" and sorted(answer["item_ids"]) == ["item-1", "item-2"]
    assert answer["missing"] == 0


@pytest.mark.parametrize("args, message", [
    (["item-1", "--top-k", "0"], "422 Unprocessable Entity: invalid_value: top_k must be >= 1, got 0"),
    (["item-1", "--model", "nope"], "404 Not Found: unknown_model: no model named 'nope'"),
    (["item-1", "--model", "per_user"], "422 Unprocessable Entity: user_id_required: model 'per_user' needs user_id"),
])
def test_an_error_answer_exits_1_with_its_code_and_message(server, args, message):
    run = predict(server, *args)
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.startswith(f"mab: {server.url}/predict: ") and message in run.stderr, run.stderr


def test_connection_refused(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"       # nothing listens there
    run = run_mab("predict", "item-1", env={"MAB_URL": url})
    assert run.returncode == 1
    assert f"mab: cannot reach {url}: Connection refused" in run.stderr
    assert "mab serve" in run.stderr


def test_a_url_that_is_not_http():
    run = run_mab("predict", "item-1", "--url", "ftp://x")
    assert run.returncode == 2 and "--url must start with http://" in run.stderr
