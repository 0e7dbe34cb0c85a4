"""Where the writer thread puts batches of decision records.

Two sinks, the same interface (``write``, ``rotate_if_due``, ``close``,
``describe``); each call returns ``{model: records}`` that became visible
to readers with it, which ``mab.decisions.log`` counts as logged:

- ``ParquetSink``: rotated Parquet files per worker, written under a
  hidden temporary name (``.NAME.tmp``) and renamed into place once closed
  and synced, so a reader never sees a partial file. The records of a file
  become visible, and count as logged, when it is renamed.
- ``JsonLinesSink``: one JSON object a line on standard output, for a
  cluster's log collector; a record counts as logged once written.

A sink that fails raises ``SinkError`` saying which records became
visible and which were lost; it is ready for the next batch afterwards.
A Parquet file whose write failed is removed with the records it held (it
may end in half a row group): a name a reader sees always holds a
complete file.
"""

import logging
import os
import re
import socket
import time
from collections import Counter

from mab.decisions import record as rec

log = logging.getLogger(__name__)


class SinkError(Exception):
    """A write or a file's completion failed. ``committed``: {model: n}
    records that nevertheless became visible; ``lost``: {model: n} records
    that never will (those of the failed call included)."""

    def __init__(self, message, *, committed=None, lost=None):
        super().__init__(message)
        self.committed = dict(committed or {})
        self.lost = dict(lost or {})


def default_compression():
    """zstd when this pyarrow has it (the smallest files at a modest CPU
    cost, docs/decisions.md), else snappy (every build has it)."""
    import pyarrow as pa

    return "zstd" if pa.Codec.is_available("zstd") else "snappy"


def _safe(text):
    """``text`` with anything but letters, digits, '.', '_' and '-' replaced (for file names)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text) or "host"


class ParquetSink:
    """Rotated Parquet files in ``directory``, one series per process.

    Names: ``decisions-START-HOST-PID-SEQ.parquet``: START the UTC time the
    sink was made (``20250131T120000Z``), HOST this machine's name, PID the
    worker's process id, SEQ a six-digit sequence number from 000000.
    Together they do not repeat across workers, restarts (a container's
    workers get the same small pids each time) and machines sharing a
    directory. A file holds one row group per ``write`` and is closed after
    ``rotate_records`` records (it may pass them by one batch) or when
    ``rotate_if_due`` finds it ``rotate_seconds`` old; 0 turns either
    limit off.

    Closing: the writer writes the footer, the file is ``fsync``-ed, renamed
    from ``.NAME.tmp`` to ``NAME``, and the directory ``fsync``-ed, so that
    after a crash or power loss a visible name always has a complete file.
    A worker killed with SIGKILL leaves its open file under the temporary
    name: never read (Parquet readers, DuckDB and BigQuery globs such as
    ``*.parquet`` skip it), and safe to delete.

    Raises ``OSError`` (the directory cannot be made or written) when made;
    ``write`` and ``close`` raise ``SinkError``.
    """

    name = "parquet"

    def __init__(self, directory, *, rotate_records=100_000, rotate_seconds=300.0, compression=None,
                 clock=time.monotonic):
        import pyarrow.parquet  # noqa: F401  (fail here, at start, if pyarrow is missing)

        self.directory = prepare_directory(directory)
        self.rotate_records = rotate_records
        self.rotate_seconds = rotate_seconds
        self.compression = compression or default_compression()
        self.clock = clock
        started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.prefix = f"decisions-{started}-{_safe(socket.gethostname())}-{os.getpid()}"
        self._sequence = 0
        self._writer = None
        self._path = None
        self._opened = None
        self._in_file = Counter()      # model -> records in the open file
        self.files_closed = 0

    # -- the interface -------------------------------------------------------

    def write(self, records, infos):
        """Append ``records`` to the open file (opening one if need be) as
        one row group; close it if it reached ``rotate_records``."""
        from mab.decisions.arrow import models_of, to_tables

        batch = models_of(records)
        try:
            tables = to_tables(records, infos)
        except Exception as exc:
            raise SinkError(f"building {len(records)} records: {exc!r}", lost=batch) from exc
        try:
            if self._writer is None:
                self._open()
            for table in tables:
                self._writer.write_table(table, row_group_size=table.num_rows)
        except Exception as exc:
            # The file may end in half a row group: it is removed, never
            # completed, and its earlier records are lost with this batch.
            shown = self._path or self.directory
            lost = Counter(self._discard_open_file())
            lost.update(batch)
            raise SinkError(f"writing {len(records)} records to {shown}: {exc}", lost=lost) from exc
        self._in_file.update(batch)
        if self.rotate_records and sum(self._in_file.values()) >= self.rotate_records:
            return self._finish()
        return {}

    def rotate_if_due(self, now=None):
        """Close the open file if it is ``rotate_seconds`` old."""
        if self._writer is None or not self.rotate_seconds:
            return {}
        now = self.clock() if now is None else now
        if now - self._opened >= self.rotate_seconds:
            return self._finish()
        return {}

    def close(self):
        """Close the open file, if any, into place."""
        if self._writer is None:
            return {}
        return self._finish()

    def describe(self):
        return {
            "sink": self.name,
            "directory": self.directory,
            "compression": self.compression,
            "file": None if self._path is None else os.path.basename(self._path),
            "records_in_file": sum(self._in_file.values()),
            "files_closed": self.files_closed,
        }

    # -- files -----------------------------------------------------------------

    def _names(self):
        name = f"{self.prefix}-{self._sequence:06d}.parquet"
        return os.path.join(self.directory, f".{name}.tmp"), os.path.join(self.directory, name)

    def _open(self):
        import pyarrow.parquet as pq

        from mab.decisions.arrow import PARQUET_OPTIONS, SCHEMA

        temporary, _ = self._names()
        self._writer = pq.ParquetWriter(temporary, SCHEMA, compression=self.compression, **PARQUET_OPTIONS)
        self._path = temporary
        self._opened = self.clock()

    def _finish(self):
        """Footer, fsync, rename, fsync the directory: the open file's
        records become visible. Returns them {model: n}; raises SinkError."""
        temporary, final = self._names()
        records = dict(self._in_file)
        try:
            self._writer.close()
            _fsync_path(temporary)
            os.rename(temporary, final)
            _fsync_path(self.directory)
        except Exception as exc:
            self._discard(temporary)
            raise SinkError(f"closing {temporary}: {exc}", lost=records) from exc
        finally:
            self._reset()
        self.files_closed += 1
        log.debug("decisions: %s closed with %d records", final, sum(records.values()))
        return records

    def _discard_open_file(self):
        """Remove the open file (after a failed write). Returns its records {model: n}."""
        records = dict(self._in_file)
        path = self._path
        try:
            if self._writer is not None:
                self._writer.close()
        except Exception:
            pass
        finally:
            self._reset()
        if path is not None:
            self._discard(path)
        return records

    def _discard(self, path):
        try:
            os.remove(path)
        except OSError:
            pass

    def _reset(self):
        self._writer = None
        self._path = None
        self._opened = None
        self._in_file = Counter()
        self._sequence += 1


def prepare_directory(directory):
    """Make ``directory`` if need be and check that this process can write
    there. Returns its absolute path; raises ``OSError``. (No pyarrow: the
    gunicorn master calls it before it forks.)"""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(13, "Permission denied: not writable", directory)
    return directory


def _fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class JsonLinesSink:
    """One JSON object a line (``mab.decisions.record.json_line``) on a
    file descriptor: standard output by default, where a cluster's log
    collector reads it.

    Each line is one ``write(2)`` (repeated only if the kernel takes part
    of it). Lines up to PIPE_BUF (4096 bytes on Linux) are written to a pipe
    atomically; longer ones (a 400-candidate record is ~20 kB) can be
    interleaved with another process's writes to the same pipe when it is
    full, and container runtimes split lines over 16 KiB into partial
    entries that collectors join again (docs/decisions.md).
    """

    name = "jsonl"

    def __init__(self, fd=1):
        self.fd = fd
        self.lines = 0

    def write(self, records, infos):
        written = Counter()
        for record in records:
            line = rec.json_line(record, infos[record[rec.MODEL]])
            try:
                _write_all(self.fd, line)
            except OSError as exc:
                lost = Counter(r[rec.MODEL] for r in records)
                lost.subtract(written)
                raise SinkError(f"writing to fd {self.fd}: {exc}", committed=written, lost=+lost) from exc
            written[record[rec.MODEL]] += 1
            self.lines += 1
        return dict(written)

    def rotate_if_due(self, now=None):
        return {}

    def close(self):
        return {}

    def describe(self):
        return {"sink": self.name, "fd": self.fd, "lines": self.lines}


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
