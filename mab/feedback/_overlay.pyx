"""Compiled: one model's count deltas in a file every worker of a node maps (mab.feedback).

``Overlay`` holds, per entity, the rewards the node took in since the
model's snapshot, so that a reward one worker accepts is seen by the next
prediction of any worker (``MAP_SHARED``). An entity of the snapshot is
found by its row (the embedded store's compiled index already gave it, so a
lookup costs one bit of a bitmap and, only for updated rows, one probe); an
entity the snapshot lacks (a new item) by its id's bytes, hashed as the
store's index hashes them.

Concurrency. There is one writer at a time: every change is made under the
node's lock (an ``flock`` on the journal directory's lock file, taken by
``mab.feedback.node``). Readers (predictions) take no lock. Each entry is
guarded by a sequence lock (Lamport, "Concurrent reading and writing",
CACM 1977; in the C11 memory model as in H.-J. Boehm, "Can seqlocks get
along with programming language memory models?", MSPC 2012): the writer
makes the entry's sequence odd, writes, and makes it even again; a reader
retries while it is odd or has changed. Slots and bitmap bits are
published with release stores after what they point at is written, so a
reader that sees them sees a complete entry.

Crashes. A writer killed mid-update (kill -9) must neither lose nor double
an event. Before it changes an entry it writes the entry's new values,
with the event's sequence number and journal position, as a redo record
in the header; after the change it advances ``applied_seq`` and clears the
record. The next writer finds a valid record and completes it
(``recover``). Everything else a writer does is either idempotent on replay
(finding or inserting an entity) or guarded by ``applied_seq`` (events at or
below it are skipped).
"""

import numpy as np

cimport numpy as cnp
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.unicode cimport PyUnicode_Check
from libc.math cimport exp2
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy

from mab._wire cimport IdSpans
from mab.feedback._atomic cimport (
    HEADER, VERSION, fence_acquire, fence_release, load_acquire, load_double, load_relaxed, or_release,
    store_double, store_relaxed, store_release,
)
from mab.stores._hash cimport hash_bytes

cnp.import_array()

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t *size) except NULL

# "MABOVL01", little-endian.
cdef uint64_t C_OVERLAY_MAGIC = 0x31304C564F42414DULL

#: Bytes of a file's header (one page); the tables follow it.
HEADER_BYTES = HEADER
#: Increment when a layout below changes (files are rebuilt, never migrated).
LAYOUT_VERSION = VERSION
OVERLAY_MAGIC = C_OVERLAY_MAGIC
assert OVERLAY_MAGIC == int.from_bytes(b"MABOVL01", "little")

# How many times a reader re-reads an entry that a writer holds before it
# gives up and lets the caller recover a writer that died (``add``); after
# the first few it yields the core, in case the writer was preempted there.
cdef enum:
    SPIN_LIMIT = 1 << 16
    SPINS_BEFORE_YIELD = 64

cdef extern from "<sched.h>":
    int sched_yield() noexcept nogil

# -- the overlay's header words ------------------------------------------------
cdef enum:
    H_MAGIC = 0
    H_VERSION = 1
    H_N_ROWS = 2            # rows of the snapshot
    H_MAX_ENTRIES = 3
    H_SLOTS = 4             # slots in each of the two indexes (a power of two)
    H_BLOB_BYTES = 5
    H_HALF_LIFE = 6         # double; 0: no decay
    H_BASE_SEQ = 7          # events up to this sequence are in the snapshot
    H_ENTRIES = 8           # entries used
    H_BLOB_USED = 9
    H_NEW_KEYS = 10         # entries of entities the snapshot lacks
    H_APPLIED_SEQ = 11      # the last event applied (or skipped as another model's)
    H_POS_SEGMENT = 12      # where the journal continues after it
    H_POS_OFFSET = 13
    H_REDO_VALID = 14
    H_REDO_ENTRY = 15
    H_REDO_S = 16
    H_REDO_F = 17
    H_REDO_T = 18
    H_REDO_SEQ = 19
    H_REDO_SEGMENT = 20
    H_REDO_OFFSET = 21
    H_UPDATES = 22          # events applied to entries
    H_MAX_KEY = 23          # the longest new key, in bytes
    H_OFF_BITMAP = 24       # byte offsets of the sections
    H_OFF_ROW_SLOTS = 25
    H_OFF_ENTRIES = 26
    H_OFF_KEY_SLOTS = 27
    H_OFF_KEY_RECORDS = 28
    H_OFF_BLOB = 29
    H_TOTAL_BYTES = 30
    H_OVERFLOWED = 31       # events that found no room (catch-up only; see node.py)

# An entry: sequence lock, successes, failures, reference time (4 words).
cdef enum:
    E_LOCK = 0
    E_S = 1
    E_F = 2
    E_T = 3
    ENTRY_WORDS = 4


def overlay_layout(uint64_t n_rows, uint64_t max_entries, uint64_t key_bytes):
    """The byte offsets of an overlay's sections, and its total size:
    a dict with ``bitmap``, ``row_slots``, ``entries``, ``key_slots``,
    ``key_records``, ``blob``, ``total`` and ``slots`` (per index: the
    smallest power of two >= 2 * max_entries, so the load stays <= 1/2)."""
    cdef uint64_t slots = 8
    while slots < 2 * max_entries:
        slots *= 2
    layout = {"slots": slots}
    offset = HEADER_BYTES
    for name, size in (
        ("bitmap", 8 * ((n_rows + 63) // 64)),
        ("row_slots", 8 * slots),
        ("entries", 8 * ENTRY_WORDS * max_entries),
        ("key_slots", 8 * slots),
        ("key_records", 16 * max_entries),
        ("blob", key_bytes),
    ):
        layout[name] = offset
        offset += (size + 4095) // 4096 * 4096
    layout["total"] = offset
    return layout


def init_overlay(buffer, uint64_t n_rows, uint64_t max_entries, uint64_t key_bytes, double half_life,
                 uint64_t base_seq, uint64_t pos_segment, uint64_t pos_offset):
    """Write the header of a new, zeroed overlay file mapped as ``buffer``
    (at least ``overlay_layout(...)["total"]`` bytes). ``half_life``: 0 for
    none. Events up to ``base_seq`` are in the snapshot; the journal is read
    from (``pos_segment``, ``pos_offset``) on."""
    layout = overlay_layout(n_rows, max_entries, key_bytes)
    cdef uint8_t[::1] view = buffer
    if view.shape[0] < layout["total"]:
        raise ValueError(f"the buffer has {view.shape[0]} bytes; the overlay needs {layout['total']}")
    cdef uint64_t *h = <uint64_t *>&view[0]
    h[H_VERSION] = LAYOUT_VERSION
    h[H_N_ROWS] = n_rows
    h[H_MAX_ENTRIES] = max_entries
    h[H_SLOTS] = layout["slots"]
    h[H_BLOB_BYTES] = key_bytes
    memcpy(&h[H_HALF_LIFE], &half_life, 8)
    h[H_BASE_SEQ] = base_seq
    h[H_APPLIED_SEQ] = base_seq
    h[H_POS_SEGMENT] = pos_segment
    h[H_POS_OFFSET] = pos_offset
    h[H_OFF_BITMAP] = layout["bitmap"]
    h[H_OFF_ROW_SLOTS] = layout["row_slots"]
    h[H_OFF_ENTRIES] = layout["entries"]
    h[H_OFF_KEY_SLOTS] = layout["key_slots"]
    h[H_OFF_KEY_RECORDS] = layout["key_records"]
    h[H_OFF_BLOB] = layout["blob"]
    h[H_TOTAL_BYTES] = layout["total"]
    # The magic last: a file whose magic is there is complete.
    store_release(&h[H_MAGIC], C_OVERLAY_MAGIC)


cdef inline uint64_t _row_hash(uint64_t row) noexcept nogil:
    return hash_bytes(<const uint8_t *>&row, 8)


cdef class Overlay:
    """One model's count deltas in a shared mapping (see the module docstring).

    ``buffer``: a writable buffer over the whole file (an ``mmap``), laid
    out by ``init_overlay``. Raises ``ValueError`` for a buffer that does
    not hold a complete overlay of this layout version.

    Each entry holds decayed sums ``s`` and ``f`` as of its reference time
    ``t`` (Unix seconds): without decay plain sums of ``reward`` and
    ``1 - reward``; with a half-life ``h`` an event at time ``te`` makes
    ``s = s * 2**(-(te - t) / h) + reward`` and ``t = te``, and a reader at
    ``now`` uses ``s * 2**(-(now - t) / h)``: every event counts
    ``reward * 2**(-(now - te) / h)``, as a snapshot's count decays by its
    age.
    """

    cdef uint8_t[::1] _view      # pins the mapping: it cannot be closed under us
    cdef uint8_t *base
    cdef uint64_t *h
    cdef uint64_t *bitmap
    cdef uint64_t *row_slots
    cdef uint64_t *entries
    cdef uint64_t *key_slots
    cdef uint64_t *key_records
    cdef uint8_t *blob
    cdef readonly uint64_t n_rows
    cdef readonly uint64_t max_entries
    cdef uint64_t mask
    cdef readonly double half_life

    def __init__(self, buffer):
        cdef uint8_t[::1] view = buffer
        if view.shape[0] < HEADER:
            raise ValueError("not an overlay: shorter than its header")
        self._view = view
        self.base = &view[0]
        self.h = <uint64_t *>self.base
        if load_acquire(&self.h[H_MAGIC]) != C_OVERLAY_MAGIC or self.h[H_VERSION] != VERSION:
            raise ValueError("not an overlay of this version (or not completely written)")
        if <uint64_t>view.shape[0] < self.h[H_TOTAL_BYTES]:
            raise ValueError("the overlay file is shorter than its header says")
        self.n_rows = self.h[H_N_ROWS]
        self.max_entries = self.h[H_MAX_ENTRIES]
        self.mask = self.h[H_SLOTS] - 1
        memcpy(&self.half_life, &self.h[H_HALF_LIFE], 8)
        self.bitmap = <uint64_t *>(self.base + self.h[H_OFF_BITMAP])
        self.row_slots = <uint64_t *>(self.base + self.h[H_OFF_ROW_SLOTS])
        self.entries = <uint64_t *>(self.base + self.h[H_OFF_ENTRIES])
        self.key_slots = <uint64_t *>(self.base + self.h[H_OFF_KEY_SLOTS])
        self.key_records = <uint64_t *>(self.base + self.h[H_OFF_KEY_RECORDS])
        self.blob = self.base + self.h[H_OFF_BLOB]

    # -- header values -----------------------------------------------------------

    @property
    def applied_seq(self):
        """The sequence number of the last event this overlay has taken in."""
        return load_acquire(&self.h[H_APPLIED_SEQ])

    @property
    def position(self):
        """(segment, offset) of the journal after ``applied_seq`` (maybe behind it; never ahead)."""
        return load_acquire(&self.h[H_POS_SEGMENT]), load_acquire(&self.h[H_POS_OFFSET])

    @property
    def base_seq(self):
        return self.h[H_BASE_SEQ]

    def counters(self):
        """A dict: entries used, of them new keys, events applied, key bytes used, overflowed events."""
        return {
            "entries": load_acquire(&self.h[H_ENTRIES]),
            "new_keys": load_acquire(&self.h[H_NEW_KEYS]),
            "updates": load_acquire(&self.h[H_UPDATES]),
            "key_bytes": load_acquire(&self.h[H_BLOB_USED]),
            "overflowed": load_acquire(&self.h[H_OVERFLOWED]),
        }

    # -- finding entries (readers and the writer) ---------------------------------

    cdef inline int64_t _find_row(self, uint64_t row) noexcept nogil:
        cdef uint64_t i = _row_hash(row) & self.mask, slot
        cdef uint64_t want = row + 1
        while True:
            slot = load_acquire(&self.row_slots[i])
            if slot == 0:
                return -1
            if (slot >> 32) == want:
                return <int64_t>(slot & 0xFFFFFFFFULL) - 1
            i = (i + 1) & self.mask

    cdef inline int64_t _find_key(self, const uint8_t *key, Py_ssize_t length, uint64_t hash) noexcept nogil:
        cdef uint64_t i = hash & self.mask, slot, tag = hash >> 32, entry
        while True:
            slot = load_acquire(&self.key_slots[i])
            if slot == 0:
                return -1
            if (slot >> 32) == tag:
                entry = (slot & 0xFFFFFFFFULL) - 1
                if (<Py_ssize_t>self.key_records[2 * entry + 1] == length
                        and memcmp(self.blob + self.key_records[2 * entry], key, length) == 0):
                    return <int64_t>entry
            i = (i + 1) & self.mask

    cdef inline int _read(self, int64_t entry, double *s, double *f, double *t) noexcept nogil:
        """The entry's values under its sequence lock; -1 if a writer seems stuck."""
        cdef uint64_t *e = self.entries + entry * ENTRY_WORDS
        cdef uint64_t before, after
        cdef int spins = 0
        while True:
            before = load_acquire(&e[E_LOCK])
            if not (before & 1):
                s[0] = load_double(&e[E_S])
                f[0] = load_double(&e[E_F])
                t[0] = load_double(&e[E_T])
                fence_acquire()
                after = load_relaxed(&e[E_LOCK])
                if after == before:
                    return 0
            spins += 1
            if spins > SPIN_LIMIT:
                return -1
            if spins > SPINS_BEFORE_YIELD:
                sched_yield()

    def add(self, double[::1] successes, double[::1] failures, cnp.ndarray rows, ids,
            bytes prefix=b"", bytes suffix=b"", double now=0.0, Py_ssize_t start=0):
        """Add each entity's deltas, decayed to ``now`` (Unix seconds), to
        ``successes[i]`` and ``failures[i]`` (float64, one per id).

        ``rows``: int64, each id's row in the snapshot (``n_rows`` for an id
        the snapshot lacks), as the embedded store's ``IdIndex.find`` gives
        them; ``ids``: the request's ids (a list of ``str`` or an
        ``IdSpans``), read only for ids the snapshot lacks, as ``prefix + id
        + suffix``. Starts at index ``start``. Returns -1 when done, or the
        index of an entry whose writer seems to have died mid-update (the
        caller recovers the overlay under the node's lock and calls again
        from there; nothing at or after that index was added).
        """
        cdef Py_ssize_t n = rows.shape[0]
        if successes.shape[0] != n or failures.shape[0] != n:
            raise ValueError("successes, failures and rows must have one length")
        if rows.dtype != np.int64 or not rows.flags.c_contiguous:
            raise ValueError("rows must be a contiguous int64 array")
        if load_acquire(&self.h[H_UPDATES]) == 0:
            return -1
        cdef const int64_t *r = <const int64_t *>cnp.PyArray_DATA(rows)
        cdef bint new_keys = load_acquire(&self.h[H_NEW_KEYS]) > 0
        cdef IdSpans spans = None
        cdef list id_list = None
        if type(ids) is IdSpans:
            spans = <IdSpans>ids
        elif type(ids) is list:
            id_list = <list>ids
        else:
            raise TypeError(f"ids must be a list or IdSpans, not {type(ids).__name__}")
        if (spans is not None and spans.n != n) or (id_list is not None and PyList_GET_SIZE(id_list) != n):
            raise ValueError("ids and rows must have one length")
        cdef Py_ssize_t p_len = len(prefix), s_len = len(suffix), limit = self.h[H_MAX_KEY]
        cdef Py_ssize_t i, length, text_length
        cdef int64_t entry
        cdef uint64_t row
        cdef double es, ef, et, decay, hl = self.half_life
        cdef const char *text
        cdef object item
        cdef uint8_t *scratch = NULL
        if new_keys and (p_len or s_len):
            scratch = <uint8_t *>malloc(limit + 1)
            if scratch == NULL:
                raise MemoryError()
        try:
            for i in range(start, n):
                row = <uint64_t>r[i]
                if row < self.n_rows:
                    if not (load_acquire(&self.bitmap[row >> 6]) >> (row & 63)) & 1:
                        continue
                    entry = self._find_row(row)
                elif new_keys:
                    if spans is not None:
                        text = spans.data + spans.starts[i]
                        text_length = spans.lengths[i]
                    else:
                        item = <object>PyList_GET_ITEM(id_list, i)
                        if not PyUnicode_Check(item):
                            raise TypeError(f"item {i} is {type(item).__name__}, not str")
                        text = PyUnicode_AsUTF8AndSize(item, &text_length)
                    length = p_len + text_length + s_len
                    if length > limit:
                        continue
                    if scratch != NULL:
                        memcpy(scratch, <char *>prefix, p_len)
                        memcpy(scratch + p_len, text, text_length)
                        memcpy(scratch + p_len + text_length, <char *>suffix, s_len)
                        entry = self._find_key(scratch, length, hash_bytes(scratch, length))
                    else:
                        entry = self._find_key(<const uint8_t *>text, length,
                                               hash_bytes(<const uint8_t *>text, length))
                else:
                    continue
                if entry < 0:
                    continue
                if self._read(entry, &es, &ef, &et) < 0:
                    return i
                if hl > 0.0:
                    decay = exp2(-(now - et) / hl) if now > et else 1.0
                    es *= decay
                    ef *= decay
                successes[i] += es
                failures[i] += ef
        finally:
            free(scratch)
        return -1

    def values(self, int64_t entry):
        """(s, f, t) of an entry as stored (not decayed), for tests and the fold."""
        cdef double s, f, t
        if not 0 <= entry < <int64_t>load_acquire(&self.h[H_ENTRIES]):
            raise IndexError(entry)
        if self._read(entry, &s, &f, &t) < 0:
            raise RuntimeError("the entry's writer died mid-update; recover() first")
        return s, f, t

    # -- the writer (under the node's lock) ------------------------------------------

    def find_row(self, uint64_t row):
        """The entry of snapshot row ``row``, or -1."""
        return self._find_row(row)

    def find_key(self, bytes key):
        """The entry of a new entity's id bytes, or -1."""
        return self._find_key(<const uint8_t *><char *>key, len(key), hash_bytes(<const uint8_t *><char *>key, len(key)))

    cdef int64_t _reserve(self) noexcept nogil:
        cdef uint64_t used = self.h[H_ENTRIES]
        if used >= self.max_entries:
            return -1
        # Reserved before it is written: a writer that dies before it
        # publishes the slot leaves an unused entry, never a slot pointing
        # at an entry that a later writer reuses.
        store_release(&self.h[H_ENTRIES], used + 1)
        return <int64_t>used

    def entry_for_row(self, uint64_t row):
        """The entry of snapshot row ``row``, inserted (zero) if need be; -1 when full."""
        if row >= self.n_rows:
            raise IndexError(f"row {row} is not in the snapshot ({self.n_rows} rows)")
        cdef int64_t entry = self._find_row(row)
        if entry >= 0:
            return entry
        entry = self._reserve()
        if entry < 0:
            return -1
        cdef uint64_t *e = self.entries + entry * ENTRY_WORDS
        e[E_LOCK] = 0
        e[E_S] = 0
        e[E_F] = 0
        e[E_T] = 0
        cdef uint64_t i = _row_hash(row) & self.mask
        while self.row_slots[i] != 0:
            i = (i + 1) & self.mask
        store_release(&self.row_slots[i], ((row + 1) << 32) | <uint64_t>(entry + 1))
        or_release(&self.bitmap[row >> 6], 1ULL << (row & 63))
        return entry

    def entry_for_key(self, bytes key):
        """The entry of a new entity's id bytes, inserted (zero) if need be;
        -1 when the entries or the key bytes are used up."""
        cdef const uint8_t *k = <const uint8_t *><char *>key
        cdef Py_ssize_t length = len(key)
        cdef uint64_t hash = hash_bytes(k, length)
        cdef int64_t entry = self._find_key(k, length, hash)
        if entry >= 0:
            return entry
        cdef uint64_t used = self.h[H_BLOB_USED]
        if used + <uint64_t>length > self.h[H_BLOB_BYTES] or self.h[H_ENTRIES] >= self.max_entries:
            return -1
        store_release(&self.h[H_BLOB_USED], used + length)
        entry = self._reserve()
        memcpy(self.blob + used, k, length)
        self.key_records[2 * entry] = used
        self.key_records[2 * entry + 1] = length
        cdef uint64_t *e = self.entries + entry * ENTRY_WORDS
        e[E_LOCK] = 0
        e[E_S] = 0
        e[E_F] = 0
        e[E_T] = 0
        if <uint64_t>length > self.h[H_MAX_KEY]:
            store_release(&self.h[H_MAX_KEY], length)
        cdef uint64_t i = hash & self.mask
        while self.key_slots[i] != 0:
            i = (i + 1) & self.mask
        store_release(&self.key_slots[i], ((hash >> 32) << 32) | <uint64_t>(entry + 1))
        store_release(&self.h[H_NEW_KEYS], self.h[H_NEW_KEYS] + 1)
        return entry

    cdef void _write_entry(self, int64_t entry, double s, double f, double t) noexcept nogil:
        cdef uint64_t *e = self.entries + entry * ENTRY_WORDS
        cdef uint64_t lock = e[E_LOCK]
        if lock & 1:
            lock += 1           # a writer died here; its values are rewritten now
        store_relaxed(&e[E_LOCK], lock + 1)
        fence_release()
        store_double(&e[E_S], s)
        store_double(&e[E_F], f)
        store_double(&e[E_T], t)
        store_release(&e[E_LOCK], lock + 2)

    def recover(self):
        """Complete an update that a writer died in (its redo record), if any.
        Returns whether there was one. Call under the node's lock."""
        if not self.h[H_REDO_VALID]:
            return False
        cdef double s, f, t
        memcpy(&s, &self.h[H_REDO_S], 8)
        memcpy(&f, &self.h[H_REDO_F], 8)
        memcpy(&t, &self.h[H_REDO_T], 8)
        self._write_entry(<int64_t>self.h[H_REDO_ENTRY], s, f, t)
        self._advance(self.h[H_REDO_SEQ], self.h[H_REDO_SEGMENT], self.h[H_REDO_OFFSET])
        store_release(&self.h[H_REDO_VALID], 0)
        return True

    cdef void _advance(self, uint64_t seq, uint64_t segment, uint64_t offset) noexcept nogil:
        # The sequence first: a position left behind is only re-read, and
        # events at or below applied_seq are skipped (node.py).
        store_release(&self.h[H_APPLIED_SEQ], seq)
        store_release(&self.h[H_POS_SEGMENT], segment)
        store_release(&self.h[H_POS_OFFSET], offset)

    def advance(self, uint64_t seq, uint64_t segment, uint64_t offset):
        """Note that events up to ``seq`` were taken in (none of them for
        this overlay), and that the journal continues at (segment, offset)."""
        if seq < self.h[H_APPLIED_SEQ]:
            raise ValueError(f"sequence {seq} is behind the overlay's {self.h[H_APPLIED_SEQ]}")
        self._advance(seq, segment, offset)

    def note_overflow(self):
        store_release(&self.h[H_OVERFLOWED], self.h[H_OVERFLOWED] + 1)

    def apply(self, int64_t entry, double reward, double time, uint64_t seq, uint64_t segment, uint64_t offset):
        """Add one event (``reward`` in [0, 1] at ``time``, Unix seconds) to
        ``entry``, crash-safely (the redo record), and advance to ``seq``."""
        if not 0 <= entry < <int64_t>self.h[H_ENTRIES]:
            raise IndexError(entry)
        if seq <= self.h[H_APPLIED_SEQ]:
            raise ValueError(f"event {seq} is not after the overlay's {self.h[H_APPLIED_SEQ]}")
        cdef uint64_t *e = self.entries + entry * ENTRY_WORDS
        cdef double s = load_double(&e[E_S]), f = load_double(&e[E_F]), t = load_double(&e[E_T])
        cdef double hl = self.half_life, d
        if hl > 0.0:
            if time >= t:
                d = exp2(-(time - t) / hl)
                s = s * d + reward
                f = f * d + (1.0 - reward)
                t = time
            else:       # an event older than the entry's time (fold order): decay it instead
                d = exp2(-(t - time) / hl)
                s += reward * d
                f += (1.0 - reward) * d
        else:
            s += reward
            f += 1.0 - reward
            if time > t:
                t = time
        self.h[H_REDO_ENTRY] = entry
        memcpy(&self.h[H_REDO_S], &s, 8)
        memcpy(&self.h[H_REDO_F], &f, 8)
        memcpy(&self.h[H_REDO_T], &t, 8)
        self.h[H_REDO_SEQ] = seq
        self.h[H_REDO_SEGMENT] = segment
        self.h[H_REDO_OFFSET] = offset
        store_release(&self.h[H_REDO_VALID], 1)
        self._write_entry(entry, s, f, t)
        self._advance(seq, segment, offset)
        store_release(&self.h[H_UPDATES], self.h[H_UPDATES] + 1)
        store_release(&self.h[H_REDO_VALID], 0)
