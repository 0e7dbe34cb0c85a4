"""A batch of records as Arrow columns: the schema, and every value as queued."""

import datetime

import numpy as np
import pyarrow as pa
import pytest

from mab import _wire
from mab.decisions.arrow import SCHEMA, to_table, to_tables
from mab.decisions.record import ModelInfo

INFOS = {
    "default": ModelInfo("items.csv-0123456789abcdef", 1.0, 1.0, None, 1.0),
    "decayed": ModelInfo("vertex:projects/p/locations/l/featureOnlineStores/s/featureViews/v", 2.0, 3.0, 3600.0, 0.5),
}


def spans(*ids):
    return _wire.parse_predict_body(b'{"item_ids": [' + b",".join(b'"' + i.encode() + b'"' for i in ids) + b"]}")[0]


def make_record(i, item_ids, *, model="default", user=None, ages=None, ranked=None, failed=0):
    rng = np.random.default_rng(i)
    n = len(item_ids)
    alpha = 1.0 + rng.integers(0, 1000, n).astype(float)
    beta = 1.0 + rng.integers(0, 100_000, n) / 7
    ranked = np.arange(n, dtype=np.int64)[::-1].copy() if ranked is None else np.asarray(ranked, dtype=np.int64)
    scores = rng.random(len(ranked))
    return (f"{i:032x}", 1_700_000_000_000_000 + i, model, user, 2**64 - 1 - i, item_ids, alpha, beta, ages,
            ranked, scores, i % 3, failed)


def records():
    return [
        make_record(0, spans("item-1", "item-2", "new")),
        make_record(1, ["caf\u00e9", "\u65e5\u672c", "a\"b\\c", "item-1"], user="u-1"),   # the general parser's lists
        make_record(2, spans("x"), model="decayed", ages=np.array([12.5]), failed=1),
        make_record(3, spans(*[f"item-{k:06d}" for k in range(400)]), ranked=[7, 3, 399]),
        make_record(4, ["only"], ages=None),
    ]


def test_the_table_has_the_schema_and_every_value():
    batch = records()
    table = to_table(batch, INFOS)
    assert table.schema == SCHEMA
    assert table.num_rows == len(batch)
    rows = table.to_pylist()
    for row, record in zip(rows, batch):
        info = INFOS[record[2]]
        assert row["decision_id"] == record[0]
        assert row["time"] == datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(
            microseconds=record[1])
        assert (row["model"], row["user_id"], row["seed"]) == (record[2], record[3], record[4])
        assert (row["snapshot"], row["prior_alpha"], row["prior_beta"], row["half_life_seconds"],
                row["log_fraction"]) == (info.snapshot, info.prior_alpha, info.prior_beta, info.half_life_seconds,
                                         info.log_fraction)
        assert row["item_ids"] == list(record[5])
        assert row["alpha"] == record[6].tolist() and row["beta"] == record[7].tolist()
        assert row["age_seconds"] == (None if record[8] is None else record[8].tolist())
        assert row["ranked"] == record[9].tolist() and row["scores"] == record[10].tolist()
        assert (row["missing"], row["degraded"], row["degraded_items"]) == (record[11], record[12] > 0, record[12])
    assert table.column("ranked").type.value_type == pa.int32()


def test_ages_absent_from_every_record_make_a_null_column():
    table = to_table([make_record(0, ["a"]), make_record(1, spans("b", "c"))], INFOS)
    assert table.column("age_seconds").null_count == 2


def test_a_nan_age_stays_nan():
    table = to_table([make_record(0, ["a", "b"], ages=np.array([np.nan, 1.0]))], INFOS)
    ages = table.column("age_seconds")[0].values.to_numpy()
    assert np.isnan(ages[0]) and ages[1] == 1.0


def test_ids_over_two_gib_split_the_batch(monkeypatch):
    from mab.decisions import arrow

    monkeypatch.setattr(arrow, "_INT32_MAX", 20)      # 2 GiB of ids, scaled down to 20 bytes
    batch = [make_record(i, spans(f"id-{i:04d}", "xy")) for i in range(6)]   # 9 bytes each
    tables = to_tables(batch, INFOS)
    assert [t.num_rows for t in tables] == [1, 2, 1, 2]
    assert sum((t.column("decision_id").to_pylist() for t in tables), []) == [r[0] for r in batch]
    with pytest.raises(OverflowError):
        to_tables([make_record(0, spans("x" * 30))], INFOS)
