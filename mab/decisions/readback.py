"""Reading logged decisions back, and replaying them.

A record holds everything its answer was computed from: each candidate's
Beta parameters exactly as sampled (``alpha``, ``beta``) and the ``seed``.
The sampler draws the same variates for the same parameters and seed on any
machine and thread count (``mab.sampling``), and ``mab.service.rank``
breaks ties from the same seed, so sampling again and ranking the best
``len(ranked)`` gives exactly the logged ``ranked`` and ``scores``.
"""

import os
from dataclasses import dataclass

import numpy as np
import orjson

from mab import sampling
from mab.service import rank


@dataclass(frozen=True)
class Replay:
    ranked: np.ndarray   # int64 (k,): indices into the record's item_ids, best first
    scores: np.ndarray   # float64 (k,): their scores

    def matches(self, record):
        """Whether the record's logged ``ranked`` and ``scores`` are exactly these."""
        return (np.array_equal(self.ranked, np.asarray(record["ranked"], dtype=np.int64))
                and np.array_equal(self.scores, np.asarray(record["scores"], dtype=np.float64)))


def replay(record):
    """Compute a logged decision again from its parameters and seed.

    ``record``: a mapping with ``alpha``, ``beta`` (sequences of float, one
    per candidate), ``seed`` (int) and ``ranked`` (its length is the
    answer's length, top_k or all candidates): a row of a decision Parquet
    file (``pyarrow.Table.to_pylist``) or a parsed JSON line. Returns a
    ``Replay``; ``Replay.matches(record)`` compares it with the log.
    Raises ``ValueError`` for parameters the sampler refuses (not finite
    and > 0) or of different lengths.
    """
    alpha = np.ascontiguousarray(record["alpha"], dtype=np.float64)
    beta = np.ascontiguousarray(record["beta"], dtype=np.float64)
    if alpha.ndim != 1 or alpha.shape != beta.shape:
        raise ValueError(f"alpha and beta must be one list each of one length, got {alpha.shape} and {beta.shape}")
    seed = int(record["seed"])
    scores = sampling.sample_beta(alpha, beta, seed=seed, n_threads=1)
    order = rank(scores, len(record["ranked"]), seed)
    return Replay(order, scores[order])


def read_parquet(path):
    """The decisions in a Parquet file, or in every ``*.parquet`` file of a
    directory (the temporary ``.NAME.tmp`` files of open files are not
    read), as a ``pyarrow.Table``."""
    import pyarrow.parquet as pq

    if os.path.isdir(path):
        files = sorted(os.path.join(path, name) for name in os.listdir(path)
                       if name.endswith(".parquet") and not name.startswith("."))
        if not files:
            from mab.decisions.arrow import SCHEMA

            return SCHEMA.empty_table()
        return pq.ParquetDataset(files).read()
    return pq.read_table(path)


def read_json_lines(path):
    """The decisions in a JSON Lines file (the ``jsonl`` sink's output),
    as a list of dicts; lines that are not JSON objects (other output on
    the same stream, such as log lines) are skipped."""
    records = []
    with open(path, "rb") as f:
        for line in f:
            if not line.startswith(b"{"):
                continue
            try:
                document = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if type(document) is dict and "decision_id" in document:
                records.append(document)
    return records
