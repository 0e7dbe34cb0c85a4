"""Reading decision logs and rewards with DuckDB, into numpy batches.

DuckDB reads the Parquet files of the decision log (a file, a directory, a
glob; the files of all workers at once) and the rewards (Parquet or JSON
Lines), joins each shown (decision, position) to its reward in SQL, and
streams the decisions as Arrow record batches. Everything per record is
vectorised: list columns become flat numpy arrays with offsets, without a
Python loop over decisions. The SQL is the same that runs on BigQuery for
fleet-scale logs (docs/evaluation.md).

Reward semantics: an (decision, item) pair's reward is the largest of its
events (repeated events count once, as the feedback service's
deduplication counts them); a shown item without an event has reward 0;
events for decisions not evaluated (another model's, or not in the log),
or for items not among a decision's first K, are counted and otherwise
ignored.
"""

import glob
import os
import tempfile
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from mab.evaluation.schema import OPTIONAL_DECISION_COLUMNS, REQUIRED_DECISION_COLUMNS, REQUIRED_REWARD_COLUMNS

#: DuckDB's memory limit unless told otherwise (--memory-limit).
DEFAULT_MEMORY_LIMIT = "2GB"

_JSON_SUFFIXES = (".jsonl", ".ndjson", ".json", ".jsonl.gz", ".ndjson.gz", ".json.gz")
_HEX_ID = "^[0-9a-f]{32}$"


class InputError(ValueError):
    """An input that cannot be evaluated: missing files or columns, bad values. The message says which."""


def _expand(paths, what, suffixes):
    """Files named by ``paths`` (files, directories searched recursively for
    ``suffixes``, or globs), sorted, each once."""
    found = []
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            matches = [p for s in suffixes for p in glob.glob(os.path.join(glob.escape(path), "**", "*" + s),
                                                                 recursive=True)]
            if not matches:
                raise InputError(f"{what}: no {' or '.join(suffixes)} files in the directory {path}")
        elif glob.has_magic(path):
            matches = [p for p in glob.glob(path, recursive=True) if os.path.isfile(p)]
            if not matches:
                raise InputError(f"{what}: nothing matches {path}")
        elif os.path.isfile(path):
            matches = [path]
        else:
            raise InputError(f"{what}: {path}: no such file or directory")
        found.extend(os.path.abspath(p) for p in matches)
    return sorted(set(found))


def _spill_directory():
    return os.path.join(tempfile.gettempdir(), f"mab-evaluate-{os.getuid()}").replace("'", "''")


def _sql_list(paths):
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def _columns(con, relation):
    return {row[0]: row[1] for row in con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()}


@dataclass
class Batch:
    """A batch of decisions as flat numpy arrays.

    ``n`` decisions; ``offsets`` int64 (n + 1,) into the flat candidate
    arrays ``alpha``, ``beta`` float64 (total,) and ``ages`` float64
    (total,) (NaN: unknown) or None; ``prior_alpha``, ``prior_beta``,
    ``half_life`` float64 (n,) (half_life NaN: no decay); ``ranked`` int32
    (n, K), -1 past a decision's positions; ``rewards`` float64 (n, K);
    ``seeds`` uint64 (n,), from the decision ids; ``decision_ids`` a
    pyarrow string array (n,); ``item_ids`` the flat list of candidate ids
    (total,) when asked for, else None.
    """

    offsets: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    ages: np.ndarray | None
    prior_alpha: np.ndarray
    prior_beta: np.ndarray
    half_life: np.ndarray
    ranked: np.ndarray
    rewards: np.ndarray
    seeds: np.ndarray
    decision_ids: pa.Array
    item_ids: list | None = None

    @property
    def n(self):
        return self.offsets.shape[0] - 1

    @property
    def lengths(self):
        return np.diff(self.offsets)


class DecisionLog:
    """The decisions of one model in a decision log, joined with their rewards.

    ``logs``: paths (Parquet files, directories of them, globs);
    ``rewards``: paths (Parquet or JSON Lines files, directories, globs);
    ``model``: which model's decisions (None: ``prefer`` if the log has
    it, else the log must hold one model); ``positions``: K, how many positions to evaluate (None: the
    longest ``ranked`` in the log); ``memory_limit``: DuckDB's, a size
    such as "2GB" (default ``DEFAULT_MEMORY_LIMIT``; more spills to disk).
    Opening runs the checks and the reward
    join; ``batches()`` then streams the decisions. Raises InputError.
    """

    def __init__(self, logs, rewards, *, model=None, prefer=None, positions=None, threads=None, memory_limit=None):
        self.log_files = _expand(logs, "decision log", (".parquet",))
        self.reward_files = _expand(rewards, "rewards", (".parquet",) + _JSON_SUFFIXES)
        self.con = duckdb.connect()
        # Rows may come in any order (each carries its own rewards and ids);
        # keeping the files' order would make DuckDB buffer results of a
        # parallel scan, up to the whole log, instead of streaming them.
        self.con.execute("SET preserve_insertion_order = false")
        # DuckDB's default is 80% of the machine's memory, and it caches the
        # files it reads up to that: 19 GB here for a 15 GB log. The
        # evaluation streams; what must not fit spills to a temporary directory.
        self.con.execute(f"SET memory_limit = '{memory_limit or DEFAULT_MEMORY_LIMIT}'")
        self.con.execute(f"SET temp_directory = '{_spill_directory()}'")
        try:
            self.con.execute("SET enable_external_file_cache = false")
        except duckdb.Error:
            pass                # an older DuckDB without the cache
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        # The log is a view: DuckDB reads the files again for each query and
        # streams them; nothing of it is held in memory.
        try:
            self.con.execute(f"CREATE VIEW logs_all AS SELECT * FROM read_parquet({_sql_list(self.log_files)}, "
                             "union_by_name = true)")
            columns = _columns(self.con, "logs_all")
        except duckdb.Error as exc:
            raise InputError(f"decision log: cannot read: {exc}") from None
        missing = [c for c in REQUIRED_DECISION_COLUMNS if c not in columns]
        if missing:
            raise InputError(f"decision log: missing column(s) {', '.join(missing)} "
                             f"(it has {', '.join(columns)})")
        self.has = {c: c in columns for c in OPTIONAL_DECISION_COLUMNS}
        self._choose_model(model, prefer)
        self._read_rewards()
        self._check_log(positions)
        self._join_rewards()

    # -- setup ---------------------------------------------------------------------

    def _choose_model(self, model, prefer):
        counts = dict(self.con.execute("SELECT model, count(*) FROM logs_all GROUP BY model ORDER BY model").fetchall())
        if not counts:
            raise InputError("decision log: it holds no decisions")
        if model is None and prefer in counts:
            model = prefer
        if model is None:
            if len(counts) != 1:
                raise InputError("decision log: it holds decisions of the models "
                                 f"{', '.join(f'{m!r} ({c})' for m, c in counts.items())}: choose one with --model")
            model = next(iter(counts))
        if model not in counts:
            raise InputError(f"decision log: no decisions of model {model!r} "
                             f"(it has {', '.join(f'{m!r} ({c})' for m, c in counts.items())})")
        self.model = model
        self.decisions = counts[model]
        quoted = "'" + str(model).replace("'", "''") + "'"
        self.con.execute(f"CREATE VIEW logs AS SELECT * FROM logs_all WHERE model = {quoted}")

    def _read_rewards(self):
        parquet = [p for p in self.reward_files if p.endswith(".parquet")]
        jsonl = [p for p in self.reward_files if not p.endswith(".parquet")]
        parts = []
        try:
            if parquet:
                self.con.execute(f"CREATE VIEW rewards_parquet AS SELECT * FROM read_parquet({_sql_list(parquet)}, "
                                 "union_by_name = true)")
                have = _columns(self.con, "rewards_parquet")
                missing = [c for c in REQUIRED_REWARD_COLUMNS if c not in have]
                if missing:
                    raise InputError(f"rewards: missing column(s) {', '.join(missing)} (the Parquet files have "
                                     f"{', '.join(have)})")
                parts.append("SELECT decision_id::VARCHAR AS decision_id, item_id::VARCHAR AS item_id, "
                             "reward::DOUBLE AS reward FROM rewards_parquet")
            if jsonl:
                parts.append(
                    f"SELECT decision_id, item_id, reward FROM read_json({_sql_list(jsonl)}, "
                    "format = 'newline_delimited', "
                    "columns = {'decision_id': 'VARCHAR', 'item_id': 'VARCHAR', 'reward': 'DOUBLE'})")
            self.con.execute("CREATE TEMP TABLE reward_events AS " + " UNION ALL ".join(parts))
        except duckdb.Error as exc:
            raise InputError(f"rewards: cannot read: {exc}") from None
        bad = self.con.execute(
            "SELECT count(*), any_value(decision_id), any_value(item_id), any_value(reward) FROM reward_events "
            "WHERE decision_id IS NULL OR item_id IS NULL OR reward IS NULL OR NOT (reward BETWEEN 0 AND 1)"
        ).fetchone()
        if bad[0]:
            raise InputError(f"rewards: {bad[0]} event(s) lack decision_id, item_id or a reward in [0, 1], "
                             f"e.g. decision_id={bad[1]!r}, item_id={bad[2]!r}, reward={bad[3]!r}")
        self.reward_events = self.con.execute("SELECT count(*) FROM reward_events").fetchone()[0]
        self.con.execute("CREATE TEMP TABLE reward_pairs AS SELECT decision_id, item_id, max(reward) AS reward, "
                         "count(*) AS events FROM reward_events GROUP BY decision_id, item_id")
        self.reward_pairs = self.con.execute("SELECT count(*) FROM reward_pairs").fetchone()[0]

    def _check_log(self, positions):
        # Cheap columns only: the per-decision checks of the lists come with
        # the batches (a query that reads the lists here would read the log
        # once more, and DuckDB buffers list columns under DISTINCT).
        longest, no_ranking = self.con.execute(
            "SELECT max(len(ranked)), count(*) FILTER (WHERE ranked IS NULL OR len(ranked) = 0 "
            "OR decision_id IS NULL) FROM logs").fetchone()
        duplicates = self.con.execute("SELECT count(*) - count(DISTINCT decision_id) FROM logs").fetchone()[0]
        if duplicates:
            raise InputError(f"decision log: {duplicates} decision id(s) appear more than once "
                             "(each decision must be logged once)")
        if no_ranking:
            raise InputError(f"decision log: {no_ranking} decision(s) without a decision_id or a ranking")
        if positions is not None and positions < 1:
            raise InputError(f"positions must be >= 1, got {positions}")
        self.positions = int(longest) if positions is None else min(int(positions), int(longest))

    def _join_rewards(self):
        K = self.positions
        # Each shown (decision, position) with its item id, joined to the
        # rewards; one row per decision with its rewarded positions.
        self.con.execute(f"""
            CREATE TEMP TABLE shown_rewards AS
            WITH shown AS (
                SELECT decision_id,
                       unnest(range(len(r))) AS pos,
                       unnest(list_select(item_ids, [i + 1 for i in r])) AS item_id
                FROM (SELECT decision_id, item_ids, ranked[1:{K}] AS r FROM logs)
            )
            SELECT s.decision_id, s.pos, p.reward, p.events
            FROM shown s JOIN reward_pairs p ON s.decision_id = p.decision_id AND s.item_id = p.item_id
        """)
        matched_pairs, matched_events = self.con.execute(
            "SELECT count(*), coalesce(sum(events), 0) FROM "
            "(SELECT DISTINCT decision_id, pos, events FROM shown_rewards)").fetchone()
        # Events of decisions this evaluation does not read: another model's, or none in the log.
        self.unknown_decision_events = self.con.execute(
            "SELECT coalesce(sum(p.events), 0) FROM reward_pairs p ANTI JOIN logs l "
            "ON p.decision_id = l.decision_id").fetchone()[0]
        self.rewarded_positions = matched_pairs
        self.matched_events = int(matched_events)
        self.con.execute("CREATE TEMP TABLE decision_rewards AS SELECT decision_id, list(pos) AS rpos, "
                         "list(reward) AS rval FROM shown_rewards GROUP BY decision_id")

    def summary(self):
        """Counts of what was read, for the report: a dict."""
        return {
            "log_files": len(self.log_files),
            "reward_files": len(self.reward_files),
            "model": self.model,
            "decisions": self.decisions,
            "positions": self.positions,
            "reward_events": self.reward_events,
            "rewarded_positions": self.rewarded_positions,
            "reward_events_matched": self.matched_events,
            "reward_events_other_decisions": int(self.unknown_decision_events),
            "reward_events_not_shown": int(self.reward_events - self.matched_events - self.unknown_decision_events),
        }

    # -- streaming -----------------------------------------------------------------

    def batches(self, rows=20_000, item_ids=False):
        """Yield Batch objects of at most ``rows`` decisions, every decision
        once; with ``item_ids``, each with its candidates' ids (a Python list:
        for small logs)."""
        K = self.positions
        ages = "l.age_seconds" if self.has["age_seconds"] else "NULL::DOUBLE[]"
        half_life = "l.half_life_seconds" if self.has["half_life_seconds"] else "NULL::DOUBLE"
        query = f"""
            SELECT l.decision_id,
                   CASE WHEN regexp_full_match(l.decision_id, '{_HEX_ID[1:-1]}')
                        THEN ('0x' || l.decision_id[1:16])::UBIGINT
                        ELSE hash(l.decision_id) END AS id_seed,
                   l.prior_alpha::DOUBLE AS prior_alpha, l.prior_beta::DOUBLE AS prior_beta,
                   {half_life}::DOUBLE AS half_life_seconds,
                   l.alpha::DOUBLE[] AS alpha, l.beta::DOUBLE[] AS beta, {ages}::DOUBLE[] AS age_seconds,
                   l.ranked[1:{K}]::INTEGER[] AS ranked, len(l.item_ids) AS n_items,
                   r.rpos, r.rval{", l.item_ids" if item_ids else ""}
            FROM logs l LEFT JOIN decision_rewards r ON l.decision_id = r.decision_id
        """
        relation = self.con.sql(query)
        # DuckDB 2 renamed fetch_arrow_reader to to_arrow_reader.
        reader = getattr(relation, "to_arrow_reader", relation.fetch_arrow_reader)(rows)
        for record_batch in reader:
            if record_batch.num_rows:
                batch = _to_batch(record_batch, K)
                if item_ids:
                    batch.item_ids = record_batch.column("item_ids").flatten().to_pylist()
                yield batch


def _flat(list_array, name, decision_ids):
    """(offsets int64 (n + 1,) from 0, values float64) of a list<double>
    column without null lists or values."""
    if list_array.null_count:
        bad = np.flatnonzero(list_array.is_null().to_numpy(zero_copy_only=False))[0]
        raise InputError(f"decision log: decision {decision_ids[bad]} has no {name}")
    offsets = list_array.offsets.to_numpy().astype(np.int64)
    values = list_array.values.slice(offsets[0], offsets[-1] - offsets[0])
    if values.null_count:
        raise InputError(f"decision log: a null in {name}")
    return offsets - offsets[0], values.to_numpy()


def _ranges(starts, lengths):
    """The concatenation of range(starts[i], starts[i] + lengths[i]): int64."""
    lengths = lengths.astype(np.int64)
    total = int(lengths.sum())
    within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts.astype(np.int64), lengths) + within


def _padded(list_array, n, width, fill, dtype):
    """A list column as an (n, width) array, ``fill`` past each list's end; null lists are empty."""
    out = np.full((n, width), fill, dtype)
    # .offsets index the whole child array (.values), a slice included.
    offsets = list_array.offsets.to_numpy().astype(np.int64)
    lengths = np.minimum(np.diff(offsets), width)
    if list_array.null_count:
        lengths = np.where(list_array.is_null().to_numpy(zero_copy_only=False), 0, lengths)
    values = list_array.values.to_numpy(zero_copy_only=False)
    rows = np.repeat(np.arange(n), lengths)
    cols = _ranges(np.zeros(n), lengths)
    out[rows, cols] = values[_ranges(offsets[:-1], lengths)]
    return out


def _to_batch(rb, K):
    n = rb.num_rows
    ids = rb.column("decision_id")
    offsets, alpha = _flat(rb.column("alpha"), "alpha", ids)
    offsets_b, beta = _flat(rb.column("beta"), "beta", ids)
    if not np.array_equal(offsets, offsets_b):
        raise InputError("decision log: alpha and beta differ in length")
    lengths = np.diff(offsets)
    n_items = rb.column("n_items").to_numpy(zero_copy_only=False)
    wrong = (n_items != lengths) | (lengths == 0)
    if wrong.any():
        raise InputError(f"decision log: decision {ids[int(np.flatnonzero(wrong)[0])]} has no candidates, or its "
                         "item_ids, alpha and beta differ in length")
    bad = ~((alpha > 0) & np.isfinite(alpha) & (beta > 0) & np.isfinite(beta))
    if bad.any():
        d = int(np.searchsorted(offsets, np.flatnonzero(bad)[0], side="right") - 1)
        raise InputError(f"decision log: decision {ids[d]} has a Beta parameter that is not finite and > 0")

    age_col = rb.column("age_seconds")
    ages = None
    if age_col.null_count < n:
        ages = np.full(offsets[-1], np.nan)
        valid = ~age_col.is_null().to_numpy(zero_copy_only=False)
        age_offsets = age_col.offsets.to_numpy().astype(np.int64)
        wrong = valid & (np.diff(age_offsets) != lengths)
        if wrong.any():
            raise InputError(f"decision log: decision {ids[int(np.flatnonzero(wrong)[0])]}: "
                             "age_seconds and item_ids differ in length")
        values = age_col.values.to_numpy(zero_copy_only=False)
        ages[_ranges(offsets[:-1][valid], lengths[valid])] = values[_ranges(age_offsets[:-1][valid], lengths[valid])]

    ranked = _padded(rb.column("ranked"), n, K, -1, np.int32)
    valid = ranked >= 0
    if np.any(np.where(valid, ranked, 0) >= n_items[:, None]) or np.any(ranked < -1):
        d = int(np.flatnonzero(np.any((ranked >= n_items[:, None]) | (ranked < -1), axis=1))[0])
        raise InputError(f"decision log: decision {ids[d]} ranks an index outside its candidates")
    ordered = np.sort(ranked, axis=1)
    if np.any((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)):
        d = int(np.flatnonzero(np.any((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0), axis=1))[0])
        raise InputError(f"decision log: decision {ids[d]} ranks a candidate twice")

    rewards = np.zeros((n, K), np.float64)
    rpos = rb.column("rpos")
    if rpos.null_count < n:
        positions = _padded(rpos, n, K, -1, np.int64)
        values = _padded(rb.column("rval"), n, K, 0.0, np.float64)
        rows, slots = np.nonzero(positions >= 0)
        rewards[rows, positions[rows, slots]] = values[rows, slots]

    half_life = rb.column("half_life_seconds").to_numpy(zero_copy_only=False).astype(np.float64)
    return Batch(
        offsets=offsets,
        alpha=alpha,
        beta=beta,
        ages=ages,
        prior_alpha=rb.column("prior_alpha").to_numpy(zero_copy_only=False).astype(np.float64),
        prior_beta=rb.column("prior_beta").to_numpy(zero_copy_only=False).astype(np.float64),
        half_life=half_life,
        ranked=ranked,
        rewards=rewards,
        seeds=rb.column("id_seed").to_numpy(zero_copy_only=False).astype(np.uint64),
        decision_ids=ids,
    )
