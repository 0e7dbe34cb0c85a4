"""Synthetic decision logs with a known click model.

Used by ``scripts/make_decision_logs.py`` (logs of any size, to measure the
evaluator), by the tests of the estimators (whose true values must be
known) and by the simulator's checks.

The world: a catalogue of items, each with a click probability ``theta``
when shown first, and counts (successes, failures) as a snapshot store
would hold them. A decision draws ``candidates`` distinct items, scores each
with a Beta(prior + counts) variate with ``mab.sampling.sample_beta`` (the
service's sampler) and shows the best ``top_k``: exactly the service's
Thompson sampling. A shown item is clicked with probability
``theta * examination(k)`` at position k, the position-based click model
(N. Craswell, O. Zoeter, M. Taylor and B. Ramsey, "An experimental
comparison of click position-bias models", WSDM 2008), with examination
1 / log2(k + 1), the discount of DCG (K. Jarvelin and J. Kekalainen,
"Cumulated gain-based evaluation of IR techniques", ACM TOIS 20(4), 2002).
Under that model the reward of an item at a position does not depend on
the other items shown, the assumption the position-wise estimators of
``mab.evaluation.estimators`` rest on.

The records follow the contract's schema (``mab.evaluation.schema``), with
one difference: the scores of a batch are drawn in one call rather than
one call per record with the record's seed, so ``seed`` does not replay a
synthetic record (the evaluator never replays).
"""

import math
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mab.evaluation.schema import DECISION_SCHEMA, REWARD_SCHEMA
from mab.sampling import sample_beta

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
#: When the synthetic traffic starts (any fixed instant: the files are
#: then the same bytes for the same arguments).
EPOCH_US = 1_767_225_600_000_000     # 2026-01-01T00:00:00Z


def examination(k):
    """Examination probabilities of positions 1..k: float64 array (k,), 1 / log2(position + 1)."""
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


@dataclass(frozen=True)
class Catalogue:
    """Items with known click rates and the counts a store holds for them.

    ``ids``: pyarrow string array (n_items,). ``theta``: float64 (n_items,),
    the click probability at position 1. ``successes``, ``failures``:
    float64 (n_items,), undecayed counts. ``age_seconds``: float64
    (n_items,) or None, the age of each item's counts.
    """

    ids: pa.Array
    theta: np.ndarray
    successes: np.ndarray
    failures: np.ndarray
    age_seconds: np.ndarray | None = None

    def __len__(self):
        return len(self.theta)


def make_catalogue(n_items, *, seed=0, ctr=(2.0, 60.0), impressions_median=2000.0,
                   impressions_sigma=2.0, new_fraction=0.05, max_age_seconds=None):
    """A catalogue of ``n_items`` items (ids ``item-0000000``, ...).

    Click rates are Beta(``ctr``) (mean 3.2% by default); impressions are
    log-normal with the given median and log-scale sigma, and a
    ``new_fraction`` of the items have none (the store lacks them: they are
    scored from the prior); successes are Binomial(impressions, theta).
    With ``max_age_seconds``, each item's counts get an age uniform in
    [0, max_age_seconds). Deterministic in ``seed``.
    """
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    rng = np.random.default_rng(seed)
    theta = rng.beta(ctr[0], ctr[1], n_items)
    impressions = np.floor(impressions_median * np.exp(impressions_sigma * rng.standard_normal(n_items)))
    impressions[rng.random(n_items) < new_fraction] = 0.0
    successes = rng.binomial(impressions.astype(np.int64), theta).astype(np.float64)
    failures = impressions - successes
    ages = None if max_age_seconds is None else rng.uniform(0.0, max_age_seconds, n_items)
    ids = pa.array([f"item-{i:07d}" for i in range(n_items)], pa.string())
    return Catalogue(ids, theta, successes, failures, ages)


@dataclass(frozen=True)
class Policy:
    """The logging model's settings: the Beta prior and the decay."""

    prior_alpha: float = 1.0
    prior_beta: float = 1.0
    half_life_seconds: float | None = None


def beta_parameters(catalogue, items, policy):
    """Beta parameters of catalogue items ``items`` (int array, any shape)
    under ``policy``: (alpha, beta), float64 arrays of that shape.
    Counts are discounted by 2^(-age / half_life) when the policy decays and
    the catalogue has ages; the prior is never discounted."""
    s = catalogue.successes[items]
    f = catalogue.failures[items]
    if policy.half_life_seconds is not None and catalogue.age_seconds is not None:
        factor = np.exp2(-catalogue.age_seconds[items] / policy.half_life_seconds)
        s = s * factor
        f = f * factor
    return policy.prior_alpha + s, policy.prior_beta + f


def decision_ids(rng, n):
    """``n`` random decision ids: a pyarrow string array of 32 lowercase hex characters each."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    chars = np.empty((n, 32), np.uint8)
    chars[:, 0::2] = _HEX[raw >> 4]
    chars[:, 1::2] = _HEX[raw & 15]
    offsets = np.arange(0, 32 * n + 1, 32, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars.tobytes()))


def choose_candidates(rng, n, candidates, n_items):
    """``candidates`` distinct catalogue indices for each of ``n`` decisions:
    int64 (n, candidates). Each row is start + stride * j (mod n_items) with
    the stride coprime to n_items, so the items of a row are distinct,
    without a loop or a shuffle per row."""
    if not 1 <= candidates <= n_items:
        raise ValueError(f"candidates must be in [1, {n_items}] (the catalogue), got {candidates}")
    steps = np.arange(1, n_items + 1)
    coprime = steps[np.gcd(steps, n_items) == 1]
    start = rng.integers(0, n_items, n)
    stride = coprime[rng.integers(0, len(coprime), n)]
    return (start[:, None] + stride[:, None] * np.arange(candidates)[None, :]) % n_items


def thompson_top(alpha, beta, top_k, seed, n_threads=1):
    """One Thompson-sampling ranking per row: scores drawn with the service's
    sampler, the best ``top_k`` kept, best first.

    ``alpha``, ``beta``: float64 (n, c). Returns (order int32 (n, top_k),
    scores float64 (n, top_k))."""
    n, c = alpha.shape
    scores = sample_beta(alpha.ravel(), beta.ravel(), seed=seed, n_threads=n_threads).reshape(n, c)
    negated = -scores
    if top_k < c:
        best = np.argpartition(negated, top_k - 1, axis=1)[:, :top_k]
    else:
        best = np.broadcast_to(np.arange(c), (n, c))
    order = np.take_along_axis(best, np.argsort(np.take_along_axis(negated, best, 1), axis=1, kind="stable"), 1)
    return order.astype(np.int32), np.take_along_axis(scores, order, 1)


def _list_array(values, n, width):
    offsets = pa.array(np.arange(0, n * width + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, values)


@dataclass(frozen=True)
class SyntheticBatch:
    """One batch of synthetic traffic.

    ``decisions``: a RecordBatch of DECISION_SCHEMA. ``rewards``: a Table of
    REWARD_SCHEMA (clicks, and with ``zeros`` the shown items not clicked).
    ``items``: int64 (n, candidates), the catalogue index of each candidate.
    ``clicks``: float64 (n, top_k), the reward at each shown position.
    """

    decisions: pa.RecordBatch
    rewards: pa.Table
    items: np.ndarray
    clicks: np.ndarray


def make_batch(catalogue, n, *, candidates, top_k, policy=Policy(), seed=0, first_index=0,
               model="default", zeros=False, interval_us=1000, n_threads=1):
    """``n`` decisions of Thompson sampling under ``policy`` and their rewards.

    ``first_index`` numbers the decisions (their times are EPOCH_US +
    index * interval_us). Deterministic in (``seed``, ``first_index``) for
    any ``n_threads``. Raises ValueError for top_k outside [1, candidates].
    """
    if not 1 <= top_k <= candidates:
        raise ValueError(f"top_k must be in [1, candidates={candidates}], got {top_k}")
    rng = np.random.default_rng([seed, first_index])
    items = choose_candidates(rng, n, candidates, len(catalogue))
    alpha, beta = beta_parameters(catalogue, items, policy)
    order, scores = thompson_top(alpha, beta, top_k, int(rng.integers(0, 2**63)), n_threads)
    shown = np.take_along_axis(items, order, 1)
    clicks = (rng.random((n, top_k)) < catalogue.theta[shown] * examination(top_k)[None, :]).astype(np.float64)

    ids = decision_ids(rng, n)
    times = pa.array(EPOCH_US + (first_index + np.arange(n, dtype=np.int64)) * interval_us,
                     pa.timestamp("us", tz="UTC"))
    flat_items = catalogue.ids.take(pa.array(items.ravel()))
    if policy.half_life_seconds is not None and catalogue.age_seconds is not None:
        ages = _list_array(pa.array(catalogue.age_seconds[items].ravel()), n, candidates)
    else:
        ages = pa.nulls(n, pa.list_(pa.float64()))
    columns = {
        "decision_id": ids,
        "time": times,
        "model": pa.array([model] * n, pa.string()),
        "user_id": pa.nulls(n, pa.string()),
        "seed": pa.array(rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)),
        "snapshot": pa.array([f"synthetic:{seed}"] * n, pa.string()),
        "prior_alpha": pa.array(np.full(n, policy.prior_alpha)),
        "prior_beta": pa.array(np.full(n, policy.prior_beta)),
        "half_life_seconds": pa.array([policy.half_life_seconds] * n, pa.float64()),
        "log_fraction": pa.array(np.ones(n)),
        "item_ids": _list_array(flat_items, n, candidates),
        "alpha": _list_array(pa.array(alpha.ravel()), n, candidates),
        "beta": _list_array(pa.array(beta.ravel()), n, candidates),
        "age_seconds": ages,
        "ranked": _list_array(pa.array(order.ravel()), n, top_k),
        "scores": _list_array(pa.array(scores.ravel()), n, top_k),
        "missing": pa.array((catalogue.successes[items] + catalogue.failures[items] == 0).sum(1).astype(np.int32)),
        "degraded": pa.array(np.zeros(n, bool)),
        "degraded_items": pa.array(np.zeros(n, np.int32)),
    }
    decisions = pa.RecordBatch.from_pydict(columns, schema=DECISION_SCHEMA)

    rows, positions = np.nonzero(clicks > 0) if not zeros else np.indices((n, top_k)).reshape(2, -1)
    m = len(rows)
    rewards = pa.table({
        "decision_id": ids.take(pa.array(rows)),
        "item_id": catalogue.ids.take(pa.array(shown[rows, positions])),
        "reward": pa.array(clicks[rows, positions]),
        "model": pa.array([model] * m, pa.string()),
        "user_id": pa.nulls(m, pa.string()),
        "time": times.take(pa.array(rows)),
    }, schema=REWARD_SCHEMA)
    return SyntheticBatch(decisions, rewards, items, clicks)


def write_logs(directory, catalogue, n_decisions, *, candidates, top_k, policy=Policy(), seed=0,
               files=1, batch_rows=50_000, rewards_path=None, zeros=False, model="default",
               n_threads=1, progress=None):
    """Write ``n_decisions`` synthetic decisions as ``files`` Parquet files in
    ``directory`` (``decisions-wNN.parquet``, as if from ``files`` workers;
    each in row groups of ``batch_rows``, zstd), and their rewards to
    ``rewards_path`` (``.parquet``, else JSON Lines) when given.

    ``progress(done)`` is called after each batch. Returns the paths written.
    Raises OSError when a file cannot be written.
    """
    os.makedirs(directory, exist_ok=True)
    per_file = math.ceil(n_decisions / files)
    paths = []
    reward_writer = reward_file = None
    if rewards_path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(rewards_path)), exist_ok=True)
        if rewards_path.endswith(".parquet"):
            reward_writer = pq.ParquetWriter(rewards_path, REWARD_SCHEMA, compression="zstd")
        else:
            reward_file = open(rewards_path, "w")
    done = 0
    try:
        for w in range(files):
            count = min(per_file, n_decisions - w * per_file)
            if count <= 0:
                break
            path = os.path.join(directory, f"decisions-w{w:02d}.parquet")
            with pq.ParquetWriter(path, DECISION_SCHEMA, compression="zstd") as writer:
                for start in range(0, count, batch_rows):
                    n = min(batch_rows, count - start)
                    batch = make_batch(catalogue, n, candidates=candidates, top_k=top_k, policy=policy,
                                       seed=seed, first_index=done, model=model, zeros=zeros,
                                       n_threads=n_threads)
                    writer.write_batch(batch.decisions)
                    if reward_writer is not None:
                        reward_writer.write_table(batch.rewards)
                    elif reward_file is not None:
                        _write_jsonl(reward_file, batch.rewards)
                    done += n
                    if progress is not None:
                        progress(done)
            paths.append(path)
    finally:
        if reward_writer is not None:
            reward_writer.close()
        if reward_file is not None:
            reward_file.close()
    return paths


def _write_jsonl(f, table):
    import orjson

    columns = table.select(["decision_id", "item_id", "reward", "model"]).to_pydict()
    times = table.column("time").to_pylist()
    for d, i, r, m, t in zip(columns["decision_id"], columns["item_id"], columns["reward"], columns["model"], times):
        f.write(orjson.dumps({"decision_id": d, "item_id": i, "reward": r, "model": m, "user_id": None,
                              "time": t.isoformat().replace("+00:00", "Z")}).decode())
        f.write("\n")
