"""The decision record and reward event as the evaluator reads them.

The decision record is the one of the issue-11 contract (one row per logged
``/predict``; ``mab.decisions`` writes it). Its Arrow schema is stated here
so that the synthetic logs (``mab.evaluation.synthetic``) and the tests
write exactly what the service writes, and so that the reader can name a
missing or mistyped column.
"""

import pyarrow as pa

#: One logged decision. ``ranked`` holds indices into ``item_ids`` (and
#: ``alpha``, ``beta``, ``age_seconds``), best first, ``top_k`` long;
#: ``age_seconds`` is null when the store has no timestamps, NaN for an
#: item without one; ``half_life_seconds`` null means no decay.
DECISION_SCHEMA = pa.schema([
    ("decision_id", pa.string()),
    ("time", pa.timestamp("us", tz="UTC")),
    ("model", pa.string()),
    ("user_id", pa.string()),
    ("seed", pa.uint64()),
    ("snapshot", pa.string()),
    ("prior_alpha", pa.float64()),
    ("prior_beta", pa.float64()),
    ("half_life_seconds", pa.float64()),
    ("log_fraction", pa.float64()),
    ("item_ids", pa.list_(pa.string())),
    ("alpha", pa.list_(pa.float64())),
    ("beta", pa.list_(pa.float64())),
    ("age_seconds", pa.list_(pa.float64())),
    ("ranked", pa.list_(pa.int32())),
    ("scores", pa.list_(pa.float64())),
    ("missing", pa.int32()),
    ("degraded", pa.bool_()),
    ("degraded_items", pa.int32()),
])

#: Columns the evaluator needs; the others may be absent (``half_life_seconds``
#: and ``age_seconds`` then count as null: no decay, no ages).
REQUIRED_DECISION_COLUMNS = (
    "decision_id", "model", "prior_alpha", "prior_beta", "item_ids", "alpha", "beta", "ranked",
)
OPTIONAL_DECISION_COLUMNS = ("half_life_seconds", "age_seconds")

#: A reward event: what POST /feedback takes, and what its journal holds.
#: The evaluator needs only the first three.
REWARD_SCHEMA = pa.schema([
    ("decision_id", pa.string()),
    ("item_id", pa.string()),
    ("reward", pa.float64()),
    ("model", pa.string()),
    ("user_id", pa.string()),
    ("time", pa.timestamp("us", tz="UTC")),
])
REQUIRED_REWARD_COLUMNS = ("decision_id", "item_id", "reward")
