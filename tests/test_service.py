import numpy as np
import pytest

from mab.errors import InvalidRequest, MalformedRequest, NotReady, TooManyItems, UnknownModel
from mab.service import PredictionRequest, PredictionService, parse_prediction_request, rank
from mab.web import create_stores


def parse(doc, max_items=10):
    return parse_prediction_request(doc, max_items)


def test_parse_minimal_and_full():
    assert parse({"item_ids": ["a"]}) == PredictionRequest(["a"])
    full = {"item_ids": ["a", "a"], "user_id": "u", "top_k": 1, "model": "m", "seed": 2**64 - 1}
    assert parse(full) == PredictionRequest(["a", "a"], "u", 1, "m", 2**64 - 1)
    assert parse({"item_ids": ["a"], "user_id": None, "top_k": None, "model": None, "seed": None}) == PredictionRequest(["a"])


@pytest.mark.parametrize(
    ("doc", "error", "code"),
    [
        ([], MalformedRequest, "wrong_type"),
        ("x", MalformedRequest, "wrong_type"),
        ({"item_ids": "a"}, MalformedRequest, "wrong_type"),
        ({"item_ids": ["a", 1]}, MalformedRequest, "wrong_type"),
        ({"item_ids": [None]}, MalformedRequest, "wrong_type"),
        ({"item_ids": ["a"], "user_id": 5}, MalformedRequest, "wrong_type"),
        ({"item_ids": ["a"], "top_k": "3"}, MalformedRequest, "wrong_type"),
        ({"item_ids": ["a"], "top_k": 2.5}, MalformedRequest, "wrong_type"),
        ({"item_ids": ["a"], "top_k": True}, MalformedRequest, "wrong_type"),
        ({"item_ids": ["a"], "model": 1}, MalformedRequest, "wrong_type"),
        ({"item_ids": ["a"], "seed": 1.5}, MalformedRequest, "wrong_type"),
        ({}, InvalidRequest, "missing_field"),
        ({"item_ids": []}, InvalidRequest, "invalid_value"),
        ({"item_ids": ["a"], "top_k": 0}, InvalidRequest, "invalid_value"),
        ({"item_ids": ["a"], "seed": -1}, InvalidRequest, "invalid_value"),
        ({"item_ids": ["a"], "seed": 2**64}, InvalidRequest, "invalid_value"),
        ({"item_ids": ["a"], "colour": "red"}, InvalidRequest, "unknown_field"),
        ({"item_ids": ["a"] * 11}, TooManyItems, "too_many_items"),
    ],
)
def test_parse_rejects(doc, error, code):
    with pytest.raises(error) as raised:
        parse(doc)
    assert raised.value.code == code


def test_integral_floats_are_integers():
    # JSON Schema counts 3.0 as an integer, so the OpenAPI document does too.
    request = parse({"item_ids": ["a"], "top_k": 3.0, "seed": 7.0})
    assert (request.top_k, request.seed) == (3, 7)
    assert type(request.top_k) is int and type(request.seed) is int


def test_parse_names_the_bad_item():
    with pytest.raises(MalformedRequest, match=r"item_ids\[2\]"):
        parse({"item_ids": ["a", "b", 3, "d"]})


def test_rank_orders_best_first_and_cuts():
    scores = np.array([0.2, 0.9, 0.5, 0.9, 0.1])
    full = rank(scores, None).tolist()
    assert sorted(full[:2]) == [1, 3] and full[2:] == [2, 0, 4]   # the tie in some order
    assert rank(scores, 10).tolist() == full
    assert rank(scores, None).tolist() == full, "the same order on every call"
    assert sorted(rank(scores, 2).tolist()) == [1, 3]
    assert rank(scores, 3).tolist()[2] == 2


def test_rank_matches_a_full_sort_on_random_scores():
    rng = np.random.default_rng(0)
    for k in (1, 5, 399, 400):
        scores = rng.random(400)
        assert rank(scores, k).tolist() == np.argsort(-scores)[:k].tolist()


@pytest.fixture
def service(two_model_config):
    service = PredictionService(two_model_config, create_stores(two_model_config))
    yield service
    service.close()


def test_not_ready_until_loaded(service):
    ready, details = service.readiness()
    assert not ready and details["status"] == "loading"
    with pytest.raises(NotReady):
        service.predict(PredictionRequest(["item-1"]))
    service.load()
    ready, details = service.readiness()
    assert ready and details["stores"]["default"]["items"] == 5


def test_load_failure_is_reported(make_config, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,successes,failures\na,-1,0\n")
    service = PredictionService(make_config(MAB_DATA=str(bad)), create_stores(make_config(MAB_DATA=str(bad))))
    thread = service.load_in_background()
    thread.join(10)
    ready, details = service.readiness()
    assert not ready and details["status"] == "failed" and "line 2" in details["error"]
    with pytest.raises(NotReady) as raised:
        service.predict(PredictionRequest(["a"]))
    assert raised.value.code == "load_failed"


def test_missing_feature_fails_the_load(make_config, items_csv):
    config = make_config({"models": {"default": {"successes": "clicks"}}}, MAB_DATA=str(items_csv))
    service = PredictionService(config, create_stores(config))
    with pytest.raises(Exception, match="clicks"):
        service.load()
    assert not service.ready


def test_predict(service):
    service.load()
    prediction = service.predict(PredictionRequest(["item-1", "item-2", "new"], seed=3))
    assert sorted(prediction.item_ids) == ["item-1", "item-2", "new"]
    assert prediction.missing == 1 and not prediction.degraded and prediction.seed == 3
    assert list(prediction.scores) == sorted(prediction.scores, reverse=True)


def test_unknown_model(service):
    service.load()
    with pytest.raises(UnknownModel, match="per_user"):
        service.predict(PredictionRequest(["item-1"], model="nope"))


def test_user_model_needs_user(service):
    service.load()
    with pytest.raises(InvalidRequest) as raised:
        service.predict(PredictionRequest(["item-1"], model="per_user"))
    assert raised.value.code == "user_id_required"
