"""POST /feedback bodies: every bad field refused with the event's index, nothing of the batch applied."""

import orjson
import pytest
from falcon import testing

from mab.feedback.events import read_feedback_request
from mab.web import create_app

SMALL = {"dedup_entries": 1000, "overlay_max_entries": 100, "overlay_key_bytes": 4096}


@pytest.fixture
def feedback_app(make_config, items_csv, user_items_csv):
    config = make_config({
        "stores": {"default": {"path": str(items_csv)}, "per_user": {"path": str(user_items_csv)}},
        "models": {
            "default": {"online_updates": True},
            "per_user": {"store": "per_user", "successes": "clicks", "failures": "skips",
                         "entity_id": "{user_id}:{item_id}", "online_updates": True},
        },
        "feedback": {**SMALL, "max_events": 5},
    })
    app = create_app(config, load="now", metrics=False)
    yield app
    app.service.close()


def post(client, body, **headers):
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.simulate_post("/feedback", body=data, headers={"Content-Type": "application/json", **headers})


def good(i=0, **fields):
    return {"decision_id": f"d{i}", "item_id": "item-3", "reward": 1.0, **fields}


def params(app, model="default", ids=("item-3",), user=None):
    p = app.service.models[model].parameters(list(ids), user)
    return p.alpha.tolist(), p.beta.tolist()


BAD_EVENTS = [
    # (the bad event, status, code, field)
    ("not an object", 400, "wrong_type", None),
    ({"item_id": "item-3", "reward": 1}, 422, "missing_field", "decision_id"),
    ({"decision_id": "d", "reward": 1}, 422, "missing_field", "item_id"),
    ({"decision_id": "d", "item_id": "item-3"}, 422, "missing_field", "reward"),
    ({"decision_id": "d", "item_id": "item-3", "reward": None}, 422, "missing_field", "reward"),
    ({"decision_id": 7, "item_id": "item-3", "reward": 1}, 400, "wrong_type", "decision_id"),
    ({"decision_id": "d", "item_id": ["item-3"], "reward": 1}, 400, "wrong_type", "item_id"),
    ({"decision_id": "d", "item_id": "item-3", "reward": "1"}, 400, "wrong_type", "reward"),
    ({"decision_id": "d", "item_id": "item-3", "reward": True}, 400, "wrong_type", "reward"),
    ({"decision_id": "d", "item_id": "item-3", "reward": 1, "model": 3}, 400, "wrong_type", "model"),
    ({"decision_id": "d", "item_id": "item-3", "reward": 1, "user_id": {}}, 400, "wrong_type", "user_id"),
    ({"decision_id": "d", "item_id": "item-3", "reward": 1.5}, 422, "invalid_value", "reward"),
    ({"decision_id": "d", "item_id": "item-3", "reward": -0.25}, 422, "invalid_value", "reward"),
    ({"decision_id": "d", "item_id": "item-3", "reward": 2}, 422, "invalid_value", "reward"),
    ({"decision_id": "", "item_id": "item-3", "reward": 1}, 422, "invalid_value", "decision_id"),
    ({"decision_id": "d", "item_id": "", "reward": 1}, 422, "invalid_value", "item_id"),
    ({"decision_id": "d" * 129, "item_id": "item-3", "reward": 1}, 422, "invalid_value", "decision_id"),
    ({"decision_id": "d", "item_id": "é" * 513, "reward": 1}, 422, "invalid_value", "item_id"),
    ({"decision_id": "d", "item_id": "i", "reward": 1, "user_id": "u" * 1025}, 422, "invalid_value", "user_id"),
    ({"decision_id": "d", "item_id": "item-3", "reward": 1, "extra": 1}, 422, "unknown_field", None),
    ({"decision_id": "d", "item_id": "item-3", "reward": 1, "model": "nope"}, 404, "unknown_model", "model"),
    ({"decision_id": "d", "item_id": "item-3", "reward": 1, "model": "per_user"}, 422, "user_id_required", "user_id"),
]


@pytest.mark.parametrize(("bad", "status", "code", "field"), BAD_EVENTS)
@pytest.mark.parametrize("index", [0, 2])
def test_a_bad_event_refuses_the_batch_naming_its_index(feedback_app, bad, status, code, field, index):
    client = testing.TestClient(feedback_app)
    before = params(feedback_app)
    events = [good(i) for i in range(3)]
    events[index] = bad
    response = post(client, {"events": events})
    assert response.status_code == status, response.text
    error = response.json["error"]
    assert error["code"] == code
    assert error["index"] == index
    assert error.get("field") == field
    assert error["message"].startswith(f"events[{index}]")
    # Nothing of the batch was taken in: no counts moved, nothing journaled,
    # and the good events are not remembered as seen.
    assert params(feedback_app) == before
    assert feedback_app.service.feedback.describe().get("last_seq", 0) == 0
    accepted = post(client, {"events": [good(i) for i in range(3)]})
    assert accepted.status_code == 200 and accepted.json["accepted"] == 3


def test_a_name_given_twice_in_an_event_is_refused_with_its_index(feedback_app):
    client = testing.TestClient(feedback_app)
    body = (b'{"events": [{"decision_id": "a", "item_id": "item-3", "reward": 1},'
            b' {"decision_id": "b", "item_id": "item-3", "reward": 1, "reward": 0}]}')
    response = post(client, body)
    assert response.status_code == 422
    assert response.json["error"]["code"] == "duplicate_field"
    assert response.json["error"]["index"] == 1
    assert "'reward'" in response.json["error"]["message"]
    twice_at_top = b'{"events": [], "events": [{"decision_id": "a", "item_id": "item-3", "reward": 1}]}'
    response = post(client, twice_at_top)
    assert response.status_code == 422 and response.json["error"]["code"] == "duplicate_field"
    assert "index" not in response.json["error"]


@pytest.mark.parametrize(("body", "status", "code"), [
    (b" ", 400, "malformed_json"),
    (b'{"events": [}', 400, "malformed_json"),
    (b'{"events": [{"decision_id": "a", "item_id": "item-3", "reward": NaN}]}', 400, "malformed_json"),
    (b'{"events": [{"decision_id": "a", "item_id": "item-3", "reward": 1e400}]}', 400, "malformed_json"),
    (b'\xef\xbb\xbf{"events": []}', 400, "malformed_json"),
    (b'{"events": [{"decision_id": "\\ud800", "item_id": "item-3", "reward": 1}]}', 400, "malformed_json"),
    (b"[]", 400, "wrong_type"),
    (b'{"events": {}}', 400, "wrong_type"),
    (b"{}", 422, "missing_field"),
    (b'{"events": []}', 422, "invalid_value"),
    (b'{"events": [], "other": 1}', 422, "unknown_field"),
])
def test_bodies_refused_as_predict_refuses_them(feedback_app, body, status, code):
    response = post(testing.TestClient(feedback_app), body)
    assert response.status_code == status, response.text
    assert response.json["error"]["code"] == code


def test_too_many_events(feedback_app):
    response = post(testing.TestClient(feedback_app), {"events": [good(i) for i in range(6)]})
    assert response.status_code == 413
    assert response.json["error"]["code"] == "too_many_events"


def test_not_json_and_no_length(feedback_app):
    client = testing.TestClient(feedback_app)
    assert client.simulate_post("/feedback", body=b"x", headers={"Content-Type": "text/plain"}).status_code == 415


def test_rewards_add_reward_and_one_minus_reward(feedback_app):
    """The fractional Bernoulli update (Agrawal and Goyal 2012): successes +=
    r, failures += 1 - r, per (user, item) entity of the model's template."""
    client = testing.TestClient(feedback_app)
    assert params(feedback_app, ids=("item-3", "item-1", "brand-new")) == ([1.0, 91.0, 1.0], [1.0, 11.0, 1.0])
    response = post(client, {"events": [
        good(1, reward=1), good(2, reward=0.25), good(3, reward=0),
        {"decision_id": "d4", "item_id": "brand-new", "reward": 0.75},
        {"decision_id": "d5", "item_id": "item-1", "reward": 0.5, "model": "per_user", "user_id": "u-1"},
    ]})
    assert response.status_code == 200, response.text
    assert response.json == {"accepted": 5, "duplicates": [], "first_seq": 1, "last_seq": 5}
    assert response.headers["X-Served-By"]
    assert params(feedback_app, ids=("item-3", "item-1", "brand-new")) == ([2.25, 91.0, 1.75], [2.75, 11.0, 1.25])
    # The per-user model's entity is "u-1:item-1" (counts 0, 1000).
    assert params(feedback_app, "per_user", ("item-1",), "u-1") == ([1.5], [1001.5])
    assert params(feedback_app, "per_user", ("item-1",), "u-2") == ([1001.0], [1.0])


def test_the_parser_reads_what_predict_reads():
    from mab.config import ModelConfig

    events = read_feedback_request(
        b' {"events":[{"decision_id":"d","item_id":"\\u00e9","reward":5e-1,"model":null,"user_id":null}]} ',
        {"default": ModelConfig("default")}, 10,
    )
    assert [(e.decision_id, e.item_id, e.reward, e.model, e.user_id) for e in events] == [("d", "é", 0.5, "default", None)]
