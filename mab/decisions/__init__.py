"""The decision log: what each logged /predict decided, and from what.

Every /predict answer carries a ``decision_id`` (128 random bits, 32 hex
digits). A model with ``log_fraction`` > 0 logs the decisions whose id
falls under it (``record.selected``): the time, model, user, seed, the
store's snapshot, the prior, every candidate's Beta parameters exactly as
sampled, and the returned order and scores, enough to replay the answer
exactly (``replay``) and to evaluate other settings offline
(mab.evaluation). docs/decisions.md documents the record, the sinks and
the configuration.

- ``record``: the tuple the request path queues, the selection rule, the
  per-model part of a record, the JSON Lines form;
- ``arrow``: the Arrow schema and a batch of records as Arrow columns;
- ``sinks``: rotated Parquet files per worker, or JSON Lines on stdout;
- ``log``: the bounded queue and the writer thread (``DecisionLog``);
- ``readback``: replaying a logged decision (``replay``), reading logs back.

pyarrow is imported only by a worker that logs decisions.
"""

from mab.decisions.record import new_decision_id, selected, selected_raw

__all__ = ["DecisionLog", "create_decision_log", "new_decision_id", "replay", "read_json_lines",
           "read_parquet", "selected", "selected_raw"]


def __getattr__(name):
    # Imported on first use: mab.service imports this package for the
    # request path, and the log and replay import mab.service.
    if name in ("DecisionLog", "create_decision_log"):
        from mab.decisions import log

        return getattr(log, name)
    if name in ("replay", "read_json_lines", "read_parquet"):
        from mab.decisions import readback

        return getattr(readback, name)
    raise AttributeError(f"module 'mab.decisions' has no attribute {name!r}")
