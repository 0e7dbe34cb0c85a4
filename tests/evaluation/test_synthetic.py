"""Synthetic logs (mab.evaluation.synthetic): the contract's schema, determinism, the click model."""

import numpy as np
import pyarrow.parquet as pq

from mab.evaluation import synthetic
from mab.evaluation.schema import DECISION_SCHEMA
from tests.beta_checks import Z


def test_records_follow_the_contract_and_are_deterministic():
    catalogue = synthetic.make_catalogue(101, seed=1, max_age_seconds=100.0)
    policy = synthetic.Policy(2.0, 3.0, 50.0)
    one = synthetic.make_batch(catalogue, 300, candidates=20, top_k=4, policy=policy, seed=5, first_index=10)
    two = synthetic.make_batch(catalogue, 300, candidates=20, top_k=4, policy=policy, seed=5, first_index=10)
    assert one.decisions.schema == DECISION_SCHEMA
    assert one.decisions.equals(two.decisions) and one.rewards.equals(two.rewards)
    d = one.decisions.to_pydict()
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in d["decision_id"])
    assert all(len(set(ids)) == 20 for ids in d["item_ids"])                 # distinct candidates
    assert all(len(r) == 4 and len(set(r)) == 4 for r in d["ranked"])
    assert all(s == sorted(s, reverse=True) for s in d["scores"])
    # alpha = prior + successes * 2^(-age / half-life)
    row = one.items[0]
    factor = np.exp2(-catalogue.age_seconds[row] / 50.0)
    np.testing.assert_allclose(d["alpha"][0], 2.0 + catalogue.successes[row] * factor)
    np.testing.assert_allclose(d["age_seconds"][0], catalogue.age_seconds[row])


def test_clicks_follow_the_click_model():
    catalogue = synthetic.make_catalogue(50, seed=2, ctr=(5.0, 5.0))
    batch = synthetic.make_batch(catalogue, 20_000, candidates=10, top_k=3, seed=3)
    ranked = np.array(batch.decisions.column("ranked").to_pylist())
    shown = np.take_along_axis(batch.items, ranked, 1)
    p = catalogue.theta[shown] * synthetic.examination(3)
    observed = batch.clicks.sum(axis=0)
    assert np.all(np.abs(observed - p.sum(axis=0)) < Z * np.sqrt((p * (1 - p)).sum(axis=0)))
    assert batch.rewards.num_rows == int(batch.clicks.sum())


def test_files_per_worker(tmp_path):
    catalogue = synthetic.make_catalogue(60, seed=4)
    paths = synthetic.write_logs(tmp_path / "log", catalogue, 1000, candidates=8, top_k=2, files=3, batch_rows=150,
                                 rewards_path=str(tmp_path / "r.parquet"), zeros=True)
    assert [p.rsplit("/", 1)[1] for p in paths] == ["decisions-w00.parquet", "decisions-w01.parquet",
                                                    "decisions-w02.parquet"]
    assert sum(pq.read_metadata(p).num_rows for p in paths) == 1000
    assert pq.read_metadata(tmp_path / "r.parquet").num_rows == 2000          # zeros: every shown item
