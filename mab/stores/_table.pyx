"""Compiled core of the embedded feature store.

Loops that would cost seconds (loading) or most of a request (lookup) in
Python, over the arrays ``mab.stores.csvfile.read_csv`` makes of a CSV file:

* ``build_slots``: an open-addressing hash index over those ids (linear
  probing, load factor at most 2/3); each 64-bit slot holds the upper 32
  bits of the id's hash and row + 1, so a probe rarely touches the id bytes
  of a row that is not the one sought;
* ``build_records``: one fixed-size record per row holding where its id is
  and all its features, so finding an id and reading its features touches
  three cache lines (slot, record, id bytes) rather than one per array;
* ``IdIndex.find``: the rows of a whole request's ids at once, reading each
  Python string's UTF-8 bytes in place. Hashing our own bytes avoids what
  dominates a ``dict`` lookup of freshly decoded strings: computing
  Python's string hash for every new ``str`` object.

All arrays are plain numpy arrays, so the store can keep them in a file
and every worker can map the same pages.
"""

import numpy as np

cimport numpy as cnp
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.unicode cimport PyUnicode_Check
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy

from mab._wire cimport IdSpans
from mab.stores._hash cimport hash_bytes

from mab.stores._csv import CsvError

cnp.import_array()

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t *size) except NULL

from mab.stores._prefetch cimport prefetch

# How many ids ahead the lookup pipeline prefetches (see IdIndex.find), and
# the size of its ring buffers (a power of two > 3 * AHEAD). A request's ids
# land in random places of tables larger than the caches, so misses, not
# hashing, dominate a lookup; they must overlap instead of queueing.
cdef enum:
    AHEAD = 8
    RING = 32
# How far ahead `gather` prefetches the features of upcoming rows.
cdef enum:
    GATHER_AHEAD = 8

# Increment when the hash function or the slot layout changes: it is part of
# the on-disk cache format (the store folds it into the cache key).
HASH_VERSION = 2


def hash_id(bytes key):
    """The 64-bit hash of one id's bytes (exposed for tests)."""
    return hash_bytes(<const uint8_t *><char *>key, len(key))


def slot_count(Py_ssize_t n_rows):
    """Slots for n_rows ids: the smallest power of two >= 1.5 n_rows (at least 8)."""
    cdef Py_ssize_t size = 8
    while size < n_rows + n_rows // 2:
        size *= 2
    return size


# --------------------------------------------------------------------------
# The index
# --------------------------------------------------------------------------

def build_slots(const uint8_t[::1] blob, const int64_t[::1] offsets, const int64_t[::1] line_numbers):
    """Build the hash slots over ``n = len(offsets) - 1`` ids.

    Raises ``CsvError`` for a duplicate id, naming both of its lines.
    """
    cdef Py_ssize_t n = offsets.shape[0] - 1
    if n >= 0xFFFFFFFF:
        raise CsvError(f"{n} rows: at most {0xFFFFFFFF - 1} are supported")
    cdef Py_ssize_t size = slot_count(n)
    cdef uint64_t mask = size - 1
    cdef cnp.ndarray slots_arr = np.zeros(size, dtype=np.uint64)
    cdef uint64_t *slots = <uint64_t *>cnp.PyArray_DATA(slots_arr)
    cdef const uint8_t *b = &blob[0] if blob.shape[0] else NULL
    cdef Py_ssize_t row, other, length
    cdef uint64_t h, i, tag, slot
    cdef Py_ssize_t duplicate = -1, first = -1
    with nogil:
        for row in range(n):
            length = offsets[row + 1] - offsets[row]
            h = hash_bytes(b + offsets[row], length)
            tag = h >> 32
            i = h & mask
            while True:
                slot = slots[i]
                if slot == 0:
                    slots[i] = (tag << 32) | <uint64_t>(row + 1)
                    break
                if (slot >> 32) == tag:
                    other = <Py_ssize_t>(slot & 0xFFFFFFFFULL) - 1
                    if (offsets[other + 1] - offsets[other] == length
                            and memcmp(b + offsets[other], b + offsets[row], length) == 0):
                        duplicate = row
                        first = other
                        break
                i = (i + 1) & mask
            if duplicate >= 0:
                break
    if duplicate >= 0:
        name = bytes(blob[offsets[duplicate]:offsets[duplicate + 1]]).decode("utf-8", "replace")
        raise CsvError(
            f"line {line_numbers[duplicate]}: duplicate id {name!r} "
            f"(first on line {line_numbers[first]})"
        )
    return slots_arr


def record_dtype(Py_ssize_t n_features):
    """A row of the store: its id's place in the blob, and its features.

    16 + 8 k bytes, 8-byte aligned: with two features a record is 32 bytes
    and never straddles two cache lines.
    """
    return np.dtype([
        ("offset", "<u8"), ("length", "<u4"), ("reserved", "<u4"), ("features", "<f8", (n_features,)),
    ])


def build_records(offsets, values):
    """Records for ``n = len(offsets) - 1`` rows from parse_csv's output,
    plus a last, all-zero record: the row that missing ids point at."""
    n = offsets.shape[0] - 1
    records = np.zeros(n + 1, dtype=record_dtype(values.shape[0]))
    records["offset"][:n] = offsets[:-1]
    records["length"][:n] = np.diff(offsets)
    records["features"][:n] = values[:, :n].T
    return records


cdef class IdIndex:
    """Finds entity ids in a hash index built by ``build_slots`` and reads
    their features from records built by ``build_records``.

    Holds references to the (typically memory-mapped) arrays it reads.
    """

    cdef object _slots, _blob, _records
    cdef const uint64_t *slots
    cdef const uint8_t *blob
    cdef const char *records
    cdef Py_ssize_t stride
    cdef uint64_t mask
    cdef readonly Py_ssize_t n_rows
    cdef readonly Py_ssize_t n_features
    cdef readonly Py_ssize_t max_id_bytes

    def __init__(self, slots, blob, records):
        self._slots = np.ascontiguousarray(slots, dtype=np.uint64)
        self._blob = np.ascontiguousarray(blob, dtype=np.uint8)
        size = self._slots.shape[0]
        if size < 1 or size & (size - 1):
            raise ValueError("the slot count must be a power of two")
        n_features = records.dtype["features"].shape[0] if records.dtype.names else 0
        if records.dtype != record_dtype(n_features) or records.ndim != 1 or len(records) < 1:
            raise ValueError("records must be a one-dimensional array of record_dtype(k)")
        self._records = np.ascontiguousarray(records)
        self.slots = <const uint64_t *>cnp.PyArray_DATA(self._slots)
        self.blob = <const uint8_t *>cnp.PyArray_DATA(self._blob)
        self.records = <const char *>cnp.PyArray_DATA(self._records)
        self.stride = self._records.dtype.itemsize
        self.mask = size - 1
        self.n_rows = self._records.shape[0] - 1
        self.n_features = n_features
        self.max_id_bytes = int(self._records["length"].max())

    cdef inline uint64_t _id_offset(self, Py_ssize_t row) noexcept nogil:
        return (<const uint64_t *>(self.records + row * self.stride))[0]

    cdef inline Py_ssize_t _id_length(self, Py_ssize_t row) noexcept nogil:
        return (<const uint32_t *>(self.records + row * self.stride + 8))[0]

    cdef inline bint _is(self, Py_ssize_t row, const uint8_t *key, Py_ssize_t length) noexcept nogil:
        return (self._id_length(row) == length
                and memcmp(self.blob + self._id_offset(row), key, length) == 0)

    cdef inline Py_ssize_t _find(self, const uint8_t *key, Py_ssize_t length) noexcept nogil:
        cdef uint64_t h = hash_bytes(key, length)
        cdef uint64_t tag = h >> 32
        cdef uint64_t i = h & self.mask
        cdef uint64_t slot
        cdef Py_ssize_t row
        while True:
            slot = self.slots[i]
            if slot == 0:
                return -1
            if (slot >> 32) == tag:
                row = <Py_ssize_t>(slot & 0xFFFFFFFFULL) - 1
                if self._is(row, key, length):
                    return row
            i = (i + 1) & self.mask

    def find(self, ids, bytes prefix=b"", bytes suffix=b""):
        """Rows of ``prefix + id + suffix`` for every id of ``ids``, a list
        of str or an ``IdSpans`` (ids read in place from a request body).

        Returns ``(rows, missing)``: an int64 array in which ids that are not
        in the index get ``n_rows`` (the zero row of the feature matrix),
        and how many such ids there were. Raises ``TypeError`` for an
        element that is not a ``str``.

        A software pipeline: in step i, id i is hashed and its slot
        prefetched, id i - AHEAD reads its slot and prefetches its record,
        id i - 2 AHEAD reads its record and prefetches its bytes, and id
        i - 3 AHEAD is confirmed. Each load was asked for AHEAD steps before
        it is used, so the misses of many ids are in flight at once.
        """
        cdef IdSpans spans = None
        cdef list id_list = None
        cdef Py_ssize_t n
        if type(ids) is IdSpans:
            spans = <IdSpans>ids
            n = spans.n
        elif type(ids) is list:
            id_list = <list>ids
            n = PyList_GET_SIZE(id_list)
        else:
            raise TypeError(f"ids must be a list or IdSpans, not {type(ids).__name__}")
        cdef cnp.ndarray rows_arr = cnp.PyArray_EMPTY(1, [n], cnp.NPY_INT64, 0)
        cdef int64_t *rows = <int64_t *>cnp.PyArray_DATA(rows_arr)
        cdef Py_ssize_t p_len = len(prefix), s_len = len(suffix)
        cdef Py_ssize_t limit = self.max_id_bytes
        cdef bint assemble = p_len > 0 or s_len > 0
        # Ring buffers over the ids in flight (RING > 3 * AHEAD).
        cdef const uint8_t *keys[RING]
        cdef Py_ssize_t lengths[RING]
        cdef uint64_t hashes[RING]
        cdef Py_ssize_t candidates[RING]
        cdef Py_ssize_t i, j, length, row, missing = 0
        cdef uint64_t slot
        cdef const char *text
        cdef object item
        # With a prefix or suffix, each key in flight is assembled in its own
        # slice of one buffer; a key longer than the longest stored id
        # cannot match and is never assembled.
        cdef uint8_t *scratch = NULL
        if assemble:
            scratch = <uint8_t *>malloc(RING * (limit + 1))
            if scratch == NULL:
                raise MemoryError()
        try:
            for i in range(n + 3 * AHEAD):
                # 1. Hash id i; prefetch its first slot.
                if i < n:
                    j = i & (RING - 1)
                    if spans is not None:
                        text = spans.data + spans.starts[i]
                        length = spans.lengths[i]
                    else:
                        item = <object>PyList_GET_ITEM(id_list, i)
                        if not PyUnicode_Check(item):
                            raise TypeError(f"item {i} is {type(item).__name__}, not str")
                        text = PyUnicode_AsUTF8AndSize(item, &length)
                    length += p_len + s_len
                    if length > limit:
                        lengths[j] = -1
                    else:
                        if assemble:
                            keys[j] = scratch + j * (limit + 1)
                            memcpy(<void *>keys[j], <char *>prefix, p_len)
                            memcpy(<void *>(keys[j] + p_len), text, length - p_len - s_len)
                            memcpy(<void *>(keys[j] + length - s_len), <char *>suffix, s_len)
                        else:
                            keys[j] = <const uint8_t *>text
                        lengths[j] = length
                        hashes[j] = hash_bytes(keys[j], length)
                        prefetch(&self.slots[hashes[j] & self.mask])
                # 2. Id i - AHEAD: read its first slot; prefetch the candidate's record.
                if AHEAD <= i < n + AHEAD:
                    j = (i - AHEAD) & (RING - 1)
                    candidates[j] = -1
                    if lengths[j] >= 0:
                        slot = self.slots[hashes[j] & self.mask]
                        if slot == 0:
                            lengths[j] = -1          # an empty first slot: definitely absent
                        elif (slot >> 32) == (hashes[j] >> 32):
                            candidates[j] = <Py_ssize_t>(slot & 0xFFFFFFFFULL) - 1
                            prefetch(self.records + candidates[j] * self.stride)
                # 3. Id i - 2 AHEAD: prefetch the candidate's id bytes.
                if 2 * AHEAD <= i < n + 2 * AHEAD:
                    j = (i - 2 * AHEAD) & (RING - 1)
                    if candidates[j] >= 0:
                        prefetch(self.blob + self._id_offset(candidates[j]))
                # 4. Id i - 3 AHEAD: confirm; anything unresolved takes the full probe.
                if i >= 3 * AHEAD:
                    j = (i - 3 * AHEAD) & (RING - 1)
                    row = -1
                    if lengths[j] >= 0:
                        row = candidates[j]
                        if row < 0 or not self._is(row, keys[j], lengths[j]):
                            row = self._find(keys[j], lengths[j])
                    if row < 0:
                        rows[i - 3 * AHEAD] = self.n_rows
                        missing += 1
                    else:
                        rows[i - 3 * AHEAD] = row
        finally:
            free(scratch)
        return rows_arr, missing

    def gather(self, cnp.ndarray rows, tuple features):
        """Features ``features`` (indices into the records' features) of
        ``rows`` (from ``find``), as a new (len(features), len(rows)) array."""
        if rows.ndim != 1 or rows.dtype != np.int64 or not rows.flags.c_contiguous:
            raise ValueError("rows must be a contiguous int64 array")
        cdef Py_ssize_t k = len(features), n = rows.shape[0], f, i, ahead
        cdef Py_ssize_t columns[8]
        if k > 8:
            raise ValueError("at most 8 features per gather")
        for f in range(k):
            if not 0 <= features[f] < self.n_features:
                raise IndexError(f"feature {features[f]} out of range")
            columns[f] = 16 + 8 * features[f]     # byte offset within a record
        cdef const int64_t *r = <const int64_t *>cnp.PyArray_DATA(rows)
        for i in range(n):
            if not 0 <= r[i] <= self.n_rows:
                raise IndexError(f"row {r[i]} out of range")
        cdef cnp.ndarray out = cnp.PyArray_EMPTY(2, [k, n], cnp.NPY_FLOAT64, 0)
        cdef double *o = <double *>cnp.PyArray_DATA(out)
        cdef const char *record
        with nogil:
            for i in range(n):
                ahead = i + GATHER_AHEAD
                if ahead < n:
                    prefetch(self.records + r[ahead] * self.stride)
                record = self.records + r[i] * self.stride
                for f in range(k):
                    o[f * n + i] = (<const double *>(record + columns[f]))[0]
        return out

    def id_at(self, Py_ssize_t row):
        """The id stored at ``row`` (for messages and tests)."""
        if not 0 <= row < self.n_rows:
            raise IndexError(row)
        cdef Py_ssize_t start = self._id_offset(row)
        return (<char *>self.blob)[start:start + self._id_length(row)].decode("utf-8")
