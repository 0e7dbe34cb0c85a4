"""One logged decision: the tuple the request path queues, which decisions
are logged, what a model contributes to each record, and the JSON form.

The request path builds a plain tuple (``RECORD_FIELDS``, indices below) of
references: the ``numpy`` arrays the service sampled from and answered
with, the request's ids (a ``list`` of ``str``, or the body parser's
``mab._wire.IdSpans``), and a few scalars. Nothing is copied or converted
there; the writer thread (``mab.decisions.log``) turns batches of them into
Arrow columns (``mab.decisions.arrow``) or JSON lines (``json_line``).

The record's columns, their types and meaning are in docs/decisions.md and
``mab.decisions.arrow.SCHEMA`` (the contract shared with ``mab.feedback``
and ``mab.evaluation``).
"""

import datetime
import os
from dataclasses import dataclass

import numpy as np
import orjson

from mab._wire import IdSpans

#: The fields of the queued tuple, in order.
RECORD_FIELDS = (
    "decision_id",  # str, 32 lowercase hex digits
    "time_us",      # int, microseconds since the Unix epoch (UTC)
    "model",        # str
    "user_id",      # str or None
    "seed",         # int in [0, 2**64)
    "item_ids",     # list of str, or IdSpans: the candidates, in request order
    "alpha",        # float64 array (n,): the Beta parameters exactly as sampled
    "beta",         # float64 array (n,)
    "age_seconds",  # float64 array (n,) or None: the counts' age, when the store has one
    "ranked",       # int64 array (k,): indices into item_ids, best first
    "scores",       # float64 array (k,): the returned scores, aligned with ranked
    "missing",      # int
    "failed",       # int: degraded_items
)
(DECISION_ID, TIME_US, MODEL, USER_ID, SEED, ITEM_IDS, ALPHA, BETA,
 AGE_SECONDS, RANKED, SCORES, MISSING, FAILED) = range(len(RECORD_FIELDS))

_TWO_TO_64 = 2.0**64


def new_decision_id():
    """``(raw, hex)``: 128 random bits from the operating system (16 bytes)
    and their 32 lowercase hex digits, the ``decision_id``. Read from
    ``os.urandom`` on every call, as ``mab.sampling.fresh_seed`` is, so
    forked workers never repeat each other's ids."""
    raw = os.urandom(16)
    return raw, raw.hex()


def selected(decision_id, log_fraction):
    """Whether the decision ``decision_id`` (32 hex digits) is logged at
    ``log_fraction`` (a float in [0, 1]): the rule the contract fixes,
    ``int(decision_id[:16], 16) / 2**64 < log_fraction``. Its first 64 bits
    are uniform, so a fraction f of decisions is logged, and anyone holding
    the id can tell whether it was (mab.evaluation relies on that).

    The service computes the same from the id's raw bytes (``selected_raw``).
    """
    return int(decision_id[:16], 16) / _TWO_TO_64 < log_fraction


def selected_raw(raw, log_fraction):
    """``selected`` on the id's 16 raw bytes (the hex of ``raw[:8]``,
    big-endian, is ``decision_id[:16]``): no hex parsing on the request path."""
    return int.from_bytes(raw[:8], "big") / _TWO_TO_64 < log_fraction


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a model puts in each of its records: the same for every
    decision a worker makes with it, so it is not queued per decision."""

    snapshot: str
    prior_alpha: float
    prior_beta: float
    half_life_seconds: float | None
    log_fraction: float


def snapshot_of(store):
    """The identity of the data a store serves, for the ``snapshot`` column.

    A store may name its own (a ``snapshot`` attribute, or a method of that
    name). Otherwise: the embedded store's compiled copy, ``FILE-HASH``, the
    CSV's name and a hash of its path, size and modification time
    (``mab.stores.embedded.cache_path``); ``vertex:RESOURCE`` for a Vertex
    store (its feature view, or entity type for the legacy backend); else
    the backend's name."""
    own = getattr(store, "snapshot", None)
    if callable(own):
        own = own()
    if own:
        return str(own)
    compiled = getattr(store, "compiled_path", None)
    if compiled:
        return os.path.basename(compiled)
    resource = getattr(store, "resource", None)
    if resource:
        return f"vertex:{resource}"
    return str(getattr(store, "backend", type(store).__name__))


def model_info(model):
    """The ``ModelInfo`` of a ``mab.model.BetaModel`` (its store loaded).

    ``half_life_seconds`` is read if the model's configuration has one
    (serve-time decay, mab.feedback); absent, None or 0 mean no decay."""
    config = model.config
    half_life = getattr(config, "half_life_seconds", None)
    return ModelInfo(
        snapshot=snapshot_of(model.store),
        prior_alpha=float(config.prior_alpha),
        prior_beta=float(config.prior_beta),
        half_life_seconds=float(half_life) if half_life else None,
        log_fraction=float(config.log_fraction),
    )


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def rfc3339(time_us):
    """Microseconds since the epoch as an RFC 3339 UTC timestamp,
    ``2025-01-31T12:00:00.123456Z`` (exact: no float on the way)."""
    t = _EPOCH + datetime.timedelta(microseconds=time_us)
    return f"{t:%Y-%m-%dT%H:%M:%S}.{t.microsecond:06d}Z"


def _ids_json(ids):
    if type(ids) is IdSpans:
        # The ids' own bytes, quoted: they need no escaping (printable ASCII).
        return orjson.Fragment(ids.json_array(np.arange(len(ids), dtype=np.int64)))
    return ids


def json_document(record, info):
    """The record as a dict of JSON-ready values, the columns of the Parquet
    schema by name (arrays stay numpy arrays, for orjson)."""
    failed = record[FAILED]
    ages = record[AGE_SECONDS]
    # orjson writes C-contiguous arrays only; the service's already are.
    contiguous = np.ascontiguousarray
    return {
        "decision_id": record[DECISION_ID],
        "time": rfc3339(record[TIME_US]),
        "model": record[MODEL],
        "user_id": record[USER_ID],
        "seed": record[SEED],
        "snapshot": info.snapshot,
        "prior_alpha": info.prior_alpha,
        "prior_beta": info.prior_beta,
        "half_life_seconds": info.half_life_seconds,
        "log_fraction": info.log_fraction,
        "item_ids": _ids_json(record[ITEM_IDS]),
        "alpha": contiguous(record[ALPHA]),
        "beta": contiguous(record[BETA]),
        "age_seconds": None if ages is None else contiguous(ages),
        "ranked": contiguous(record[RANKED]),
        "scores": contiguous(record[SCORES]),
        "missing": record[MISSING],
        "degraded": failed > 0,
        "degraded_items": failed,
    }


def json_line(record, info):
    """One JSON Lines line (bytes, ending in ``\\n``): the record's columns
    by name, lists as arrays, ``time`` as an RFC 3339 UTC string. Floats are
    written in their shortest round-trip form, so ``alpha``, ``beta`` and
    ``scores`` read back as the same float64 values; a NaN age is ``null``
    (JSON has no NaN)."""
    return orjson.dumps(
        json_document(record, info), option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
    )
