"""The /predict request body, read without a Python string per id.

``parse_predict_body(body)`` recognises the common shape of a prediction
request: one JSON object whose keys are among the five request fields, each
at most once; whose strings are printable ASCII without escapes; whose
integers have no sign but '-', no leading zeros, no fraction and no
exponent, and lie in [-2**63, 2**64 - 1] (where orjson, the general parser,
reads integers exactly; beyond, it reads them as binary64 like numbers with
a fraction or exponent); with any JSON whitespace. For such a body it returns the fields,
with ``item_ids`` as an ``IdSpans``: where each id lies inside the body.
For any other body it returns None, and the caller decodes it with a
general JSON parser, which also words the error for anything invalid. Both
paths accept the same documents with the same meaning (the tests hold them
to it); this one only skips creating, and later freeing, a ``str`` per id,
which costs more than looking the id up.

``IdSpans.json_array(order)`` writes the ids back out as a JSON array in a
given order, again without strings: they need no escaping.
``IdSpans.concatenated()`` gives them end to end with their lengths, the
layout of an Arrow string array (the decision log, mab.decisions).

``object_member_names(body)`` lists the member names of the top-level object
of a body the general parser has accepted, so that the general path can
refuse a name given twice (orjson keeps the last silently).
"""

import numpy as np

cimport numpy as cnp
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memchr, memcpy

cnp.import_array()

# The request fields, in the order parse_predict_body returns them.
FIELDS = ("item_ids", "user_id", "top_k", "model", "seed")


cdef class IdSpans:
    """The item ids of one request: byte ranges of its body (printable ASCII).

    Behaves as a read-only sequence of ``str`` for code that wants strings.
    """

    def __init__(self, bytes body not None, starts, lengths):
        self.body = body
        self.data = PyBytes_AS_STRING(body)
        self._starts = np.ascontiguousarray(starts, dtype=np.int64)
        self._lengths = np.ascontiguousarray(lengths, dtype=np.int64)
        if self._starts.shape != self._lengths.shape or self._starts.ndim != 1:
            raise ValueError("starts and lengths must be one-dimensional and of one length")
        # starts + lengths could wrap around in int64: compare lengths with
        # the room left after each start instead.
        if len(self._starts) and (
            self._starts.min() < 0 or self._lengths.min() < 0
            or (self._lengths > PyBytes_GET_SIZE(body) - self._starts).any()
        ):
            raise ValueError("a span lies outside the body")
        self.starts = <const int64_t *>cnp.PyArray_DATA(self._starts)
        self.lengths = <const int64_t *>cnp.PyArray_DATA(self._lengths)
        self.n = self._starts.shape[0]

    def __len__(self):
        return self.n

    def __getitem__(self, Py_ssize_t i):
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.data[self.starts[i]:self.starts[i] + self.lengths[i]].decode("ascii")

    def __iter__(self):
        cdef Py_ssize_t i
        for i in range(self.n):
            yield self.data[self.starts[i]:self.starts[i] + self.lengths[i]].decode("ascii")

    def __eq__(self, other):
        return list(self) == list(other)

    def json_array(self, cnp.ndarray order):
        """``["id", ...]`` for the ids at the int64 indices ``order``."""
        if order.ndim != 1 or order.dtype != np.int64 or not order.flags.c_contiguous:
            raise ValueError("order must be a contiguous one-dimensional int64 array")
        cdef Py_ssize_t k = order.shape[0], i, size = 2, pos
        cdef const int64_t *o = <const int64_t *>cnp.PyArray_DATA(order)
        for i in range(k):
            if not 0 <= o[i] < self.n:
                raise IndexError(f"index {o[i]} out of range for {self.n} ids")
            size += self.lengths[o[i]] + 3        # two quotes and a comma
        cdef bytes out = PyBytes_FromStringAndSize(NULL, size - (1 if k else 0))
        cdef char *w = PyBytes_AS_STRING(out)
        w[0] = b"["
        pos = 1
        for i in range(k):
            if i:
                w[pos] = b","
                pos += 1
            w[pos] = b'"'
            memcpy(w + pos + 1, self.data + self.starts[o[i]], self.lengths[o[i]])
            pos += self.lengths[o[i]] + 1
            w[pos] = b'"'
            pos += 1
        w[pos] = b"]"
        return out

    def concatenated(self):
        """``(data, lengths)``: the ids' bytes end to end (``bytes``, ASCII)
        and each id's length in bytes (a new int64 array of ``len(self)``).
        The values and offsets of an Arrow string array, without a ``str``
        per id (mab.decisions builds its item_ids column from them)."""
        cdef Py_ssize_t i, size = 0, pos = 0
        for i in range(self.n):
            size += self.lengths[i]
        cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
        cdef char *w = PyBytes_AS_STRING(out)
        for i in range(self.n):
            memcpy(w + pos, self.data + self.starts[i], self.lengths[i])
            pos += self.lengths[i]
        return out, np.array(self._lengths[:self.n], dtype=np.int64)


cdef IdSpans _spans_of_parse(bytes body, cnp.ndarray starts, cnp.ndarray lengths, Py_ssize_t count):
    # The parser's own spans are within the body by construction: no checks.
    cdef IdSpans spans = IdSpans.__new__(IdSpans)
    spans.body = body
    spans.data = PyBytes_AS_STRING(body)
    spans._starts = starts
    spans._lengths = lengths
    spans.starts = <const int64_t *>cnp.PyArray_DATA(starts)
    spans.lengths = <const int64_t *>cnp.PyArray_DATA(lengths)
    spans.n = count
    return spans


cdef inline Py_ssize_t _skip_ws(const unsigned char *p, Py_ssize_t i, Py_ssize_t n) noexcept:
    while i < n and (p[i] == 32 or p[i] == 10 or p[i] == 13 or p[i] == 9):
        i += 1
    return i


cdef inline Py_ssize_t _simple_string_end(const unsigned char *p, Py_ssize_t i, Py_ssize_t n) noexcept:
    """p[i] is the opening quote: the index of the closing one, or -1 for a
    string this parser does not take (escapes, control or non-ASCII bytes)."""
    cdef const unsigned char *quote = <const unsigned char *>memchr(p + i + 1, 34, n - i - 1)
    if quote == NULL:
        return -1
    cdef Py_ssize_t j, end = quote - p
    cdef unsigned char c
    cdef bint bad = False
    # No early exit: a loop the compiler can vectorise.
    for j in range(i + 1, end):
        c = p[j]
        bad |= (c == 92) | (c < 32) | (c > 126)
    return -1 if bad else end


cdef inline bint _literal(const unsigned char *p, Py_ssize_t i, Py_ssize_t n, const char *word, Py_ssize_t length) noexcept:
    cdef Py_ssize_t j
    if i + length > n:
        return False
    for j in range(length):
        if p[i + j] != <unsigned char>word[j]:
            return False
    return True


cdef Py_ssize_t _count_quotes(const unsigned char *p, Py_ssize_t i, Py_ssize_t n) noexcept:
    cdef Py_ssize_t count = 0
    for i in range(i, n):
        count += p[i] == 34
    return count


cdef int _field(const unsigned char *p, Py_ssize_t start, Py_ssize_t end) noexcept:
    """Which request field the key p[start:end] names, or -1."""
    cdef Py_ssize_t length = end - start
    if length == 8 and _literal(p, start, end, "item_ids", 8):
        return 0
    if length == 7 and _literal(p, start, end, "user_id", 7):
        return 1
    if length == 5 and _literal(p, start, end, "top_k", 5):
        return 2
    if length == 5 and _literal(p, start, end, "model", 5):
        return 3
    if length == 4 and _literal(p, start, end, "seed", 4):
        return 4
    return -1


def parse_predict_body(bytes body not None):
    """``(item_ids, user_id, top_k, model, seed)`` of a simple request body
    (absent and null fields are None), or None if the body is not simple."""
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(body)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body)
    cdef Py_ssize_t i = _skip_ws(p, 0, n), key_end, end, count, capacity
    cdef int field, seen = 0
    cdef bint negative
    cdef uint64_t value
    cdef list values = [None, None, None, None, None]
    cdef cnp.ndarray starts, lengths
    cdef int64_t *s
    cdef int64_t *l
    if i >= n or p[i] != 123:                        # '{'
        return None
    i = _skip_ws(p, i + 1, n)
    if i < n and p[i] == 125:                        # '}': an empty object
        i = _skip_ws(p, i + 1, n)
        return tuple(values) if i == n else None
    while True:
        # A key, then ':'.
        if i >= n or p[i] != 34:
            return None
        key_end = _simple_string_end(p, i, n)
        if key_end < 0:
            return None
        field = _field(p, i + 1, key_end)
        if field < 0 or seen & (1 << field):
            return None                               # unknown or repeated: the general path
        seen |= 1 << field
        i = _skip_ws(p, key_end + 1, n)
        if i >= n or p[i] != 58:                     # ':'
            return None
        i = _skip_ws(p, i + 1, n)
        if i >= n:
            return None
        # The value.
        if _literal(p, i, n, "null", 4):
            i += 4
        elif field == 0:
            if p[i] != 91:                           # '['
                return None
            # Each id has two quotes: half the quotes left is an upper bound
            # (a byte count would over-allocate tenfold, and fresh pages cost).
            capacity = _count_quotes(p, i, n) // 2 + 1
            starts = cnp.PyArray_EMPTY(1, [capacity], cnp.NPY_INT64, 0)
            lengths = cnp.PyArray_EMPTY(1, [capacity], cnp.NPY_INT64, 0)
            s = <int64_t *>cnp.PyArray_DATA(starts)
            l = <int64_t *>cnp.PyArray_DATA(lengths)
            count = 0
            i = _skip_ws(p, i + 1, n)
            if i < n and p[i] == 93:                 # ']'
                i += 1
            else:
                while True:
                    if i >= n or p[i] != 34:
                        return None
                    end = _simple_string_end(p, i, n)
                    if end < 0:
                        return None
                    s[count] = i + 1
                    l[count] = end - i - 1
                    count += 1
                    i = _skip_ws(p, end + 1, n)
                    if i < n and p[i] == 44:         # ','
                        i = _skip_ws(p, i + 1, n)
                        continue
                    if i < n and p[i] == 93:
                        i += 1
                        break
                    return None
            values[0] = _spans_of_parse(body, starts, lengths, count)
        elif field == 1 or field == 3:
            if p[i] != 34:
                return None
            end = _simple_string_end(p, i, n)
            if end < 0:
                return None
            values[field] = (<const char *>p)[i + 1:end].decode("ascii")
            i = end + 1
        else:
            # An integer: -?(0|[1-9][0-9]*), no fraction, no exponent.
            negative = p[i] == 45                    # '-'
            if negative:
                i += 1
            if i >= n or not 48 <= p[i] <= 57:
                return None
            if p[i] == 48 and i + 1 < n and 48 <= p[i + 1] <= 57:
                return None                          # a leading zero: not JSON
            value = 0
            while i < n and 48 <= p[i] <= 57:
                if value > (0xFFFFFFFFFFFFFFFFULL - (p[i] - 48)) // 10:
                    return None                      # beyond 64 bits: the general path
                value = value * 10 + (p[i] - 48)
                i += 1
            if i < n and (p[i] == 46 or p[i] == 101 or p[i] == 69):
                return None                          # '.', 'e', 'E'
            if negative and value > 0x8000000000000000ULL:
                return None                          # below -2**63: orjson reads a binary64
            values[field] = -<object>value if negative else <object>value
        # ',' and the next key, or '}' and the end.
        i = _skip_ws(p, i, n)
        if i < n and p[i] == 44:
            i = _skip_ws(p, i + 1, n)
            continue
        if i < n and p[i] == 125:
            i = _skip_ws(p, i + 1, n)
            return tuple(values) if i == n else None
        return None


cdef inline Py_ssize_t _string_end(const unsigned char *p, Py_ssize_t i, Py_ssize_t n) noexcept:
    """p[i] is an opening quote: the index of the closing one, escapes
    allowed (a quote closes the string unless an odd run of backslashes
    precedes it), or -1 if the body ends first."""
    cdef const unsigned char *quote
    cdef Py_ssize_t j = i + 1, k, b
    while j < n:
        quote = <const unsigned char *>memchr(p + j, 34, n - j)
        if quote == NULL:
            return -1
        k = quote - p
        b = k
        while b > i + 1 and p[b - 1] == 92:           # '\\'
            b -= 1
        if (k - b) % 2 == 0:
            return k
        j = k + 1
    return -1


def object_member_names(bytes body not None):
    """The names of the members of the top-level object of ``body``, in
    order, as ``bytes`` between their quotes (escapes left as written).

    Meant for a body that a JSON parser has accepted as an object (RFC 8259
    section 4): a name given twice then appears twice here, where the parsed
    object keeps one. For any other body the list is unspecified (but the
    scan never reads outside the body). Linear in the body's length.
    """
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(body)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body)
    cdef Py_ssize_t i = _skip_ws(p, 0, n), end
    cdef Py_ssize_t depth = 1
    cdef bint expect_name = True
    cdef unsigned char c
    cdef list names = []
    if i >= n or p[i] != 123:                        # '{'
        return names
    i += 1
    while i < n:
        c = p[i]
        if c == 34:                                  # '"': a name or a string value
            end = _string_end(p, i, n)
            if end < 0:
                break
            if depth == 1 and expect_name:
                names.append(body[i + 1:end])
                expect_name = False
            i = end + 1
            continue
        if c == 123 or c == 91:                      # '{', '['
            depth += 1
        elif c == 125 or c == 93:                    # '}', ']'
            depth -= 1
            if depth == 0:
                break
        elif c == 44 and depth == 1:                 # ',' between members
            expect_name = True
        i += 1
    return names
