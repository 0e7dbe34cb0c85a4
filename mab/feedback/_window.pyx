"""Compiled: the node's progress through the journal and its dedup window (mab.feedback).

Two small tables in files every worker of a node maps (``MAP_SHARED``):

* ``NodeState``: the last event the node took in and where the journal
  goes on after it; predictions compare their overlay's progress with it.
* ``DedupWindow``: the (decision id, item id) keys of recent events, as
  128-bit digests, in two generations of an open-addressing table.

Only the writer changes them, under the node's lock (``mab.feedback.node``).
A writer killed while changing the window leaves the node's ``dirty`` word
set, and the next writer rebuilds the window from the journal.
"""

from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.string cimport memset

from mab.feedback._atomic cimport HEADER, VERSION, load_acquire, store_release

# "MABDDP01" and "MABNOD01", little-endian.
cdef uint64_t C_DEDUP_MAGIC = 0x313050444442414DULL
cdef uint64_t C_NODE_MAGIC = 0x3130444F4E42414DULL
#: Bytes of a file's header (one page).
HEADER_BYTES = HEADER
DEDUP_MAGIC = C_DEDUP_MAGIC
NODE_MAGIC = C_NODE_MAGIC
assert DEDUP_MAGIC == int.from_bytes(b"MABDDP01", "little")
assert NODE_MAGIC == int.from_bytes(b"MABNOD01", "little")

# -- the node's state ---------------------------------------------------------------

cdef enum:
    N_MAGIC = 0
    N_VERSION = 1
    N_JOURNAL_HI = 2        # the journal's id (128 bits)
    N_JOURNAL_LO = 3
    N_LAST_SEQ = 4          # the last event taken into the dedup window
    N_POS_SEGMENT = 5       # where the journal continues after it
    N_POS_OFFSET = 6
    N_LAST_TIME = 7         # its time, microseconds
    N_DIRTY = 8             # 1 while the dedup window is being changed


def init_node(buffer, uint64_t journal_hi, uint64_t journal_lo, uint64_t pos_segment):
    """Write the header of a new, zeroed node state (one page) for the journal ``(hi, lo)``."""
    cdef uint8_t[::1] view = buffer
    if view.shape[0] < HEADER:
        raise ValueError("the node state needs a page")
    cdef uint64_t *h = <uint64_t *>&view[0]
    h[N_VERSION] = VERSION
    h[N_JOURNAL_HI] = journal_hi
    h[N_JOURNAL_LO] = journal_lo
    h[N_POS_SEGMENT] = pos_segment
    store_release(&h[N_MAGIC], C_NODE_MAGIC)


cdef class NodeState:
    """The node's progress through the journal, shared by every worker:
    the last event the dedup window holds, and where the journal goes on.
    Written under the node's lock; ``last_seq`` is read by predictions."""

    cdef uint8_t[::1] _view
    cdef uint64_t *h

    def __init__(self, buffer):
        cdef uint8_t[::1] view = buffer
        if view.shape[0] < HEADER:
            raise ValueError("not a node state: shorter than a page")
        self._view = view
        self.h = <uint64_t *>&view[0]
        if load_acquire(&self.h[N_MAGIC]) != C_NODE_MAGIC or self.h[N_VERSION] != VERSION:
            raise ValueError("not a node state of this version (or not completely written)")

    @property
    def journal(self):
        return self.h[N_JOURNAL_HI], self.h[N_JOURNAL_LO]

    @property
    def last_seq(self):
        return load_acquire(&self.h[N_LAST_SEQ])

    @property
    def position(self):
        return load_acquire(&self.h[N_POS_SEGMENT]), load_acquire(&self.h[N_POS_OFFSET])

    @property
    def last_time_us(self):
        return load_acquire(&self.h[N_LAST_TIME])

    @property
    def dirty(self):
        return bool(load_acquire(&self.h[N_DIRTY]))

    @dirty.setter
    def dirty(self, bint value):
        store_release(&self.h[N_DIRTY], value)

    def publish(self, uint64_t last_seq, uint64_t segment, uint64_t offset, uint64_t last_time_us):
        """Record progress: the sequence number first, so that a writer
        killed in between leaves the position behind (the batch is read
        again, and inserting its keys again changes nothing), never ahead."""
        store_release(&self.h[N_LAST_TIME], last_time_us)
        store_release(&self.h[N_LAST_SEQ], last_seq)
        store_release(&self.h[N_POS_SEGMENT], segment)
        store_release(&self.h[N_POS_OFFSET], offset)


# -- the dedup window -----------------------------------------------------------------

cdef enum:
    D_MAGIC = 0
    D_VERSION = 1
    D_GEN_ENTRIES = 2       # entries per generation
    D_GEN_SLOTS = 3         # slots per generation (a power of two >= 2 entries)
    D_CURRENT = 4           # the generation inserted into (0 or 1)
    D_COUNT = 5             # entries in the current generation
    D_TOTAL_BYTES = 6
    SLOT_WORDS = 3          # h1, h2, time in microseconds


def dedup_layout(uint64_t entries):
    """(slots per generation, total bytes) of a window remembering at least ``entries`` keys."""
    cdef uint64_t slots = 8
    while slots < 2 * entries:
        slots *= 2
    return slots, HEADER_BYTES + 2 * slots * SLOT_WORDS * 8


def init_dedup(buffer, uint64_t entries):
    """Write the header of a new, zeroed dedup window mapped as ``buffer``."""
    slots, total = dedup_layout(entries)
    cdef uint8_t[::1] view = buffer
    if <uint64_t>view.shape[0] < total:
        raise ValueError(f"the buffer has {view.shape[0]} bytes; the window needs {total}")
    cdef uint64_t *h = <uint64_t *>&view[0]
    h[D_VERSION] = VERSION
    h[D_GEN_ENTRIES] = entries
    h[D_GEN_SLOTS] = slots
    h[D_TOTAL_BYTES] = total
    store_release(&h[D_MAGIC], C_DEDUP_MAGIC)


cdef class DedupWindow:
    """The keys of recent events: 128-bit digests (``h1``, ``h2``) of
    (decision id, item id), each with its time in microseconds.

    Two generations of ``entries`` keys each: keys go into the current one;
    when it is full, the other is emptied and becomes current. So the last
    ``entries`` keys at least, and ``2 * entries`` at most, are remembered,
    and nothing is ever deleted from a table (linear probing without
    tombstones). Only the writer touches it, under the node's lock.
    """

    cdef uint8_t[::1] _view
    cdef uint64_t *h
    cdef uint64_t *tables
    cdef uint64_t slots
    cdef uint64_t mask
    cdef readonly uint64_t entries

    def __init__(self, buffer):
        cdef uint8_t[::1] view = buffer
        if view.shape[0] < HEADER:
            raise ValueError("not a dedup window: shorter than its header")
        self._view = view
        self.h = <uint64_t *>&view[0]
        if load_acquire(&self.h[D_MAGIC]) != C_DEDUP_MAGIC or self.h[D_VERSION] != VERSION:
            raise ValueError("not a dedup window of this version (or not completely written)")
        if <uint64_t>view.shape[0] < self.h[D_TOTAL_BYTES]:
            raise ValueError("the dedup file is shorter than its header says")
        self.tables = <uint64_t *>(&view[0] + HEADER)
        self.entries = self.h[D_GEN_ENTRIES]
        self.slots = self.h[D_GEN_SLOTS]
        self.mask = self.slots - 1

    cdef inline int64_t _find(self, uint64_t generation, uint64_t h1, uint64_t h2) noexcept nogil:
        cdef uint64_t *table = self.tables + generation * self.slots * SLOT_WORDS
        cdef uint64_t i = h1 & self.mask
        cdef uint64_t *slot
        while True:
            slot = table + i * SLOT_WORDS
            if slot[0] == 0 and slot[1] == 0:
                return -1
            if slot[0] == h1 and slot[1] == h2:
                return <int64_t>i
            i = (i + 1) & self.mask

    def time_of(self, uint64_t h1, uint64_t h2):
        """The time (microseconds) of the latest event with this key, or -1."""
        cdef uint64_t current = self.h[D_CURRENT], generation
        cdef int64_t i
        for generation in (current, 1 - current):
            i = self._find(generation, h1, h2)
            if i >= 0:
                return <int64_t>self.tables[(generation * self.slots + i) * SLOT_WORDS + 2]
        return -1

    def insert(self, uint64_t h1, uint64_t h2, uint64_t time_us):
        """Remember a key (``h1 | h2`` must not be 0)."""
        if h1 == 0 and h2 == 0:
            raise ValueError("the all-zero key marks an empty slot")
        cdef uint64_t current = self.h[D_CURRENT]
        cdef int64_t i = self._find(current, h1, h2)
        cdef uint64_t *table
        cdef uint64_t j
        if i < 0:
            if self.h[D_COUNT] >= self.entries:
                current = 1 - current
                memset(self.tables + current * self.slots * SLOT_WORDS, 0, self.slots * SLOT_WORDS * 8)
                self.h[D_CURRENT] = current
                self.h[D_COUNT] = 0
            table = self.tables + current * self.slots * SLOT_WORDS
            j = h1 & self.mask
            while table[j * SLOT_WORDS] != 0 or table[j * SLOT_WORDS + 1] != 0:
                j = (j + 1) & self.mask
            table[j * SLOT_WORDS] = h1
            table[j * SLOT_WORDS + 1] = h2
            table[j * SLOT_WORDS + 2] = time_us
            self.h[D_COUNT] += 1
        else:
            self.tables[(current * self.slots + i) * SLOT_WORDS + 2] = time_us

    def clear(self):
        memset(self.tables, 0, 2 * self.slots * SLOT_WORDS * 8)
        self.h[D_CURRENT] = 0
        self.h[D_COUNT] = 0
