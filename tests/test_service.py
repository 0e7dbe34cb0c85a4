import numpy as np
import pytest
from scipy import stats

from mab.errors import InvalidRequest, MalformedRequest, NotReady, TooManyItems, UnknownModel
from mab import sampling
from mab.config import MAX_PRIOR
from mab.service import PredictionRequest, PredictionService, parse_prediction_request
from mab.web import create_stores
from tests.beta_checks import SIGNIFICANCE


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


# -- ranking: ties through the whole service (tests/test_ranking.py has rank's own)


@pytest.fixture
def tie_service(make_config, tmp_path):
    """A service whose store holds two items with 1e17 successes and 0
    failures (both score exactly 1.0), and whose model `vague` has priors
    of 1e-3 (most scores of unknown items are exactly 0 or 1)."""
    path = tmp_path / "huge.csv"
    path.write_text("item_id,successes,failures\nfirst,1e17,0\nsecond,1e17,0\nlargest,1.7976931348623157e308,0\n")
    config = make_config(
        {
            "stores": {"default": {"path": str(path)}},
            "models": {
                "default": {},
                "vague": {"prior_alpha": 1e-3, "prior_beta": 1e-3},
                "largest_prior": {"prior_alpha": MAX_PRIOR, "prior_beta": MAX_PRIOR},
            },
        }
    )
    service = PredictionService(config, create_stores(config))
    service.load()
    yield service
    service.close()


def test_equal_huge_counts_share_first_place_fairly(tie_service):
    # The case: the first item in the request used to win every time.
    n = 4000
    wins = 0
    for seed in range(n):
        prediction = tie_service.predict(PredictionRequest(["first", "second"], top_k=1, seed=seed))
        assert prediction.scores.tolist() == [1.0]
        wins += prediction.item_ids == ["first"]
    assert stats.binomtest(wins, n, 0.5).pvalue > SIGNIFICANCE


def test_tiny_priors_give_every_position_a_fair_first_place(tie_service):
    # Beta(1e-3, 1e-3) is exactly 1.0 for about 48% of draws: first place
    # among 10 unknown items must be uniform over the request's positions.
    ids = [f"new-{i}" for i in range(10)]
    first = [0] * 10
    for seed in range(10_000):
        prediction = tie_service.predict(PredictionRequest(ids, model="vague", top_k=1, seed=seed))
        first[ids.index(prediction.item_ids[0])] += 1
    assert stats.chisquare(first).pvalue > SIGNIFICANCE


def test_tie_order_reproduces_under_the_seed_for_any_thread_count(tie_service):
    # More than two sampler chunks, so two threads really split the work.
    ids = [f"new-{i}" for i in range(3 * sampling.CHUNK_SIZE + 17)]
    answers = {}
    for threads in (1, 2, 1):
        tie_service.sampler_threads = threads
        prediction = tie_service.predict(PredictionRequest(ids, model="vague", seed=2**64 - 1))
        top = tie_service.predict(PredictionRequest(ids, model="vague", top_k=100, seed=2**64 - 1))
        assert top.item_ids == prediction.item_ids[:100]
        answers.setdefault(threads, []).append((prediction.item_ids, prediction.scores.tolist()))
    assert np.count_nonzero(prediction.scores == 1.0) > 1000, "the test needs many ties"
    assert answers[1][0] == answers[1][1] == answers[2][0]
    other = tie_service.predict(PredictionRequest(ids, model="vague", seed=2**64 - 2))
    assert other.item_ids != prediction.item_ids


def test_largest_count_with_largest_prior_is_served(tie_service):
    # MAX_PRIOR keeps prior + count finite for any count a store accepts.
    prediction = tie_service.predict(PredictionRequest(["largest", "first", "new"], model="largest_prior", seed=1))
    assert np.isfinite(prediction.scores).all() and ((prediction.scores >= 0) & (prediction.scores <= 1)).all()
