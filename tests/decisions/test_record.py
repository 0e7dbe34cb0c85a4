"""The decision id, which decisions are logged, a model's part of a record, the JSON form."""

import datetime
import math
import random
import re
from types import SimpleNamespace

import numpy as np
import orjson
import pytest

from mab import _wire
from mab.decisions import record as rec
from mab.decisions.record import ModelInfo, json_line, new_decision_id, rfc3339, selected, selected_raw, snapshot_of


def test_decision_ids_are_128_random_bits_in_hex():
    ids = [new_decision_id() for _ in range(2000)]
    for raw, text in ids[:50]:
        assert len(raw) == 16 and re.fullmatch("[0-9a-f]{32}", text) and bytes.fromhex(text) == raw
    assert len({text for _, text in ids}) == len(ids)


@pytest.mark.parametrize("fraction", [0.0, 1e-12, 0.01, 0.25, 0.5, 0.999, 1.0])
def test_the_raw_rule_is_the_contract_rule(fraction):
    # The service decides from the raw bytes; the contract states the rule
    # on the hex text. Same answer, including at the boundary itself.
    rng = random.Random(7)
    raws = [rng.getrandbits(128).to_bytes(16, "big") for _ in range(5000)]
    threshold = int(fraction * 2**64) if fraction < 1 else 2**64 - 1
    raws += [(threshold + d).to_bytes(8, "big") + bytes(8) for d in (-1, 0, 1) if 0 <= threshold + d < 2**64]
    for raw in raws:
        assert selected_raw(raw, fraction) == selected(raw.hex(), fraction)


def test_no_decision_is_logged_at_zero_and_every_one_below_the_top_at_one():
    assert not selected("0" * 32, 0.0)
    assert selected("0" * 32, 1e-300)
    assert selected("f" * 13 + "000" + "0" * 16, 1.0)
    # (2**64 - 1) / 2**64 rounds to 1.0 in binary64: the rule as written
    # skips the top 2**-53 of ids even at 1.0 (docs/decisions.md says so).
    assert not selected("f" * 32, 1.0)


@pytest.mark.parametrize("fraction", [0.01, 0.25, 0.5])
def test_the_logged_share_is_the_fraction(fraction):
    # Binomial: with n ids the count lies within 5 standard deviations of
    # n * f (a false alarm about once in 3.5 million runs; the seed is fixed).
    rng = random.Random(11)
    n = 40_000
    count = sum(selected(f"{rng.getrandbits(128):032x}", fraction) for _ in range(n))
    sd = math.sqrt(n * fraction * (1 - fraction))
    assert abs(count - n * fraction) <= 5 * sd


def test_rfc3339_is_exact_utc_with_microseconds():
    assert rfc3339(0) == "1970-01-01T00:00:00.000000Z"
    moment = datetime.datetime(2025, 1, 31, 12, 34, 56, 789012, tzinfo=datetime.timezone.utc)
    us = (moment - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)) // datetime.timedelta(microseconds=1)
    assert rfc3339(us) == "2025-01-31T12:34:56.789012Z"
    assert datetime.datetime.fromisoformat(rfc3339(us).replace("Z", "+00:00")) == moment


def test_snapshot_identity():
    assert snapshot_of(SimpleNamespace(compiled_path="/var/cache/mab/items.csv-0123456789abcdef")) \
        == "items.csv-0123456789abcdef"
    view = "projects/p/locations/l/featureOnlineStores/s/featureViews/v"
    assert snapshot_of(SimpleNamespace(resource=view, backend="vertex")) == f"vertex:{view}"
    # A store that names its own snapshot wins (an attribute or a method).
    assert snapshot_of(SimpleNamespace(snapshot="snap-7", compiled_path="/x/y")) == "snap-7"
    assert snapshot_of(SimpleNamespace(snapshot=lambda: "snap-8", resource=view)) == "snap-8"
    assert snapshot_of(SimpleNamespace(backend="memory")) == "memory"


def test_the_embedded_store_snapshot_names_its_compiled_copy(make_config, items_csv):
    from mab.service import PredictionService
    from mab.stores import create_store

    config = make_config({"models": {"default": {"prior_alpha": 2.0, "log_fraction": 0.5}},
                          "decision_log": {"sink": "jsonl"}}, MAB_DATA=str(items_csv))
    stores = {name: create_store(s, config.cache_dir) for name, s in config.stores.items()}
    service = PredictionService(config, stores)
    service.load()
    try:
        info = rec.model_info(service.models["default"])
        assert info == ModelInfo(
            snapshot=info.snapshot, prior_alpha=2.0, prior_beta=1.0, half_life_seconds=None, log_fraction=0.5
        )
        assert re.fullmatch(r"items\.csv-[0-9a-f]{16}", info.snapshot)
    finally:
        service.close()


def _record(item_ids, ages=None):
    return (
        "0123456789abcdef0123456789abcdef", 1_738_326_896_789_012, "default", None, 2**64 - 1, item_ids,
        np.array([1.0, 91.0, 0.1 + 0.2]), np.array([1.0, 11.0, 1e-300]), ages,
        np.array([1, 2], dtype=np.int64), np.array([0.75, 1 / 3]), 1, 0,
    )


INFO = ModelInfo("items.csv-0123456789abcdef", 1.0, 1.0, None, 0.25)


def test_a_json_line_holds_the_columns_exactly():
    spans = _wire.parse_predict_body(b'{"item_ids": ["a", "item-2", "z z"]}')[0]
    for ids in (spans, ["a", "item-2", "z z"]):
        line = json_line(_record(ids, ages=np.array([3.5, np.nan, 0.0])), INFO)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        doc = orjson.loads(line)
        assert list(doc) == [
            "decision_id", "time", "model", "user_id", "seed", "snapshot", "prior_alpha", "prior_beta",
            "half_life_seconds", "log_fraction", "item_ids", "alpha", "beta", "age_seconds", "ranked", "scores",
            "missing", "degraded", "degraded_items",
        ]
        assert doc["item_ids"] == ["a", "item-2", "z z"]
        assert doc["time"] == "2025-01-31T12:34:56.789012Z"
        assert doc["seed"] == 2**64 - 1
        # Shortest round-trip floats: the same doubles come back.
        assert doc["alpha"] == [1.0, 91.0, 0.1 + 0.2] and doc["beta"][2] == 1e-300
        assert doc["scores"] == [0.75, 1 / 3] and doc["ranked"] == [1, 2]
        assert doc["age_seconds"] == [3.5, None, 0.0]       # NaN: JSON has none
        assert (doc["missing"], doc["degraded"], doc["degraded_items"]) == (1, False, 0)
        assert doc["snapshot"] == INFO.snapshot and doc["log_fraction"] == 0.25 and doc["user_id"] is None


def test_the_record_layout_is_named_once():
    assert rec.RECORD_FIELDS[rec.MODEL] == "model" and rec.RECORD_FIELDS[rec.FAILED] == "failed"
    assert len(rec.RECORD_FIELDS) == 13
