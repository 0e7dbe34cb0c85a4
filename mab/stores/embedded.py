"""The embedded feature store: a CSV file, compiled once, mapped by every worker.

The CSV has a header row; its first column is the entity id, the others are
numeric features (counts: finite and >= 0), for example::

    item_id,successes,failures
    item-000000,33,33570

Loading parses the CSV with a compiled parser and builds a hash index over
the ids, then writes the result as plain ``.npy`` arrays into a cache
directory keyed by the file's path, size and modification time. Every worker
then maps those files read-only: the operating system keeps one copy of the
pages however many workers there are, and a restarted worker is ready in
milliseconds. The first process to need a cache builds it under a file lock;
the gunicorn master builds it before forking (see ``gunicorn.conf.py``), so a
data error stops the start instead of leaving workers unready.
"""

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from mab.errors import ConfigError, DataError
from mab.stores import FeatureBatch
from mab.stores import _table

log = logging.getLogger(__name__)

# Part of the cache key: bump when the cache's layout changes.
CACHE_FORMAT = 2
ARRAYS = ("blob", "records", "slots")


@dataclass(frozen=True)
class Settings:
    name: str
    path: str
    backend: str = "embedded"

    @classmethod
    def from_table(cls, name, table, where, base_dir):
        table = dict(table)
        path = table.pop("path", None)
        if table:
            raise ConfigError(f"{where}: unknown setting(s) {', '.join(sorted(table))}")
        if not path:
            hint = " (set MAB_DATA)" if name == "default" else ""
            raise ConfigError(f"{where}.path: the embedded store needs a CSV file{hint}")
        if not isinstance(path, str):
            raise ConfigError(f"{where}.path must be a string, got {path!r}")
        return cls(name=name, path=os.path.join(base_dir, os.path.expanduser(path)))


def read_header(data):
    """Column names from the first line of the file; offset of the body."""
    newline = data.find(b"\n")
    end = len(data) if newline < 0 else newline
    line = data[:end].decode("utf-8-sig", "replace").rstrip("\r")
    columns = [name.strip() for name in line.split(",")]
    if len(columns) < 2 or not all(columns):
        raise DataError(f"header {line!r}: expected an id column and at least one feature column")
    if len(set(columns)) != len(columns):
        raise DataError(f"header {line!r}: column names must be unique")
    return columns, (end + 1 if newline >= 0 else end)


def compile_csv(path):
    """Parse and index a CSV file: (columns, {array name: array})."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DataError(f"{path}: {exc.strerror}") from None
    try:
        columns, body = read_header(data)
        blob, offsets, values, lines = _table.parse_csv(data, body, columns)
        del data
        slots = _table.build_slots(blob, offsets, lines)
    except (DataError, _table.CsvError) as exc:
        raise DataError(f"{path}: {exc}") from None
    return columns, {"blob": blob, "records": _table.build_records(offsets, values), "slots": slots}


def cache_path(source, cache_dir):
    """Where the compiled copy of `source` lives; changes when the file does."""
    stat = os.stat(source)
    key = f"{os.path.abspath(source)}|{stat.st_size}|{stat.st_mtime_ns}|{CACHE_FORMAT}|{_table.HASH_VERSION}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return os.path.join(cache_dir, f"{os.path.basename(source)}-{digest}")


def prepare(source, cache_dir):
    """Make sure the compiled copy of `source` exists; return (its path, whether we built it).

    Safe to call from many processes at once: one builds, the others wait on
    the lock and then find it built.
    """
    try:
        target = cache_path(source, cache_dir)
    except OSError as exc:
        raise DataError(f"{source}: {exc.strerror}") from None
    if os.path.exists(os.path.join(target, "meta.json")):
        return target, False
    os.makedirs(cache_dir, exist_ok=True)
    with open(target + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(os.path.join(target, "meta.json")):
            return target, False
        start = time.perf_counter()
        columns, arrays = compile_csv(source)
        building = tempfile.mkdtemp(dir=cache_dir, prefix=".building-")
        try:
            for name in ARRAYS:
                np.save(os.path.join(building, f"{name}.npy"), arrays[name])
            meta = {
                "source": os.path.abspath(source),
                "columns": columns,
                "rows": int(arrays["records"].shape[0] - 1),
                "build_seconds": round(time.perf_counter() - start, 3),
            }
            with open(os.path.join(building, "meta.json"), "w") as f:
                json.dump(meta, f)
            os.rename(building, target)   # atomic: readers see all or nothing
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        log.info("compiled %s (%d rows) into %s in %.2fs", source, meta["rows"], target, meta["build_seconds"])
        _remove_stale_caches(source, cache_dir, keep=target)
    return target, True


def _remove_stale_caches(source, cache_dir, keep):
    prefix = os.path.basename(source) + "-"
    for entry in os.listdir(cache_dir):
        path = os.path.join(cache_dir, entry)
        if entry.startswith(prefix) and path != keep and not entry.endswith(".lock"):
            try:
                with open(os.path.join(path, "meta.json")) as f:
                    if json.load(f).get("source") != os.path.abspath(source):
                        continue
            except (OSError, ValueError):
                continue
            shutil.rmtree(path, ignore_errors=True)


class Store:
    """Features from a CSV file, looked up by a compiled hash index."""

    backend = "embedded"

    def __init__(self, settings, *, cache_dir):
        self.settings = settings
        self.cache_dir = cache_dir
        self._arrays = None
        self._index = None
        self._column = {}
        self._info = {}

    def prepare(self):
        """Build the compiled copy if needed (done by the master before fork)."""
        return prepare(self.settings.path, self.cache_dir)

    def load(self):
        start = time.perf_counter()
        target, built = self.prepare()
        with open(os.path.join(target, "meta.json")) as f:
            meta = json.load(f)
        # Plain ndarray views of read-only maps: np.memmap's subclass hooks
        # would cost microseconds on every slice of the hot path.
        arrays = {
            name: np.load(os.path.join(target, f"{name}.npy"), mmap_mode="r").view(np.ndarray)
            for name in ARRAYS
        }
        self._arrays = arrays
        self._index = _table.IdIndex(arrays["slots"], arrays["blob"], arrays["records"])
        self._column = {name: i for i, name in enumerate(meta["columns"][1:])}
        self._feature_rows = {}    # features tuple -> their indices in a record
        self._info = {
            "backend": self.backend,
            "source": meta["source"],
            "items": meta["rows"],
            "features": meta["columns"][1:],
            "load_seconds": round(time.perf_counter() - start, 3),
            "compiled_here": built,
        }

    def check_features(self, names):
        """Raise ConfigError unless the store has every feature named."""
        absent = [name for name in names if name not in self._column]
        if absent:
            raise ConfigError(
                f"store {self.settings.name!r} ({self.settings.path}) has no feature(s) "
                f"{', '.join(map(repr, absent))}; it has {', '.join(map(repr, self._column))}"
            )

    def fetch(self, item_ids, prefix, suffix, features, deadline=None):
        rows, missing = self._index.find(item_ids, prefix.encode(), suffix.encode())
        feature_rows = self._feature_rows.get(features)
        if feature_rows is None:
            feature_rows = self._feature_rows[features] = tuple(self._column[name] for name in features)
        matrix = self._index.gather(rows, feature_rows)
        return FeatureBatch(tuple(matrix), missing)

    def describe(self):
        return dict(self._info)

    def close(self):
        self._arrays = None
        self._index = None
