"""``mab evaluate``'s computation: logs and rewards in, estimates out.

For each batch of logged decisions (``readers.DecisionLog``): the
candidate's Beta parameters (``candidate.recompute``), the importance
weights of the logged (decision, position) pairs by Monte Carlo
(``propensity.weights``), the overlap rule, and the estimators' running
sums (``estimators.PositionEstimator``).

The overlap rule (docs/evaluation.md):

* A logged (decision, position) pair whose logging propensity is below
  about ``min_propensity`` cannot be weighted (its inverse propensity is
  not estimable within the draws): its weight is 0. These positions are
  counted, and so are the decisions that have one.
* An item is out of the logging policy's reach in a decision when the
  policy's Beta parameters put it outside the first K positions except
  with probability below 2(K + 1)e^-20 (4.5e-8 for K = 10; the bounds of
  ``_propensity``). A decision
  has too little overlap when the candidate fills more than
  ``max_unsupported`` of its (draw, position) slots with such items. Such
  decisions are left out of the estimates and counted. The rule looks only
  at the decision's parameters (never at the logged ranking or rewards),
  so leaving them out does not bias the estimates of the other decisions:
  the estimates are of the candidate's reward on the decisions kept.
* On the decisions kept, the mean weight of position k estimates the
  candidate's probability mass at k on pairs with a usable weight; its
  shortfall from the share of decisions with position k is the mass the
  estimator cannot see, and so a bound on the bias of IPS at k for rewards
  in [0, 1]. The report gives it with its interval.
"""

import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mab.evaluation.candidate import recompute
from mab.evaluation.estimators import MomentAccumulator, PositionEstimator
from mab.evaluation.propensity import DrawSettings, weights
from mab.evaluation.readers import DecisionLog

#: Edges of the histogram of estimated logging propensities of the logged pairs.
PROPENSITY_EDGES = (0.0, 0.001, 0.01, 0.1, 1.0)


def default_threads():
    """Cores this process may use (the offline evaluation is a batch job)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:       # not Linux
        return max(1, os.cpu_count() or 1)


def evaluate(logs, rewards, candidate, *, model=None, positions=None, draws=DrawSettings(), seed=0,
             confidence=0.95, max_unsupported=0.05, n_threads=None, batch_rows=20_000, progress=None,
             details=False, weights_out=None, memory_limit=None):
    """Estimate what ``candidate`` would have earned on the logged decisions.

    ``logs``, ``rewards``: lists of paths (see ``readers.DecisionLog``).
    ``candidate``: a ``candidate.Candidate``. ``model``: the logged model
    to read (default: the candidate's model if the log has it, else the
    log's only model). ``positions``: K (default: the longest ranking).
    ``draws``: ``propensity.DrawSettings``. ``seed``: the evaluation's
    random streams. ``confidence``: of the two-sided intervals, in (0, 1).
    ``max_unsupported``: the overlap rule's threshold, in [0, 1].
    ``n_threads``: for DuckDB and the draws (default: every core this
    process may use). ``progress(done, total)`` is called after each
    batch. With ``details``, per-decision arrays are returned too (for
    tests and the simulator; not for large logs). ``weights_out``: a path
    to write every logged (decision, position) pair's weight to, as
    Parquet (``WEIGHTS_SCHEMA``: the input of the fleet-scale SQL of
    docs/evaluation.md). ``memory_limit``: DuckDB's (see ``readers``).

    Returns a dict (the JSON report; see ``report.format_table``).
    Raises ``readers.InputError`` for unusable inputs and ValueError for
    settings out of range.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"the confidence must be in (0, 1), got {confidence}")
    if not 0.0 <= max_unsupported <= 1.0:
        raise ValueError(f"the overlap threshold must be in [0, 1], got {max_unsupported}")
    threads = n_threads or default_threads()
    started = time.monotonic()
    log = DecisionLog(logs, rewards, model=model, prefer=candidate.model, positions=positions, threads=threads,
                      memory_limit=memory_limit)
    K = log.positions
    kept_estimator = PositionEstimator(K)
    logged_all = MomentAccumulator(K)
    stats = _Stats(K)
    kept_details = []
    done = 0
    writer = None if weights_out is None else pq.ParquetWriter(weights_out, WEIGHTS_SCHEMA, compression="zstd")
    try:
        for batch, params, out, keep in _weighted_batches(log, candidate, draws, seed, threads, batch_rows,
                                                          max_unsupported):
            present = batch.ranked >= 0
            kept_estimator.add(batch.rewards[keep], out["weight"][keep], present[keep].astype(np.float64))
            logged_all.add(batch.rewards)
            stats.add(batch, params, out, present, keep)
            if writer is not None:
                writer.write_table(_weights_table(batch, out, present, keep))
            if details:
                kept_details.append({
                    "decision_id": np.asarray(batch.decision_ids.to_pylist(), dtype=object),
                    "kept": keep, "weight": out["weight"], "rewards": batch.rewards, "present": present,
                    "p0": out["p0"], "p1": out["p1"], "inv_p0": out["inv_p0"], "unsupported": out["unsupported"],
                    "unchanged": params.unchanged,
                })
            done += batch.n
            if progress is not None:
                progress(done, log.decisions)
    finally:
        if writer is not None:
            writer.close()

    result = kept_estimator.result(confidence)
    n_all = logged_all.n
    logged_mean = logged_all.mean
    report = {
        "candidate": candidate.describe(),
        "input": log.summary(),
        "draws": dict(draws.describe(), seed=seed, threads=threads, **stats.draw_summary()),
        "overlap": dict(stats.overlap_summary(n_all), max_unsupported=max_unsupported),
        "logged_all_decisions": {
            "decisions": n_all,
            "position": logged_mean.tolist(),
            "first_k": np.cumsum(logged_mean).tolist(),
        },
        "result": result,
        "warnings": stats.warnings(candidate),
        "seconds": round(time.monotonic() - started, 3),
    }
    if details:
        report["details"] = {key: np.concatenate([d[key] for d in kept_details]) for key in kept_details[0]}
    return report


def _weighted_batches(log, candidate, draws, seed, threads, batch_rows, max_unsupported):
    """(batch, candidate parameters, weights, kept decisions) for each batch of the log."""
    for batch in log.batches(batch_rows):
        params = recompute(candidate, batch.alpha, batch.beta, batch.lengths, batch.prior_alpha,
                           batch.prior_beta, batch.half_life, batch.ages)
        out = weights(batch.offsets, batch.alpha, batch.beta, params.alpha, params.beta, batch.ranked,
                      batch.seeds, params.unchanged, draws, seed=seed, n_threads=threads)
        yield batch, params, out, ~(out["unsupported"] > max_unsupported)


#: The weights written by ``evaluate(weights_out=...)``: one row per logged
#: (decision, position), position 0-based as in ``ranked``. ``weight`` is 0
#: where ``estimable`` is false; ``kept`` is false for decisions left out by
#: the overlap rule.
WEIGHTS_SCHEMA = pa.schema([
    ("decision_id", pa.string()),
    ("position", pa.int32()),
    ("weight", pa.float64()),
    ("estimable", pa.bool_()),
    ("kept", pa.bool_()),
    ("candidate_propensity", pa.float64()),
    ("logging_propensity", pa.float64()),
])


def _weights_table(batch, out, present, keep):
    rows, positions = np.nonzero(present)
    same = np.isnan(out["p1"][rows, positions])
    return pa.table({
        "decision_id": batch.decision_ids.take(pa.array(rows)),
        "position": pa.array(positions.astype(np.int32)),
        "weight": pa.array(out["weight"][rows, positions]),
        "estimable": pa.array(out["estimable"][rows, positions]),
        "kept": pa.array(keep[rows]),
        # NaN where the candidate equals the logger (nothing drawn): null.
        "candidate_propensity": pa.array(out["p1"][rows, positions], mask=same),
        "logging_propensity": pa.array(out["p0"][rows, positions], mask=same),
    }, schema=WEIGHTS_SCHEMA)


class _Stats:
    """Counts over the whole run for the report's draws and overlap sections."""

    def __init__(self, K):
        self.decisions = 0
        self.unchanged = 0
        self.sampled = 0
        self.draws_sum = 0
        self.draws_max = 0
        self.competing = np.zeros(2)
        self.sampled_sum = np.zeros(2)
        self.excluded = 0
        self.trimmed_positions = 0
        self.decisions_trimmed = 0
        self.kept = 0
        self.unsupported_kept = 0.0
        self.histogram = np.zeros(len(PROPENSITY_EDGES) - 1, np.int64)
        self.imprecise = 0
        self.decay_without_age = 0
        self.max_weight = 0.0

    def add(self, batch, params, out, present, keep):
        sampled = ~params.unchanged
        self.decisions += batch.n
        self.unchanged += int(params.unchanged.sum())
        self.sampled += int(sampled.sum())
        self.draws_sum += int(out["draws"].sum())
        self.draws_max = max(self.draws_max, int(out["draws"].max()))
        self.competing += out["competing"][sampled].sum(axis=0)
        self.sampled_sum += out["sampled"][sampled].sum(axis=0)
        self.excluded += int((~keep).sum())
        trimmed = present & ~out["estimable"]
        self.trimmed_positions += int(trimmed.sum())
        self.decisions_trimmed += int(trimmed.any(axis=1).sum())
        self.kept += int(keep.sum())
        self.unsupported_kept += float(out["unsupported"][keep].sum())
        p0 = out["p0"][present & sampled[:, None]]
        self.histogram += np.histogram(p0, bins=PROPENSITY_EDGES)[0]
        self.imprecise += params.imprecise
        self.decay_without_age += params.decay_without_age
        if out["weight"].size:
            self.max_weight = max(self.max_weight, float(out["weight"].max()))

    def draw_summary(self):
        sampled = max(self.sampled, 1)
        return {
            "decisions_sampled": self.sampled,
            "decisions_unchanged": self.unchanged,
            "mean_draws_per_policy": self.draws_sum / sampled,
            "most_draws": self.draws_max,
            "mean_candidates_in_reach": {"logging": self.competing[0] / sampled,
                                         "candidate": self.competing[1] / sampled},
            "mean_variates_per_draw": {"logging": self.sampled_sum[0] / sampled,
                                       "candidate": self.sampled_sum[1] / sampled},
            "largest_weight": self.max_weight,
        }

    def overlap_summary(self, n_all):
        return {
            "decisions_excluded": self.excluded,
            "decisions_kept": self.kept,
            "decisions_with_unestimable_position": self.decisions_trimmed,
            "unestimable_positions": self.trimmed_positions,
            "mean_unsupported_share_kept": self.unsupported_kept / max(self.kept, 1),
            "logging_propensity_histogram": {
                f"[{lo:g}, {hi:g})": int(c)
                for lo, hi, c in zip(PROPENSITY_EDGES[:-1], PROPENSITY_EDGES[1:], self.histogram)
            },
        }

    def warnings(self, candidate):
        notes = []
        if self.decay_without_age:
            notes.append(f"{self.decay_without_age} decision(s) have no count ages, so the candidate's "
                         "half-life could not apply to them")
        if self.imprecise:
            notes.append(f"{self.imprecise} candidate parameter(s) were undecayed by more than 2^52: the log "
                         "held their counts to less than one bit")
        if self.decisions and self.excluded > 0.5 * self.decisions:
            notes.append("more than half the decisions have too little overlap: the estimates cover a minority "
                         "of the traffic")
        return notes
