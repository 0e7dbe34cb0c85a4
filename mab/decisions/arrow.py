"""Decision records as Arrow columns: the schema, and a batch of queued
records turned into one Arrow table without a Python loop per candidate.

Each list column (``item_ids``, ``alpha``, ...) is built as Arrow lays
lists out: one array of every record's values end to end
(``numpy.concatenate`` of the arrays the request path kept) and an array
of offsets where each record's values start
(``pyarrow.ListArray.from_arrays``). ``item_ids`` become one string array
the same way, from each request's id bytes and lengths
(``mab._wire.IdSpans.concatenated``).

pyarrow is imported by this module, so only by a worker that logs
decisions.
"""

from collections import Counter

import numpy as np
import pyarrow as pa

from mab._wire import IdSpans
from mab.decisions.record import (
    AGE_SECONDS, ALPHA, BETA, DECISION_ID, FAILED, ITEM_IDS, MISSING, MODEL, RANKED, SCORES, SEED, TIME_US,
    USER_ID,
)

#: The decision record, one row per logged decision (docs/decisions.md).
SCHEMA = pa.schema([
    pa.field("decision_id", pa.string(), nullable=False),
    pa.field("time", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("user_id", pa.string()),
    pa.field("seed", pa.uint64(), nullable=False),
    pa.field("snapshot", pa.string(), nullable=False),
    pa.field("prior_alpha", pa.float64(), nullable=False),
    pa.field("prior_beta", pa.float64(), nullable=False),
    pa.field("half_life_seconds", pa.float64()),
    pa.field("log_fraction", pa.float64(), nullable=False),
    pa.field("item_ids", pa.list_(pa.string()), nullable=False),
    pa.field("alpha", pa.list_(pa.float64()), nullable=False),
    pa.field("beta", pa.list_(pa.float64()), nullable=False),
    pa.field("age_seconds", pa.list_(pa.float64())),
    pa.field("ranked", pa.list_(pa.int32()), nullable=False),
    pa.field("scores", pa.list_(pa.float64()), nullable=False),
    pa.field("missing", pa.int32(), nullable=False),
    pa.field("degraded", pa.bool_(), nullable=False),
    pa.field("degraded_items", pa.int32(), nullable=False),
])

_SCALARS = ("decision_id", "time", "model", "user_id", "seed", "snapshot", "prior_alpha", "prior_beta",
            "half_life_seconds", "log_fraction", "missing", "degraded", "degraded_items")

#: pyarrow.parquet.ParquetWriter options per column, chosen by measuring
#: size and CPU per decision on 400-candidate requests (docs/decisions.md):
#: item ids PLAIN (dictionary pages cost more CPU and, per row group, as
#: much space as they save); Beta parameters and scores BYTE_STREAM_SPLIT
#: (their exponent bytes then compress); dictionaries for the few distinct
#: values of the per-model columns and the ranks; min/max statistics only
#: for the scalar columns, where a reader filtering on time or model uses
#: them, not for the candidates.
PARQUET_OPTIONS = dict(
    use_dictionary=["model", "user_id", "snapshot", "prior_alpha", "prior_beta", "half_life_seconds",
                    "log_fraction", "ranked.list.element"],
    column_encoding={
        "item_ids.list.element": "PLAIN",
        "alpha.list.element": "BYTE_STREAM_SPLIT",
        "beta.list.element": "BYTE_STREAM_SPLIT",
        "age_seconds.list.element": "BYTE_STREAM_SPLIT",
        "scores.list.element": "BYTE_STREAM_SPLIT",
    },
    write_statistics=list(_SCALARS),
)

_INT32_MAX = 2**31 - 1


def _offsets(lengths):
    """Arrow list offsets (int32, one more than records) from the lengths."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:], dtype=np.int32)
    return offsets


def _id_parts(ids):
    """``(data, lengths)`` of one request's ids: their UTF-8 bytes end to
    end and each one's length in bytes."""
    if type(ids) is IdSpans:
        return ids.concatenated()
    # A list of str (a body the compiled parser left to orjson: escapes or
    # non-ASCII ids): pyarrow encodes it to UTF-8 in C.
    array = pa.array(ids, type=pa.string())
    _, offsets_buffer, data = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32, count=len(array) + 1)
    return memoryview(data)[offsets[0]:offsets[-1]], np.diff(offsets).astype(np.int64)


def to_table(records, infos):
    """The records (tuples, see ``mab.decisions.record``) as a
    ``pyarrow.Table`` of ``SCHEMA``, one row each. ``infos``: model name ->
    ``ModelInfo``. Raises ``OverflowError`` when the batch's ids exceed 2 GiB
    of bytes (an Arrow string array's int32 offsets): split such a batch."""
    columns = list(zip(*records))
    n = len(records)
    models = columns[MODEL]
    model_infos = [infos[name] for name in models]
    counts = np.fromiter(map(len, columns[ALPHA]), dtype=np.int64, count=n)
    offsets = _offsets(counts)
    ranked_counts = np.fromiter(map(len, columns[RANKED]), dtype=np.int64, count=n)
    ranked_offsets = _offsets(ranked_counts)

    parts = [_id_parts(ids) for ids in columns[ITEM_IDS]]
    id_lengths = np.concatenate([lengths for _, lengths in parts])
    if int(id_lengths.sum()) > _INT32_MAX:
        raise OverflowError("the ids of one batch exceed 2 GiB")
    id_values = pa.StringArray.from_buffers(
        len(id_lengths), pa.py_buffer(_offsets(id_lengths)), pa.py_buffer(b"".join(data for data, _ in parts))
    )

    ages = columns[AGE_SECONDS]
    if all(a is None for a in ages):
        age_column = pa.nulls(n, type=pa.list_(pa.float64()))
    else:
        present = np.fromiter((a is not None for a in ages), dtype=bool, count=n)
        age_column = pa.ListArray.from_arrays(
            pa.array(_offsets(np.where(present, counts, 0))),
            pa.array(np.concatenate([a for a in ages if a is not None]), type=pa.float64()),
            mask=pa.array(~present),
        )

    def floats(values):
        return pa.array(np.concatenate(values), type=pa.float64())

    failed = np.fromiter(columns[FAILED], dtype=np.int32, count=n)
    arrays = [
        pa.array(columns[DECISION_ID], type=pa.string()),
        pa.array(columns[TIME_US], type=pa.timestamp("us", tz="UTC")),
        pa.array(models, type=pa.string()),
        pa.array(columns[USER_ID], type=pa.string()),
        pa.array(columns[SEED], type=pa.uint64()),
        pa.array([info.snapshot for info in model_infos], type=pa.string()),
        pa.array([info.prior_alpha for info in model_infos], type=pa.float64()),
        pa.array([info.prior_beta for info in model_infos], type=pa.float64()),
        pa.array([info.half_life_seconds for info in model_infos], type=pa.float64()),
        pa.array([info.log_fraction for info in model_infos], type=pa.float64()),
        pa.ListArray.from_arrays(offsets, id_values),
        pa.ListArray.from_arrays(offsets, floats(columns[ALPHA])),
        pa.ListArray.from_arrays(offsets, floats(columns[BETA])),
        age_column,
        pa.ListArray.from_arrays(ranked_offsets, pa.array(np.concatenate(columns[RANKED]).astype(np.int32))),
        pa.ListArray.from_arrays(ranked_offsets, floats(columns[SCORES])),
        pa.array(np.fromiter(columns[MISSING], dtype=np.int32, count=n)),
        pa.array(failed > 0),
        pa.array(failed),
    ]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def to_tables(records, infos):
    """``to_table`` of the records, as one table or, when their ids exceed
    an Arrow string array's 2 GiB, as several (the batch split in halves)."""
    try:
        return [to_table(records, infos)]
    except OverflowError:
        if len(records) == 1:
            raise
        half = len(records) // 2
        return to_tables(records[:half], infos) + to_tables(records[half:], infos)


def models_of(records):
    """{model name: number of records} of a batch."""
    return Counter(record[MODEL] for record in records)
