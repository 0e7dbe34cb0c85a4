"""The embedded feature store: a CSV file, compiled once, mapped by every worker.

The CSV has a header row; its first column is the entity id, the others are
numeric features (counts), for example::

    item_id,successes,failures
    item-000000,33,33570

``mab.stores.csvfile`` reads it exactly as written or refuses it, naming the
line (the rules are in its docstring and in the README). Compiling then
builds a hash index over the ids and writes the result as plain ``.npy``
arrays into a cache directory keyed by the file's path, size and
modification time. Every worker maps those files read-only: the operating
system keeps one copy of the pages however many workers there are, and a
restarted worker is ready in milliseconds. The first process to need a
cache builds it under a file lock.

Under gunicorn, the master compiles, maps and checks every store before it
forks (``mab.preflight``, called from ``gunicorn.conf.py``), so a data error
stops the start with one message, and pins the copies it checked
(``pin``): its workers map exactly those and never read a CSV file, so a
file changed after the start reaches them only through a new check (a
restart, or a reload on HUP).
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
from mab.stores import _table, csvfile

log = logging.getLogger(__name__)

# Part of the cache key: bump when the cache's layout, or what the reader
# accepts, changes (3: the strict reader of mab.stores.csvfile; a copy compiled
# by a laxer one must never be served; 4: meta.json names the file's SHA-256
# and when it was compiled, the snapshot's identity in /ready and /metrics).
CACHE_FORMAT = 4
ARRAYS = ("blob", "records", "slots")
#: The column of when each row's counts were updated (mab.stores.csvfile).
TIMESTAMP_FEATURE = csvfile.TIMESTAMP_COLUMN
#: Next to a CSV file written by ``mab data compile --events``: which
#: journal's events the file holds, up to which sequence number (mab.feedback.fold).
EVENTS_SUFFIX = ".events.json"

# The compiled copies this process has checked, by the absolute path of
# their CSV file, and the descriptors that hold them (see pin). A gunicorn
# worker inherits both from the master that forked it.
_pinned = {}
_pin_fds = {}


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


def compile_csv(path, expected=None, digest=None):
    """Read, check and index a CSV file: ``(columns, {array name: array})``.
    ``digest``, a ``hashlib`` object, is fed the file's bytes.

    ``expected``, an ``os.stat_result`` of the file taken earlier (the
    cache key's), must still describe the file: a file that changes while
    it is read, or after its cache key was taken, is refused rather than
    half read. Raises ``DataError`` naming the path and, for the file's
    content, the line (see ``mab.stores.csvfile`` for the rules).
    """
    try:
        with open(path, "rb") as f:
            before = os.fstat(f.fileno())
            data = f.read()
            after = os.fstat(f.fileno())
    except OSError as exc:
        raise DataError(f"{path}: {exc.strerror}") from None
    versions = {_version(before), _version(after), (len(data), after.st_mtime_ns)}
    if expected is not None:
        versions.add(_version(expected))
    if len(versions) != 1:
        raise DataError(
            f"{path}: the file changed while it was read; write a new file under another "
            "name and rename it into place, so that readers see all of it or none"
        )
    if digest is not None:
        digest.update(data)
    try:
        table = csvfile.read_csv(data)
        del data        # the file's bytes are not needed while indexing
        return _index(*table)
    except csvfile.CsvError as exc:
        raise DataError(f"{path}: {exc}") from None


def compile_data(data):
    """Read, check and index the bytes of a CSV file: ``(columns, {array
    name: array})``. Raises ``mab.stores.csvfile.CsvError`` naming the line."""
    return _index(*csvfile.read_csv(data))


def _index(columns, blob, offsets, values, lines, nfc):
    slots = _table.build_slots(blob, offsets, lines)
    records = _table.build_records(offsets, values)
    if not nfc:
        csvfile.check_normal_forms(_table.IdIndex(slots, blob, records), blob, offsets, lines)
    return columns, {"blob": blob, "records": records, "slots": slots}


def _version(stat):
    return stat.st_size, stat.st_mtime_ns


def cache_path(source, cache_dir, stat=None):
    """Where the compiled copy of `source` lives; changes when the file does
    (or its events file, see ``read_events_file``). ``stat``: the file's
    ``os.stat`` (taken here when None)."""
    stat = os.stat(source) if stat is None else stat
    key = f"{os.path.abspath(source)}|{stat.st_size}|{stat.st_mtime_ns}|{CACHE_FORMAT}|{_table.HASH_VERSION}"
    try:
        events = os.stat(source + EVENTS_SUFFIX)
    except FileNotFoundError:
        pass
    else:
        key += f"|events|{events.st_size}|{events.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return os.path.join(cache_dir, f"{os.path.basename(source)}-{digest}")


def prepare(source, cache_dir):
    """Make sure the compiled copy of `source` exists; return (its path, whether we built it).

    Safe to call from many processes at once: one builds, the others wait on
    the lock and then find it built.
    """
    try:
        stat = os.stat(source)
        target = cache_path(source, cache_dir, stat)
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
        digest = hashlib.sha256()
        columns, arrays = compile_csv(source, expected=stat, digest=digest)
        events = read_events_file(source)
        building = tempfile.mkdtemp(dir=cache_dir, prefix=".building-")
        try:
            for name in ARRAYS:
                np.save(os.path.join(building, f"{name}.npy"), arrays[name])
            meta = {
                "source": os.path.abspath(source),
                # When the data was written: the snapshot's age counts from
                # here (mab_snapshot_created_timestamp_seconds).
                "source_mtime": stat.st_mtime,
                # Its content, as `sha256sum` prints it: which file is served.
                "sha256": digest.hexdigest(),
                "columns": columns,
                "rows": int(arrays["records"].shape[0] - 1),
                "compiled_at": time.time(),
                "build_seconds": round(time.perf_counter() - start, 3),
            }
            if events is not None:
                meta["events"] = events
            with open(os.path.join(building, "meta.json"), "w") as f:
                json.dump(meta, f)
            os.rename(building, target)   # atomic: readers see all or nothing
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        log.info("compiled %s (%d rows) into %s in %.2fs", source, meta["rows"], target, meta["build_seconds"])
        _remove_stale_caches(source, cache_dir, keep=target)
    return target, True


def read_events_file(source):
    """What the events file next to ``source`` says, if there is one: a
    dict with ``journal_id`` and ``through_seq`` (the file's counts include
    that journal's events up to that sequence number), else None.

    The events file names the CSV's SHA-256, so a CSV renamed into place
    without its events file (or the other way round) is refused rather than
    served with the wrong events counted twice or not at all. Raises
    ``DataError``."""
    path = source + EVENTS_SUFFIX
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot be read: {exc}") from None
    if not (isinstance(doc, dict) and isinstance(doc.get("journal_id"), str)
            and type(doc.get("through_seq")) is int and doc["through_seq"] >= 0
            and isinstance(doc.get("csv_sha256"), str)):
        raise DataError(f"{path}: expected {{\"journal_id\": ..., \"through_seq\": N, \"csv_sha256\": ...}}")
    digest = hashlib.sha256()
    try:
        with open(source, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise DataError(f"{source}: {exc.strerror}") from None
    if digest.hexdigest() != doc["csv_sha256"]:
        raise DataError(
            f"{path} describes another version of {source} (its SHA-256 differs): write the CSV and its "
            "events file together (mab data compile --events writes both)"
        )
    return {"journal_id": doc["journal_id"], "through_seq": doc["through_seq"]}


def _remove_stale_caches(source, cache_dir, keep):
    prefix = os.path.basename(source) + "-"
    for entry in os.listdir(cache_dir):
        path = os.path.join(cache_dir, entry)
        if entry.startswith(prefix) and path != keep and not entry.endswith(".lock"):
            try:
                with open(os.path.join(path, "meta.json")) as f:
                    if json.load(f).get("source") != os.path.abspath(source):
                        continue
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            except (OSError, ValueError):
                continue
            try:
                # A running service pins its copy with a shared lock (see pin).
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            else:
                shutil.rmtree(path, ignore_errors=True)
            finally:
                os.close(fd)


def pin(copies):
    """Make ``Store.load``, in this process and in every process it forks
    from now on, map these compiled copies: ``{CSV path: compiled copy}``,
    as ``mab.preflight.check_embedded_stores`` found them. The gunicorn
    master pins what it checked, so its workers serve exactly that data and
    never read a CSV file themselves: a file changed or broken after the
    start reaches them only through a new check (a restart, or a reload on
    HUP). Raises ``DataError`` if a copy cannot be opened; then the earlier
    pins stay.

    Each copy is held by a shared ``flock`` on its directory for as long as
    this process or a child lives, so that no other process removes it as
    stale meanwhile. Replaces any earlier pins.
    """
    fds = {}
    try:
        for target in set(copies.values()):
            fd = _pin_fds.get(target)
            if fd is None:
                fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH)
                except OSError:
                    os.close(fd)
                    raise
            fds[target] = fd
    except OSError as exc:
        for target, fd in fds.items():
            if _pin_fds.get(target) != fd:
                os.close(fd)
        raise DataError(f"the compiled copy {exc.filename} cannot be pinned: {exc.strerror}") from None
    for target, fd in _pin_fds.items():
        if target not in fds:
            os.close(fd)
    _pin_fds.clear()
    _pin_fds.update(fds)
    _pinned.clear()
    _pinned.update({os.path.abspath(path): target for path, target in copies.items()})


def pinned():
    """``{CSV path: compiled copy}`` pinned in this process (see pin)."""
    return dict(_pinned)


class Store:
    """Features from a CSV file, looked up by a compiled hash index."""

    backend = "embedded"
    # The feature a model with a half-life reads its counts' time from.
    timestamp_feature = TIMESTAMP_FEATURE

    def __init__(self, settings, *, cache_dir):
        self.settings = settings
        self.cache_dir = cache_dir
        self._arrays = None
        self._index = None
        self._column = {}
        self._info = {}
        self.compiled_path = None

    def prepare(self):
        """Build the compiled copy if needed: ``(its path, whether we built it)``."""
        return prepare(self.settings.path, self.cache_dir)

    def load(self):
        """Map the compiled copy of the CSV file: the one this process (or
        the gunicorn master that forked it) pinned after checking it (see
        ``pin``), else the file's current one, compiled here if need be.
        Raises ``DataError``."""
        start = time.perf_counter()
        target = _pinned.get(os.path.abspath(self.settings.path))
        built = False
        if target is None:
            target, built = self.prepare()
        self.open_compiled(target, built=built, start=start)

    def open_compiled(self, target, *, built=False, start=None):
        """Map the compiled copy in directory ``target`` read-only and read
        its columns. Raises ``DataError`` if it cannot be read."""
        start = time.perf_counter() if start is None else start
        try:
            with open(os.path.join(target, "meta.json")) as f:
                meta = json.load(f)
            # Plain ndarray views of read-only maps: np.memmap's subclass hooks
            # would cost microseconds on every slice of the hot path.
            arrays = {
                name: np.load(os.path.join(target, f"{name}.npy"), mmap_mode="r").view(np.ndarray)
                for name in ARRAYS
            }
        except OSError as exc:
            raise DataError(
                f"{self.settings.path}: its compiled copy {target} cannot be read ({exc.strerror}); "
                "restart the service, or reload it (HUP), to compile and check the file again"
            ) from None
        self._arrays = arrays
        self._index = _table.IdIndex(arrays["slots"], arrays["blob"], arrays["records"])
        self._column = {name: i for i, name in enumerate(meta["columns"][1:])}
        self._feature_rows = {}    # features tuple -> their indices in a record
        self.compiled_path = target
        self._info = {
            "backend": self.backend,
            "source": meta["source"],
            "items": meta["rows"],
            # The snapshot: its compiled copy's name (the file's path, size
            # and modification time), the file's SHA-256, when the file was
            # written and when it was compiled (Unix times).
            "snapshot": os.path.basename(target),
            "sha256": meta.get("sha256"),
            "source_mtime": meta.get("source_mtime"),
            "compiled_at": meta.get("compiled_at"),
            "features": meta["columns"][1:],
            "load_seconds": round(time.perf_counter() - start, 3),
            "compiled_here": built,
        }
        if "events" in meta:
            self._info["events"] = meta["events"]

    def check_features(self, names):
        """Raise ConfigError unless the store has every feature named."""
        absent = [name for name in names if name not in self._column]
        if absent:
            raise ConfigError(
                f"store {self.settings.name!r} ({self.settings.path}) has no feature(s) "
                f"{', '.join(map(repr, absent))}; it has {', '.join(map(repr, self._column))}"
            )

    def fetch(self, item_ids, prefix, suffix, features, deadline=None, wait=True):
        # In memory: never waits, whatever ``wait`` says.
        rows, missing = self._index.find(item_ids, prefix.encode(), suffix.encode())
        feature_rows = self._feature_rows.get(features)
        if feature_rows is None:
            feature_rows = self._feature_rows[features] = tuple(self._column[name] for name in features)
        matrix = self._index.gather(rows, feature_rows)
        return FeatureBatch(tuple(matrix), missing, rows=rows)

    def find_rows(self, item_ids, prefix="", suffix=""):
        """Rows of ``prefix + id + suffix`` for a list of ids: an int64 array,
        ``n_rows`` for an id the snapshot does not hold."""
        return self._index.find(item_ids, prefix.encode(), suffix.encode())[0]

    @property
    def n_rows(self):
        return self._index.n_rows

    @property
    def events_folded(self):
        """``{"journal_id", "through_seq"}`` of the journal events this
        snapshot holds (mab data compile --events), or None."""
        return self._info.get("events")

    def describe(self):
        """What /ready shows: the source, rows (``items``), the snapshot's
        identity and times, and ``age_seconds``: seconds since the file was
        written."""
        info = dict(self._info)
        if info.get("source_mtime") is not None:
            info["age_seconds"] = round(max(0.0, time.time() - info["source_mtime"]), 3)
        return info

    def close(self):
        self._arrays = None
        self._index = None
