"""Reading decision logs and rewards (mab.evaluation.readers): joins, counts, refusals."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mab.evaluation.readers import DecisionLog, InputError
from mab.evaluation.schema import DECISION_SCHEMA, REWARD_SCHEMA


def record(decision_id, item_ids, ranked, *, model="default", alpha=None, beta=None, ages=None, half_life=None,
           prior=(1.0, 1.0)):
    n = len(item_ids)
    return {
        "decision_id": decision_id, "time": None, "model": model, "user_id": None, "seed": 1, "snapshot": "t",
        "prior_alpha": prior[0], "prior_beta": prior[1], "half_life_seconds": half_life, "log_fraction": 1.0,
        "item_ids": item_ids, "alpha": alpha or [1.0 + i for i in range(n)], "beta": beta or [2.0] * n,
        "age_seconds": ages, "ranked": ranked, "scores": [0.5] * len(ranked), "missing": 0,
        "degraded": False, "degraded_items": 0,
    }


def write_log(path, records):
    pq.write_table(pa.Table.from_pylist(records, schema=DECISION_SCHEMA), path)


def write_jsonl(path, events):
    path.write_text("".join(json.dumps(e) + "\n" for e in events))


D1, D2, D3 = "a" * 32, "b" * 32, "c" * 32


@pytest.fixture
def log_dir(tmp_path):
    d = tmp_path / "log"
    (d / "w1").mkdir(parents=True)
    write_log(d / "w0.parquet", [record(D1, ["x", "y", "z"], [2, 0]), record(D2, ["x", "y"], [1])])
    write_log(d / "w1" / "part.parquet", [record(D3, ["p", "q", "r", "s"], [3, 2, 1],
                                                 ages=[1.0, None, 3.0, 4.0], half_life=60.0)])
    return d


def batches(log):
    out = {}
    for b in log.batches(2):
        for i, d in enumerate(b.decision_ids.to_pylist()):
            out[d] = (b, i)
    return out


def test_rewards_land_on_their_positions(tmp_path, log_dir):
    rewards = tmp_path / "rewards.jsonl"
    write_jsonl(rewards, [
        {"decision_id": D1, "item_id": "z", "reward": 1.0},       # position 1
        {"decision_id": D1, "item_id": "x", "reward": 0.25},      # position 2
        {"decision_id": D1, "item_id": "x", "reward": 0.5},       # repeated: the largest counts
        {"decision_id": D1, "item_id": "y", "reward": 1.0},       # not shown
        {"decision_id": D3, "item_id": "q", "reward": 1.0, "model": "default", "extra": [1]},
        {"decision_id": "f" * 32, "item_id": "x", "reward": 1.0},  # unknown decision
    ])
    log = DecisionLog([log_dir], [rewards])
    assert log.positions == 3 and log.decisions == 3
    got = batches(log)
    b, i = got[D1]
    np.testing.assert_array_equal(b.rewards[i], [1.0, 0.5, 0.0])
    np.testing.assert_array_equal(b.ranked[i], [2, 0, -1])
    b, i = got[D3]
    np.testing.assert_array_equal(b.rewards[i], [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(b.ranked[i], [3, 2, 1])
    assert np.all(got[D2][0].rewards[got[D2][1]] == 0.0)
    summary = log.summary()
    assert summary["reward_events"] == 6
    assert summary["reward_events_matched"] == 4
    assert summary["reward_events_other_decisions"] == 1
    assert summary["reward_events_not_shown"] == 1


def test_flat_arrays_ages_and_seeds(tmp_path, log_dir):
    rewards = tmp_path / "r.parquet"
    pq.write_table(pa.Table.from_pylist([], schema=REWARD_SCHEMA), rewards)
    got = batches(DecisionLog([str(log_dir / "**" / "*.parquet")], [rewards]))
    b, i = got[D3]
    start, stop = b.offsets[i], b.offsets[i + 1]
    np.testing.assert_array_equal(b.alpha[start:stop], [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(b.ages[start:stop], [1.0, np.nan, 3.0, 4.0])
    assert b.half_life[i] == 60.0
    b, i = got[D1]
    assert b.ages is None or np.all(np.isnan(b.ages[b.offsets[i]:b.offsets[i + 1]]))
    assert np.isnan(b.half_life[i])
    assert b.seeds[i] == int(D1[:16], 16)


def test_positions_can_be_limited(tmp_path, log_dir):
    rewards = tmp_path / "r.jsonl"
    write_jsonl(rewards, [{"decision_id": D3, "item_id": "q", "reward": 1.0}])
    log = DecisionLog([log_dir], [rewards], positions=2)
    assert log.positions == 2
    b, i = batches(log)[D3]
    np.testing.assert_array_equal(b.ranked[i], [3, 2])
    assert log.summary()["reward_events_not_shown"] == 1


def test_models_are_chosen(tmp_path):
    path = tmp_path / "two.parquet"
    write_log(path, [record(D1, ["x"], [0], model="a"), record(D2, ["x"], [0], model="b")])
    rewards = tmp_path / "r.jsonl"
    write_jsonl(rewards, [])
    with pytest.raises(InputError, match="choose one with --model"):
        DecisionLog([path], [rewards])
    assert DecisionLog([path], [rewards], model="b").decisions == 1
    assert DecisionLog([path], [rewards], prefer="a").model == "a"
    with pytest.raises(InputError, match="no decisions of model 'c'"):
        DecisionLog([path], [rewards], model="c")


@pytest.mark.parametrize(("records", "message"), [
    ([record(D1, ["x", "y"], [0]), record(D1, ["x"], [0])], "appear more than once"),
    ([record(D1, ["x", "y"], [0], alpha=[1.0])], "differ in length"),
    ([record(D1, ["x", "y"], [0], alpha=[1.0], beta=[1.0])], "differ in length"),
    ([record(D1, ["x", "y"], [])], "without a decision_id or a ranking"),
    ([record(D1, ["x", "y"], [2])], "outside its candidates"),
    ([record(D1, ["x", "y"], [1, 1])], "ranks a candidate twice"),
    ([record(D1, ["x", "y"], [0], alpha=[0.0, 1.0])], "not finite and > 0"),
    ([record(D1, ["x", "y"], [0], ages=[1.0])], "age_seconds and item_ids differ"),
])
def test_malformed_logs_are_refused(tmp_path, records, message):
    path = tmp_path / "log.parquet"
    write_log(path, records)
    rewards = tmp_path / "r.jsonl"
    write_jsonl(rewards, [])
    with pytest.raises(InputError, match=message):
        log = DecisionLog([path], [rewards])
        list(log.batches())


def test_missing_columns_are_named(tmp_path):
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"decision_id": [D1], "model": ["default"]}), path)
    rewards = tmp_path / "r.jsonl"
    write_jsonl(rewards, [])
    with pytest.raises(InputError, match="missing column.*alpha"):
        DecisionLog([path], [rewards])
    bad_rewards = tmp_path / "r.parquet"
    pq.write_table(pa.table({"decision_id": [D1], "reward": [1.0]}), bad_rewards)
    write_log(tmp_path / "ok.parquet", [record(D1, ["x"], [0])])
    with pytest.raises(InputError, match="rewards: missing column.*item_id"):
        DecisionLog([tmp_path / "ok.parquet"], [bad_rewards])


@pytest.mark.parametrize("event", [
    {"decision_id": D1, "item_id": "x", "reward": 1.5},
    {"decision_id": D1, "item_id": "x", "reward": -0.1},
    {"decision_id": D1, "item_id": "x"},
    {"decision_id": None, "item_id": "x", "reward": 1.0},
])
def test_invalid_rewards_are_refused(tmp_path, event):
    write_log(tmp_path / "log.parquet", [record(D1, ["x"], [0])])
    rewards = tmp_path / "r.jsonl"
    write_jsonl(rewards, [event])
    with pytest.raises(InputError, match=r"reward in \[0, 1\]"):
        DecisionLog([tmp_path / "log.parquet"], [rewards])


def test_missing_paths_are_named(tmp_path):
    write_log(tmp_path / "log.parquet", [record(D1, ["x"], [0])])
    with pytest.raises(InputError, match="no such file"):
        DecisionLog([tmp_path / "nope"], [tmp_path / "log.parquet"])
    with pytest.raises(InputError, match="nothing matches"):
        DecisionLog([tmp_path / "log.parquet"], [tmp_path / "*.jsonl"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .parquet files"):
        DecisionLog([tmp_path / "empty"], [tmp_path / "log.parquet"])


def test_the_evaluator_reads_the_schema_the_decision_log_writes():
    # One contract: the columns and types the evaluator (and its synthetic
    # logs) expect are the ones mab.decisions writes.
    from mab.decisions.arrow import SCHEMA
    from mab.evaluation.schema import DECISION_SCHEMA

    assert [(f.name, f.type) for f in DECISION_SCHEMA] == [(f.name, f.type) for f in SCHEMA]
