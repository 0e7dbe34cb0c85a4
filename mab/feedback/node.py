"""A node's feedback: the journal, the dedup window and the overlays, under one lock.

Every worker of a node (and the gunicorn master, before it forks) holds a
``FeedbackNode`` over the same files:

* the journal (``mab.feedback.journal``): the truth, on disk;
* ``node.bin``: how far the node has read the journal (``NodeState``);
* ``dedup.bin``: the keys of recent events (``DedupWindow``);
* ``overlay-*.bin``: per online model, its count deltas (``Overlay``).

Everything but the journal is derived from it, lives in the state directory
(``/dev/shm`` by default: memory), and is rebuilt from the journal when the
server starts (``prepare``) or when a writer died in the middle of changing
it. One writer at a time, under the journal's lock (an ``flock``: see
``Journal.lock``), does, for a batch of events: catch up with the journal
(events another process journaled but did not finish applying, a torn tail
to cut), drop the duplicates, append the rest to the journal (synced as
configured), remember their keys, add them to the overlays, and publish
the new sequence number. A prediction compares its overlay's sequence
number with the node's; if another process's events have not reached the
overlay yet, it catches up first (under the lock). Why one lock rather
than one applying process: the lock is held for microseconds, the kernel
releases it if its holder dies, and there is no extra process to supervise
or to pass events to; readers never take it.
"""

import hashlib
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field

from mab.errors import DataError, Unavailable
from mab.feedback import _window
from mab.feedback.journal import Journal, JournalCorrupt, Position, Record, encode_line, format_time
from mab.feedback.overlay import ModelOverlay, map_file, overlay_name

log = logging.getLogger(__name__)

NODE_FILE = "node.bin"
DEDUP_FILE = "dedup.bin"


class OverlayFull(Unavailable):
    """A model's overlay has no room for the batch's new entities."""

    code = "overlay_full"


class FeedbackUnavailable(Unavailable):
    code = "feedback_unavailable"


def state_directory(settings):
    """The node's state directory: in ``settings.state_dir``, named by the journal's path."""
    digest = hashlib.sha256(settings.journal.encode()).hexdigest()[:16]
    return os.path.join(settings.state_dir, f"mab-feedback-{digest}")


def event_key(decision_id, item_id):
    """The dedup key of (decision id, item id): a 128-bit BLAKE2b digest as
    two words, the first odd (all zeros marks an empty slot)."""
    a, b = decision_id.encode(), item_id.encode()
    digest = hashlib.blake2b(len(a).to_bytes(4, "little") + a + b, digest_size=16).digest()
    return int.from_bytes(digest[:8], "little") | 1, int.from_bytes(digest[8:], "little")


@dataclass
class Accepted:
    """What became of a batch: how many events were journaled (sequence
    numbers ``first_seq``..``last_seq``), and the indices of the duplicates."""

    accepted: int
    duplicates: list = field(default_factory=list)
    first_seq: int | None = None
    last_seq: int | None = None


class FeedbackNode:
    """This process's handle on the node's feedback state (see the module docstring).

    ``config``: the service's ``mab.config.Config``; ``clock``: Unix seconds
    (tests inject one). Nothing is opened until ``open``.
    """

    def __init__(self, config, *, clock=time.time):
        self.config = config
        self.settings = config.feedback
        self.clock = clock
        self.directory = state_directory(self.settings)
        self.journal = None
        self.state = None
        self.dedup = None
        self.overlays = {}
        self._files = []            # (mmap, fd) of node.bin and dedup.bin
        self._open_lock = threading.Lock()

    @property
    def opened(self):
        return self.state is not None

    # -- opening ----------------------------------------------------------------------

    def open(self, stores=None, *, fresh=False):
        """Map the node's state and the overlays of its online models over
        ``stores`` (name -> loaded store), building what is missing (all of
        it when ``fresh``) from the journal. Idempotent for the node's state;
        overlays already open stay. Raises ``DataError`` for a snapshot that
        holds another journal's events, ``JournalCorrupt``, ``OSError``."""
        with self._open_lock:
            if self.journal is None:
                s = self.settings
                self.journal = Journal(s.journal, fsync=s.fsync, fsync_interval=s.fsync_interval_ms / 1000,
                                       segment_bytes=s.segment_bytes)
            with self.journal.lock():
                if fresh:
                    self._remove_state()
                if self.state is None:
                    os.makedirs(self.directory, exist_ok=True)
                    self._open_node()
                self._sync_locked()
                for name, model in self.config.models.items():
                    if model.online_updates and stores is not None and name not in self.overlays:
                        self.overlays[name] = self._open_overlay(model, stores[model.store])
                self._catch_up_overlays()

    def start(self):
        """In a serving process: start what runs in the background (the
        journal's sync thread with fsync = "interval")."""
        self.journal.start_syncing()

    def _remove_state(self):
        self._close_files()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _open_node(self):
        paths = os.path.join(self.directory, NODE_FILE), os.path.join(self.directory, DEDUP_FILE)
        hi, lo = int(self.journal.journal_id[:16], 16), int(self.journal.journal_id[16:], 16)
        try:
            self._files = [map_file(paths[0])]
            self._files.append(map_file(paths[1]))
            self.state = _window.NodeState(self._files[0][0])
            self.dedup = _window.DedupWindow(self._files[1][0])
            if self.state.journal != (hi, lo) or self.dedup.entries != self.settings.dedup_entries:
                raise ValueError("another journal, or another window size")
            return
        except (FileNotFoundError, ValueError) as exc:
            if not isinstance(exc, FileNotFoundError):
                log.warning("feedback state in %s does not match the journal (%s); rebuilding it", self.directory, exc)
            self._close_files()
        # Built under temporary names and renamed into place when complete.
        start = self.journal.start()
        for path, size, init in (
            (paths[0], _window.HEADER_BYTES, lambda b: _window.init_node(b, hi, lo, start.segment)),
            (paths[1], _window.dedup_layout(self.settings.dedup_entries)[1],
             lambda b: _window.init_dedup(b, self.settings.dedup_entries)),
        ):
            temporary = f"{path}.{os.getpid()}.tmp"
            buffer, fd = map_file(temporary, size)
            try:
                init(buffer)
            finally:
                buffer.close()
                os.close(fd)
            os.rename(temporary, path)
        self._open_node()

    def _open_overlay(self, model, store):
        path = os.path.join(self.directory, overlay_name(model, store, self.journal.journal_id, self.settings))
        folded = store.events_folded
        base = 0
        if folded is not None:
            if folded["journal_id"] != self.journal.journal_id:
                raise DataError(
                    f"store {model.store!r}: its snapshot holds the events of journal {folded['journal_id']}, "
                    f"but this node's journal ({self.settings.journal}) is {self.journal.journal_id}"
                )
            base = folded["through_seq"]
        if os.path.exists(path):
            try:
                overlay = ModelOverlay(self, model, store, path)
                if overlay.table.n_rows == store.n_rows and overlay.table.base_seq == base:
                    return overlay
                overlay.close()
            except ValueError:
                pass
            os.remove(path)
        return ModelOverlay.create(self, model, store, path, self.settings, base, self.journal.start())

    def remove_other_overlays(self):
        """Remove overlay files of snapshots no longer served (after a reload).
        A worker still serving one keeps its mapping."""
        keep = {os.path.basename(overlay.path) for overlay in self.overlays.values()}
        with self.journal.lock():
            for name in os.listdir(self.directory):
                if (name.startswith("overlay-") and name not in keep) or name.endswith(".tmp"):
                    os.remove(os.path.join(self.directory, name))

    # -- catching up with the journal (under the lock) ------------------------------------

    def _position(self):
        return Position(*self.state.position)

    def _journal_ahead(self, position):
        try:
            size = os.stat(self.journal.path(position.segment)).st_size
        except FileNotFoundError:
            size = 0
        if size < position.offset:
            raise JournalCorrupt(
                f"{self.journal.path(position.segment)} has {size} bytes, but the node has read "
                f"{position.offset} of it: the journal was changed behind the service's back; restart it"
            )
        if size > position.offset:
            return True
        return position.offset >= self.settings.segment_bytes and any(
            segment > position.segment for segment in self.journal.segments()
        )

    def _read_to_end(self, position):
        """Whole batches from ``position`` on; a torn tail is cut off."""
        reader = self.journal.read(position)
        while True:
            try:
                yield next(reader)
            except StopIteration as stop:
                final = stop.value
                path = self.journal.path(final.segment)
                if os.path.exists(path) and os.path.getsize(path) > final.offset:
                    log.warning("journal %s: cutting a torn batch at offset %d (a writer died writing it; "
                                "its client got no answer)", path, final.offset)
                    self.journal.truncate(final)
                return

    def _sync_locked(self):
        """Bring the node's state up to the journal's end."""
        state, dedup = self.state, self.dedup
        if state.dirty:
            log.warning("feedback: a writer died while changing the dedup window; rebuilding it from the journal")
            dedup.clear()
            for batch, _ in self._read_to_end(self.journal.start()):
                for record in batch:
                    if record.seq > state.last_seq:
                        break
                    dedup.insert(*event_key(record.decision_id, record.item_id), record.time_us)
            state.dirty = False
        position = self._position()
        if not self._journal_ahead(position):
            return
        last, last_time = state.last_seq, state.last_time_us
        for batch, end in self._read_to_end(position):
            state.dirty = True
            for record in batch:
                dedup.insert(*event_key(record.decision_id, record.item_id), record.time_us)
            state.dirty = False
            last, last_time = max(last, batch[-1].seq), max(last_time, batch[-1].time_us)
            state.publish(last, end.segment, end.offset, last_time)

    def _catch_up_overlays(self):
        last = self.state.last_seq
        for overlay in self.overlays.values():
            overlay.table.recover()
            table = overlay.table
            if table.applied_seq >= last:
                continue
            start = Position(*table.position)
            for batch, end in self._read_to_end(start):
                for record in batch:
                    overlay.apply(record, start)
                if batch[-1].seq >= table.applied_seq:
                    table.advance(batch[-1].seq, end.segment, end.offset)
                start = end
                if batch[-1].seq >= last:
                    break

    def catch_up(self):
        """Bring this process's overlays up to the journal (a prediction
        found one behind the node). Takes the lock."""
        with self.journal.lock():
            self._sync_locked()
            self._catch_up_overlays()

    def recover(self):
        """Complete an overlay update a dead writer left (a prediction found
        an entry held too long). Takes the lock."""
        with self.journal.lock():
            for overlay in self.overlays.values():
                overlay.table.recover()

    # -- taking events in -----------------------------------------------------------------

    def submit(self, events):
        """Journal a batch of validated events (``mab.feedback.events.Event``)
        and apply them: all of them, except duplicates of an event within the
        dedup window (or earlier in the batch), or none.

        Returns ``Accepted``. Raises ``OverlayFull`` (nothing journaled) when
        an online model's overlay has no room for the batch's new entities,
        ``FeedbackUnavailable`` when the journal cannot be written or read.
        """
        if not self.opened:
            self.open()
        now_us = int(self.clock() * 1_000_000)
        keys = [event_key(event.decision_id, event.item_id) for event in events]
        window = self.settings.dedup_seconds
        min_time = now_us - int(window * 1_000_000) if window > 0 else 0
        try:
            with self.journal.lock():
                self._sync_locked()
                self._catch_up_overlays()
                result = Accepted(0)
                accepted = []
                in_batch = set()
                for index, (event, key) in enumerate(zip(events, keys)):
                    seen = self.dedup.time_of(*key)
                    if key in in_batch or (seen >= 0 and seen >= min_time):
                        result.duplicates.append(index)
                        continue
                    in_batch.add(key)
                    accepted.append((event, key))
                if not accepted:
                    return result
                entities = self._check_room([event for event, _ in accepted])
                state = self.state
                first, n = state.last_seq + 1, len(accepted)
                time_us = max(now_us, state.last_time_us)
                text = format_time(time_us)
                data = b"".join(encode_line(first + j, time_us, event, first, n, text)
                                for j, (event, _) in enumerate(accepted))
                start = self._position()
                end = self.journal.append(data, start, first)
                batch_start = start if end.segment == start.segment else Position(end.segment, 0)
                state.dirty = True
                for _, key in accepted:
                    self.dedup.insert(key[0], key[1], time_us)
                state.dirty = False
                last = first + n - 1
                for name, overlay in self.overlays.items():
                    found = entities[name]
                    for j, (event, _) in enumerate(accepted):
                        overlay.apply(Record(first + j, time_us, event.decision_id, event.item_id, event.reward,
                                             event.model, event.user_id, first, n), batch_start,
                                      found.get((event.item_id, event.user_id)))
                    overlay.table.advance(last, end.segment, end.offset)
                state.publish(last, end.segment, end.offset, time_us)
        except (OSError, JournalCorrupt) as exc:
            log.error("feedback: the journal %s cannot be written or read: %s", self.settings.journal, exc)
            raise FeedbackUnavailable(f"the journal cannot be written or read: {exc}", retry_after=5) from None
        result.accepted, result.first_seq, result.last_seq = n, first, last
        return result

    def _check_room(self, events):
        """Raise ``OverlayFull`` unless every overlay has room for its
        events' new entities. Returns ``{model: {(item_id, user_id): (row, key)}}``."""
        entities = {}
        for name, overlay in self.overlays.items():
            new = {}
            found = entities[name] = {}
            for event in events:
                if event.model == name:
                    entity = found.get((event.item_id, event.user_id))
                    if entity is None:
                        entity = found[(event.item_id, event.user_id)] = overlay.entity(event.item_id, event.user_id)
                    if overlay.find(*entity) < 0:
                        new[entity] = 0 if entity[1] is None else len(entity[1])
            if not new:
                continue
            counters = overlay.table.counters()
            if (counters["entries"] + len(new) > overlay.table.max_entries
                    or counters["key_bytes"] + sum(new.values()) > self.settings.overlay_key_bytes):
                raise OverlayFull(
                    f"model {name!r}: the online updates have no room for {len(new)} more entities "
                    f"({counters['entries']} of overlay_max_entries = {overlay.table.max_entries} used); fold "
                    "the journal into a new snapshot (mab data compile --events) and reload",
                    retry_after=60,
                )
        return entities

    # -- reporting and closing ----------------------------------------------------------------

    def describe(self):
        if not self.opened:
            return {"journal": self.settings.journal, "opened": False}
        return {
            "journal": self.settings.journal,
            "journal_id": self.journal.journal_id,
            "fsync": self.settings.fsync,
            "last_seq": self.state.last_seq,
            "state_dir": self.directory,
            "dedup": {"entries": self.settings.dedup_entries, "seconds": self.settings.dedup_seconds},
            "overlays": {name: overlay.describe() for name, overlay in self.overlays.items()},
        }

    def _close_files(self):
        self.state = self.dedup = None
        for buffer, fd in self._files:
            try:
                buffer.close()
            except BufferError:
                pass
            os.close(fd)
        self._files = []

    def close(self):
        for overlay in self.overlays.values():
            overlay.close()
        self.overlays = {}
        self._close_files()
        if self.journal is not None:
            self.journal.close()
            self.journal = None
