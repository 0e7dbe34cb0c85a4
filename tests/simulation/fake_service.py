"""An in-process stand-in for the service's /predict, /feedback and decision log.

It does what the issue-11 contract says the real service does, with the
service's own sampler and ranking (``mab.sampling.sample_beta`` and
``mab.service.rank``): counts per model and item, online updates from
feedback (reward r adds r to successes and 1 - r to failures), and one
decision record per prediction in the contract's Parquet schema, written
when the service is closed. It lets the simulator's math be tested before
the real /feedback and decision log are merged; the tests marked
``needs_feedback`` run the same checks against the real server.
"""

import os
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mab.evaluation.schema import DECISION_SCHEMA
from mab.sampling import sample_beta
from mab.service import rank


class FakeService:
    def __init__(self, settings, item_ids, log_dir, seed=0):
        self.settings = {s.name: s for s in settings}
        self.index = {item: i for i, item in enumerate(item_ids)}
        self.successes = {s.name: np.zeros(len(item_ids)) for s in settings}
        self.failures = {s.name: np.zeros(len(item_ids)) for s in settings}
        self.log_dir = log_dir
        self.records = []
        self.url = "in-process"
        # Seeds and decision ids from one generator: a run is reproducible.
        self.rng = np.random.default_rng([seed, 99])

    def predict(self, item_ids, top_k, model, user_id=None, seed=None):
        setting = self.settings[model]
        rows = np.array([self.index[i] for i in item_ids])
        alpha = setting.prior_alpha + self.successes[model][rows]
        beta = setting.prior_beta + self.failures[model][rows]
        if seed is None:
            seed = int(self.rng.integers(0, 2**63))
        scores = sample_beta(alpha, beta, seed=seed)
        order = rank(scores, top_k, seed)
        decision_id = self.rng.bytes(16).hex()
        self.records.append({
            "decision_id": decision_id, "time": datetime.now(timezone.utc), "model": model,
            "user_id": user_id, "seed": seed, "snapshot": "fake", "prior_alpha": setting.prior_alpha,
            "prior_beta": setting.prior_beta, "half_life_seconds": None, "log_fraction": 1.0,
            "item_ids": list(item_ids), "alpha": alpha.tolist(), "beta": beta.tolist(), "age_seconds": None,
            "ranked": order.astype(np.int32).tolist(), "scores": scores[order].tolist(), "missing": 0,
            "degraded": False, "degraded_items": 0,
        })
        return {"decision_id": decision_id, "model": model, "item_ids": [item_ids[i] for i in order],
                "scores": scores[order].tolist(), "seed": seed}

    def feedback(self, events):
        for e in events:
            row = self.index[e["item_id"]]
            self.successes[e["model"]][row] += e["reward"]
            self.failures[e["model"]][row] += 1.0 - e["reward"]
        return {"accepted": len(events)}

    def has_feedback(self):
        return True

    def close(self):
        os.makedirs(self.log_dir, exist_ok=True)
        table = pa.Table.from_pylist(self.records, schema=DECISION_SCHEMA)
        # Two files, as two workers would write.
        half = table.num_rows // 2
        pq.write_table(table.slice(0, half), os.path.join(self.log_dir, "decisions-w0.parquet"))
        pq.write_table(table.slice(half), os.path.join(self.log_dir, "decisions-w1.parquet"))
