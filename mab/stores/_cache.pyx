"""Compiled core of the Vertex stores' per-worker feature cache.

``EntityCache`` keeps, for one tuple of features, each entity's values (or
the fact that the store does not hold it) and when they were fetched, and
answers a whole request's ids in one pass, reading each id's bytes in place
(a list of ``str`` or the ``IdSpans`` of a request body), as the embedded
store's index does: a Python ``dict`` lookup of 400 freshly decoded strings
would cost more than the rest of a cached request.

Freshness is stale-while-revalidate (the rule of RFC 5861, section 3, for
HTTP caches): an entry younger than ``refresh_after`` seconds is served; one
between ``refresh_after`` and ``ttl`` is served and reported for a refresh,
once, until ``put`` or ``release`` says the refresh is over (single flight);
one older than ``ttl`` is not served. Entries of missing entities have their
own ``missing_ttl``, and are refreshed at the same fraction of it
(``missing_ttl * refresh_after / ttl``). The caller supplies the time, so the rules can be tested
without sleeping.

Memory is fixed at construction: ``max_entries`` entries in preallocated
arrays, an open-addressing index (linear probing, load factor at most 1/2,
backward-shift deletion, Knuth TAOCP vol. 3, 6.4, Algorithm R) and one
``bytes`` key per entry. When it is full, the CLOCK algorithm (Corbató 1968,
an approximation of least-recently-used) picks the entry to evict: a hit
sets an entry's reference bit; the clock hand clears set bits and evicts the
first entry whose bit is clear.
"""

import numpy as np

cimport numpy as cnp
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.unicode cimport PyUnicode_Check
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy

from mab._wire cimport IdSpans
from mab.stores._hash cimport hash_bytes
from mab.stores._prefetch cimport prefetch

cnp.import_array()

cdef extern from "Python.h":
    ctypedef struct PyObject
    const char *PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t *size) except NULL

cdef extern from *:
    """
    #define MAB_LIST_ITEMS(list) (((PyListObject *)(list))->ob_item)
    """
    PyObject **list_items "MAB_LIST_ITEMS"(list items) noexcept nogil

# How many ids ahead ``lookup``'s pipeline prefetches (as the embedded
# store's IdIndex.find does), and its ring buffers' size (a power of two
# > 3 * AHEAD).
cdef enum:
    AHEAD = 8
    RING = 32

# An entry's flags.
cdef enum:
    USED = 1
    IS_MISSING = 2
    REFRESHING = 4
    REFERENCED = 8

#: ``lookup``'s status of an id: not served (absent or expired), served with
#: values, served as missing (the store does not hold the entity).
NOT_SERVED = 0
SERVED = 1
SERVED_MISSING = 2


cdef Py_ssize_t _count_ids(object ids) except -1:
    """How many ids a list of str or an IdSpans holds (TypeError for anything else)."""
    if type(ids) is IdSpans:
        return (<IdSpans>ids).n
    if type(ids) is list:
        return PyList_GET_SIZE(<list>ids)
    raise TypeError(f"ids must be a list or IdSpans, not {type(ids).__name__}")


cdef inline const char *_id_text(IdSpans spans, list id_list, Py_ssize_t i, Py_ssize_t *length) except NULL:
    """The UTF-8 bytes of the i-th id of an IdSpans or of a list of str."""
    cdef object item
    if spans is not None:
        length[0] = spans.lengths[i]
        return spans.data + spans.starts[i]
    item = <object>PyList_GET_ITEM(id_list, i)
    if not PyUnicode_Check(item):
        raise TypeError(f"item {i} is {type(item).__name__}, not str")
    return PyUnicode_AsUTF8AndSize(item, length)


cdef class EntityCache:
    """Values of ``n_features`` features per entity id, for at most
    ``max_entries`` ids; times in seconds (any monotonic clock)."""

    cdef readonly Py_ssize_t max_entries, n_features, entries
    cdef readonly double ttl, refresh_after, missing_ttl, missing_refresh_after
    cdef public long long hits, stale_served, misses, expired, evictions
    cdef list _keys
    cdef object _slots_arr, _hashes_arr, _fetched_arr, _values_arr, _flags_arr
    cdef uint64_t *slots
    cdef uint64_t mask
    cdef uint64_t *hashes
    cdef double *fetched
    cdef double *values
    cdef uint8_t *flags
    cdef Py_ssize_t hand, next_free

    def __init__(self, Py_ssize_t n_features, *, double ttl, double refresh_after, double missing_ttl,
                 Py_ssize_t max_entries):
        if n_features < 1:
            raise ValueError("n_features must be >= 1")
        if not 1 <= max_entries <= 2**31:
            raise ValueError("max_entries must be in [1, 2**31]")
        if not (ttl > 0 and 0 <= refresh_after <= ttl and 0 <= missing_ttl <= ttl):
            raise ValueError("need ttl > 0, 0 <= refresh_after <= ttl and 0 <= missing_ttl <= ttl")
        self.n_features = n_features
        self.max_entries = max_entries
        self.ttl = ttl
        self.refresh_after = refresh_after
        self.missing_ttl = missing_ttl
        self.missing_refresh_after = missing_ttl * (refresh_after / ttl)
        cdef Py_ssize_t size = 8
        while size < 2 * max_entries:
            size *= 2
        self._slots_arr = np.zeros(size, dtype=np.uint64)
        self._hashes_arr = np.zeros(max_entries, dtype=np.uint64)
        self._fetched_arr = np.zeros(max_entries, dtype=np.float64)
        self._values_arr = np.zeros((max_entries, n_features), dtype=np.float64)
        self._flags_arr = np.zeros(max_entries, dtype=np.uint8)
        self.slots = <uint64_t *>cnp.PyArray_DATA(self._slots_arr)
        self.mask = size - 1
        self.hashes = <uint64_t *>cnp.PyArray_DATA(self._hashes_arr)
        self.fetched = <double *>cnp.PyArray_DATA(self._fetched_arr)
        self.values = <double *>cnp.PyArray_DATA(self._values_arr)
        self.flags = <uint8_t *>cnp.PyArray_DATA(self._flags_arr)
        self._keys = [None] * max_entries
        self.entries = self.hand = self.next_free = 0
        self.hits = self.stale_served = self.misses = self.expired = self.evictions = 0

    # -- the index ---------------------------------------------------------------

    cdef inline bint _is(self, Py_ssize_t entry, const uint8_t *key, Py_ssize_t length):
        cdef object stored = <object>PyList_GET_ITEM(self._keys, entry)
        return (PyBytes_GET_SIZE(stored) == length
                and memcmp(PyBytes_AS_STRING(stored), key, length) == 0)

    cdef Py_ssize_t _probe(self, const uint8_t *key, Py_ssize_t length, uint64_t h, Py_ssize_t *position):
        """The entry holding ``key`` (or -1); ``position``: its slot, or the
        empty slot where it would go."""
        cdef uint64_t i = h & self.mask, slot
        cdef Py_ssize_t entry
        while True:
            slot = self.slots[i]
            if slot == 0:
                position[0] = i
                return -1
            if (slot >> 32) == (h >> 32):
                entry = <Py_ssize_t>(slot & 0xFFFFFFFFULL) - 1
                if self._is(entry, key, length):
                    position[0] = i
                    return entry
            i = (i + 1) & self.mask

    cdef void _unlink(self, Py_ssize_t entry):
        """Take ``entry`` out of the index by backward-shift deletion."""
        cdef uint64_t i = self.hashes[entry] & self.mask, j, home
        while <Py_ssize_t>(self.slots[i] & 0xFFFFFFFFULL) != entry + 1:
            i = (i + 1) & self.mask
        j = i
        while True:
            j = (j + 1) & self.mask
            if self.slots[j] == 0:
                break
            home = self.hashes[<Py_ssize_t>(self.slots[j] & 0xFFFFFFFFULL) - 1] & self.mask
            # The slot at j may move back to i unless its home lies
            # cyclically in (i, j]: then i is before where it may live.
            if (i < home <= j) if i <= j else (i < home or home <= j):
                continue
            self.slots[i] = self.slots[j]
            i = j
        self.slots[i] = 0

    cdef Py_ssize_t _evict(self):
        """Free one entry by CLOCK and return it."""
        cdef Py_ssize_t entry
        while True:
            entry = self.hand
            self.hand = (self.hand + 1) % self.max_entries
            if self.flags[entry] & REFERENCED:
                self.flags[entry] &= ~REFERENCED
                continue
            self._unlink(entry)
            self._keys[entry] = None
            self.flags[entry] = 0
            self.entries -= 1
            self.evictions += 1
            return entry

    # -- the request path ----------------------------------------------------------

    def lookup(self, ids, bytes prefix, bytes suffix, double now, bint whole=False):
        """What the cache can serve of ``prefix + id + suffix`` for each id.

        ``ids``: a list of str or an ``IdSpans``. Returns ``(values, status,
        refresh)``: a new float64 array of shape ``(n_features, len(ids))``
        (0.0 where not served or missing), a uint8 array of ``NOT_SERVED``,
        ``SERVED`` or ``SERVED_MISSING`` per id, and the positions of the ids
        whose entries are stale and now marked as being refreshed: the
        caller must ``put`` or ``release`` each of them. Raises
        ``TypeError`` for an element that is not a str.

        ``whole``: serve every id or none. Returns None, having counted and
        marked nothing, when some id is not served (a caller that must not
        wait asks so, and looks up again where it may wait).

        A software pipeline, as in the embedded store's ``IdIndex.find``:
        in step i, id i is hashed and its slot prefetched; id i - AHEAD
        reads its slot and prefetches its entry (the key's place in the
        list of keys, flags, time, values); id i - 2 AHEAD prefetches its
        key's bytes; id i - 3 AHEAD is confirmed and served. The misses of
        many ids are in flight at once: without it, a 400-id lookup in a
        table of 60,000 entries cost 46 us, four dependent misses per id.
        """
        cdef Py_ssize_t n = _count_ids(ids)
        cdef IdSpans spans = ids if type(ids) is IdSpans else None
        cdef list id_list = ids if type(ids) is list else None
        cdef Py_ssize_t k = self.n_features
        cdef cnp.ndarray out_arr = np.zeros((k, n), dtype=np.float64)
        cdef cnp.ndarray status_arr = np.zeros(n, dtype=np.uint8)
        cdef double *out = <double *>cnp.PyArray_DATA(out_arr)
        cdef uint8_t *status = <uint8_t *>cnp.PyArray_DATA(status_arr)
        cdef list refresh = []
        cdef list refreshing = []        # entries marked REFRESHING here (to undo for ``whole``)
        cdef PyObject **keys_of = list_items(self._keys)
        # Ring buffers over the ids in flight.
        cdef const uint8_t *keys[RING]
        cdef Py_ssize_t lengths[RING]
        cdef uint64_t hashes[RING]
        cdef Py_ssize_t candidates[RING]
        cdef bint empty[RING]
        cdef Py_ssize_t i, j, f, entry, length, position, id_length
        cdef Py_ssize_t p_len = len(prefix), s_len = len(suffix), widest = 0
        cdef const char *text
        cdef uint64_t slot
        cdef double age, ttl, refresh_after
        cdef uint8_t flags
        # Counted here, added to the table's counters only once the lookup stands.
        cdef long long hits = 0, misses = 0, expired = 0, stale_served = 0
        # With a prefix or suffix, each key in flight is assembled in its own
        # slice of one buffer, as wide as the widest key of the request.
        cdef uint8_t *scratch = NULL
        if p_len or s_len:
            for i in range(n):
                _id_text(spans, id_list, i, &id_length)
                widest = max(widest, id_length)
            widest += p_len + s_len
            scratch = <uint8_t *>malloc(RING * widest)
            if scratch == NULL:
                raise MemoryError()
        try:
            for i in range(n + 3 * AHEAD):
                # 1. Id i: its key and hash; prefetch its first slot.
                if i < n:
                    j = i & (RING - 1)
                    text = _id_text(spans, id_list, i, &id_length)
                    if scratch != NULL:
                        keys[j] = scratch + j * widest
                        memcpy(<void *>keys[j], PyBytes_AS_STRING(prefix), p_len)
                        memcpy(<void *>(keys[j] + p_len), text, id_length)
                        memcpy(<void *>(keys[j] + p_len + id_length), PyBytes_AS_STRING(suffix), s_len)
                    else:
                        keys[j] = <const uint8_t *>text
                    lengths[j] = id_length + p_len + s_len
                    hashes[j] = hash_bytes(keys[j], lengths[j])
                    prefetch(&self.slots[hashes[j] & self.mask])
                # 2. Id i - AHEAD: read its first slot; prefetch the candidate entry.
                if AHEAD <= i < n + AHEAD:
                    j = (i - AHEAD) & (RING - 1)
                    candidates[j] = -1
                    slot = self.slots[hashes[j] & self.mask]
                    empty[j] = slot == 0
                    if not empty[j] and (slot >> 32) == (hashes[j] >> 32):
                        entry = candidates[j] = <Py_ssize_t>(slot & 0xFFFFFFFFULL) - 1
                        prefetch(&keys_of[entry])
                        prefetch(&self.flags[entry])
                        prefetch(&self.fetched[entry])
                        prefetch(&self.values[entry * k])
                # 3. Id i - 2 AHEAD: prefetch the candidate's key bytes.
                if 2 * AHEAD <= i < n + 2 * AHEAD:
                    j = (i - 2 * AHEAD) & (RING - 1)
                    if candidates[j] >= 0:
                        prefetch(keys_of[candidates[j]])
                # 4. Id i - 3 AHEAD: confirm (anything unresolved takes the full probe), and serve.
                if i < 3 * AHEAD:
                    continue
                position = i - 3 * AHEAD
                j = position & (RING - 1)
                if empty[j]:
                    entry = -1                     # an empty first slot: certainly absent
                else:
                    entry = candidates[j]
                    if entry < 0 or not self._is(entry, keys[j], lengths[j]):
                        entry = self._probe(keys[j], lengths[j], hashes[j], &id_length)
                if entry < 0:
                    misses += 1
                    if whole:
                        break
                    continue
                flags = self.flags[entry]
                age = now - self.fetched[entry]
                if flags & IS_MISSING:
                    ttl, refresh_after = self.missing_ttl, self.missing_refresh_after
                else:
                    ttl, refresh_after = self.ttl, self.refresh_after
                if age >= ttl:
                    expired += 1
                    misses += 1
                    if whole:
                        break
                    continue
                self.flags[entry] = flags | REFERENCED
                if flags & IS_MISSING:
                    status[position] = SERVED_MISSING
                else:
                    status[position] = SERVED
                    for f in range(k):
                        out[f * n + position] = self.values[entry * k + f]
                if age < refresh_after:
                    hits += 1
                    continue
                stale_served += 1
                if not flags & REFRESHING:
                    self.flags[entry] |= REFRESHING
                    refresh.append(position)
                    refreshing.append(entry)
        finally:
            free(scratch)
        if whole and misses:
            for entry in refreshing:
                self.flags[entry] &= ~REFRESHING
            return None
        self.hits += hits
        self.misses += misses
        self.expired += expired
        self.stale_served += stale_served
        return out_arr, status_arr, refresh

    def put(self, str entity_id, values, double fetched_at):
        """Store an entity's fetched values (a sequence of ``n_features``
        floats) or, with ``values=None``, the fact that the store does not
        hold it; ends a refresh of it. Evicts by CLOCK when full."""
        cdef bytes key = entity_id.encode("utf-8")
        cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(key)
        cdef Py_ssize_t length = len(key), position, f
        cdef uint64_t h = hash_bytes(p, length)
        if values is not None and len(values) != self.n_features:
            raise ValueError(f"expected {self.n_features} values, got {len(values)}")
        cdef Py_ssize_t entry = self._probe(p, length, h, &position)
        if entry < 0:
            if self.next_free < self.max_entries:
                entry = self.next_free
                self.next_free += 1
            else:
                entry = self._evict()
                self._probe(p, length, h, &position)   # the eviction may have moved the empty slot
            self.slots[position] = ((h >> 32) << 32) | <uint64_t>(entry + 1)
            self.hashes[entry] = h
            self._keys[entry] = key
            self.entries += 1
            self.flags[entry] = USED
        else:
            self.flags[entry] &= ~(REFRESHING | IS_MISSING)
        self.fetched[entry] = fetched_at
        if values is None:
            self.flags[entry] |= IS_MISSING
            for f in range(self.n_features):
                self.values[entry * self.n_features + f] = 0.0
        else:
            for f in range(self.n_features):
                self.values[entry * self.n_features + f] = values[f]

    def release(self, str entity_id):
        """End a refresh of ``entity_id`` that brought nothing (it failed,
        or was dropped): the entry stays as it was, and a later request may
        ask for a refresh again."""
        cdef bytes key = entity_id.encode("utf-8")
        cdef Py_ssize_t position
        cdef Py_ssize_t entry = self._probe(
            <const uint8_t *>PyBytes_AS_STRING(key), len(key),
            hash_bytes(<const uint8_t *>PyBytes_AS_STRING(key), len(key)), &position)
        if entry >= 0:
            self.flags[entry] &= ~REFRESHING

    def refreshing(self, str entity_id):
        """Whether a refresh of ``entity_id`` is in flight (for tests)."""
        cdef bytes key = entity_id.encode("utf-8")
        cdef Py_ssize_t position
        cdef Py_ssize_t entry = self._probe(
            <const uint8_t *>PyBytes_AS_STRING(key), len(key),
            hash_bytes(<const uint8_t *>PyBytes_AS_STRING(key), len(key)), &position)
        return entry >= 0 and bool(self.flags[entry] & REFRESHING)

    def nbytes(self):
        """Bytes held by the arrays and the keys (not counting the keys'
        Python object headers beyond ``sys.getsizeof``)."""
        import sys
        keys = sum(sys.getsizeof(key) for key in self._keys if key is not None)
        return int(self._slots_arr.nbytes + self._hashes_arr.nbytes + self._fetched_arr.nbytes
                   + self._values_arr.nbytes + self._flags_arr.nbytes) + sys.getsizeof(self._keys) + keys
