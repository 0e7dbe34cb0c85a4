"""One model's online updates on this node: its overlay file and how events reach it.

The overlay (``mab.feedback._overlay.Overlay``) is a file in the node's
state directory that every worker maps: count deltas per entity since the
model's snapshot, keyed by the snapshot row (the embedded store's compiled
index gives every request's rows already) or, for an entity the snapshot
lacks, by its id bytes. One file per model and snapshot: its name digests
the model's settings, the compiled copy and the journal, so a new snapshot
(``mab data compile --events``, then a reload) gets a fresh overlay that
takes in only the events the snapshot does not hold (its ``through_seq``).
"""

import hashlib
import logging
import mmap
import os

from mab.feedback import _overlay

log = logging.getLogger(__name__)


def overlay_name(model_config, store, journal_id, settings):
    """The file name of a model's overlay over a loaded embedded store."""
    key = "|".join(map(str, (
        model_config.name, model_config.successes, model_config.failures, model_config.entity_id.text,
        model_config.half_life_seconds, store.compiled_path, journal_id, settings.overlay_max_entries,
        settings.overlay_key_bytes, _overlay.LAYOUT_VERSION,
    )))
    return f"overlay-{hashlib.sha256(key.encode()).hexdigest()[:20]}.bin"


def map_file(path, size=None):
    """``(mmap, fd)`` of a file mapped shared and writable; ``size``: its
    length when it is created, all of it allocated at once (zeros) so that
    a full disk or tmpfs fails here, with ENOSPC, and never later as a
    SIGBUS when a worker touches a page. Raises ``OSError``."""
    fd = os.open(path, os.O_RDWR | (os.O_CREAT if size is not None else 0), 0o600)
    try:
        if size is not None:
            os.ftruncate(fd, size)
            os.posix_fallocate(fd, 0, size)
        length = os.fstat(fd).st_size
        return mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE), fd
    except BaseException:
        os.close(fd)
        raise


class ModelOverlay:
    """A model's overlay as this process sees it: the mapped table, and the
    model's store (to find an event's row) and entity template.

    ``node``: the ``FeedbackNode`` whose lock guards every change; the
    prediction path calls ``add_to`` without it.
    """

    def __init__(self, node, model_config, store, path):
        self.node = node
        self.model = model_config
        self.store = store
        self.path = path
        self._map, self._fd = map_file(path)
        self.table = _overlay.Overlay(self._map)
        self._parts = {}

    @classmethod
    def create(cls, node, model_config, store, path, settings, base_seq, start):
        """A new overlay file at ``path`` (written under a temporary name and
        renamed into place when complete), empty, taking events after
        ``base_seq`` from journal Position ``start`` on. Under the node's lock."""
        n_rows = store.n_rows
        layout = _overlay.overlay_layout(n_rows, settings.overlay_max_entries, settings.overlay_key_bytes)
        temporary = f"{path}.{os.getpid()}.tmp"
        buffer, fd = map_file(temporary, layout["total"])
        try:
            _overlay.init_overlay(
                buffer, n_rows, settings.overlay_max_entries, settings.overlay_key_bytes,
                model_config.half_life_seconds or 0.0, base_seq, start.segment, start.offset,
            )
        finally:
            buffer.close()
            os.close(fd)
        os.rename(temporary, path)
        return cls(node, model_config, store, path)

    # -- the prediction path ---------------------------------------------------------

    def add_to(self, successes, failures, rows, item_ids, prefix, suffix, now):
        """Add this node's deltas to a request's counts (float64 arrays, in
        place), decayed to ``now``. Catches up first if another process's
        events have not reached this overlay yet (after a reload: a new
        snapshot's overlay, built while the old workers took events)."""
        table = self.table
        if table.applied_seq < self.node.state.last_seq:
            self.node.catch_up()
        start = 0
        while True:
            stuck = table.add(successes, failures, rows, item_ids, prefix.encode(), suffix.encode(), now, start)
            if stuck < 0:
                return
            # A writer died holding this entry: complete its update, go on.
            self.node.recover()
            start = stuck

    # -- the writer (under the node's lock) ---------------------------------------------

    def parts(self, user_id):
        parts = self._parts.get(user_id)
        if parts is None:
            parts = self.model.entity_id.parts(user_id)
            if len(self._parts) < 4096:
                self._parts[user_id] = parts
        return parts

    def entity(self, item_id, user_id):
        """``(row, key)`` of an event's entity: its snapshot row, or None and
        its id bytes when the snapshot lacks it."""
        prefix, suffix = self.parts(user_id)
        row = int(self.store.find_rows([item_id], prefix, suffix)[0])
        if row < self.store.n_rows:
            return row, None
        return None, (prefix + item_id + suffix).encode()

    def find(self, row, key):
        """The entry of an entity, or -1 if it has none yet."""
        return self.table.find_row(row) if key is None else self.table.find_key(key)

    def entry(self, row, key):
        """The entry of an entity, inserted if need be; -1 when the overlay is full."""
        return self.table.entry_for_row(row) if key is None else self.table.entry_for_key(key)

    def apply(self, record, batch_start, entity=None):
        """Take in one journaled event (a ``journal.Record``): added to its
        entity if it is this model's, else only noted as seen.
        ``batch_start``: the Position of its batch (read again after a crash);
        ``entity``: its ``(row, key)`` if the caller looked it up already."""
        table = self.table
        if record.seq <= table.applied_seq:
            return
        if record.model != self.model.name:
            table.advance(record.seq, batch_start.segment, batch_start.offset)
            return
        if self.model.entity_id.needs_user and record.user_id is None:
            log.error("overlay of model %r: event %d has no user_id (the model's entity ids need one); skipped",
                      self.model.name, record.seq)
            table.note_overflow()
            table.advance(record.seq, batch_start.segment, batch_start.offset)
            return
        row, key = entity or self.entity(record.item_id, record.user_id)
        entry = self.entry(row, key)
        if entry < 0:
            log.error("overlay of model %r is full (overlay_max_entries or overlay_key_bytes): event %d is "
                      "journaled but not applied online; fold the journal (mab data compile --events)",
                      self.model.name, record.seq)
            table.note_overflow()
            table.advance(record.seq, batch_start.segment, batch_start.offset)
            return
        table.apply(entry, record.reward, record.time, record.seq, batch_start.segment, batch_start.offset)

    def describe(self):
        return {
            "file": self.path,
            "applied_seq": self.table.applied_seq,
            "base_seq": self.table.base_seq,
            "max_entries": self.table.max_entries,
            **self.table.counters(),
        }

    def close(self):
        self.table = None
        try:
            self._map.close()
        except BufferError:
            pass        # a request still holds a view; the process is ending anyway
        os.close(self._fd)
