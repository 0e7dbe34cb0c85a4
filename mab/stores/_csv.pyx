"""The compiled part of the embedded store's CSV reader: the byte loops.

``mab.stores.csvfile`` reads a whole file and states the rules; this module
does what runs once per byte or per field, so that a file of ten million
rows is read in seconds: the RFC 4180 tokenizer (quotes, line endings),
the header, the ids, and the counts. Every error is a ``CsvError`` whose
message names the line (and the column where that helps).
"""

import unicodedata

import numpy as np

cimport numpy as cnp
from libc.float cimport DBL_MAX, DBL_MIN
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.string cimport memcpy

cnp.import_array()

cdef extern from "Python.h":
    # Python's float() conversion (David Gay's correctly rounded strtod),
    # which unlike C's strtod ignores the locale. With a NULL overflow
    # exception it returns +-HUGE_VAL on overflow.
    double PyOS_string_to_double(const char *s, char **endptr, void *overflow_exception) except? -1.0


class CsvError(ValueError):
    """The file is not one this reader takes; the message names the line."""


#: The optional column of when each row's counts were last updated: Unix
#: seconds (a count, as below) or an RFC 3339 date-time. Read for decay
#: (a model's half_life_seconds) and by the fold of rewards into a snapshot.
TIMESTAMP_COLUMN = "updated_at"


# Every whole number up to 2**53 is a float64 exactly; above it, only those
# whose odd part is below 2**53.
cdef uint64_t EXACT_LIMIT = 1ULL << 53

# -- byte classes ------------------------------------------------------------

cdef enum:
    SPECIAL = 1      # , " CR LF: where an unquoted field stops
    CONTROL = 2      # C0 controls (CR, LF included) and DEL
    HIGH = 4         # part of a multi-byte UTF-8 sequence

cdef uint8_t BYTE_CLASS[256]
cdef int _b
for _b in range(256):
    BYTE_CLASS[_b] = (CONTROL if _b < 0x20 or _b == 0x7F else 0) | (HIGH if _b >= 0x80 else 0)
for _b in (0x2C, 0x22, 0x0D, 0x0A):
    BYTE_CLASS[_b] |= SPECIAL

# -- the tokenizer -----------------------------------------------------------

cdef enum:
    ENDS_FIELD = 0       # a comma follows: more fields in this record
    ENDS_RECORD = 1      # a line ending follows
    ENDS_FILE = 2        # the data ends

cdef enum:
    E_LONE_CR = 1
    E_CRLF_IN_LF = 2
    E_LF_IN_CRLF = 3
    E_QUOTE_INSIDE = 4
    E_AFTER_QUOTE = 5
    E_UNTERMINATED = 6

cdef struct Cursor:
    const uint8_t *buf
    Py_ssize_t size
    Py_ssize_t pos
    Py_ssize_t line         # the physical line of pos
    int crlf                # -1: not known yet (in the header), 0: LF, 1: CRLF
    int error
    Py_ssize_t error_line

cdef struct Field:
    Py_ssize_t start        # the content, quotes excluded
    Py_ssize_t end
    Py_ssize_t line         # where the field starts
    int quoted
    int doubled             # holds "" pairs: the content must be unescaped
    int flags               # CONTROL | HIGH of the content's bytes
    int ending


cdef inline Py_ssize_t _fail(Cursor *c, int error) noexcept nogil:
    c.error = error
    c.error_line = c.line
    return -1


cdef inline Py_ssize_t _line_end(Cursor *c, Py_ssize_t p) noexcept nogil:
    """Past the line ending at p (buf[p] is CR or LF), or -1."""
    if c.buf[p] == 13:
        if p + 1 < c.size and c.buf[p + 1] == 10:
            if c.crlf == 0:
                return _fail(c, E_CRLF_IN_LF)
            c.crlf = 1
            c.line += 1
            return p + 2
        return _fail(c, E_LONE_CR)
    if c.crlf == 1:
        return _fail(c, E_LF_IN_CRLF)
    c.crlf = 0
    c.line += 1
    return p + 1


cdef int _next_field(Cursor *c, Field *f) noexcept nogil:
    """Read the field at c.pos (RFC 4180 section 2) and what ends it; 0, or -1 with c.error set."""
    cdef const uint8_t *b = c.buf
    cdef Py_ssize_t p = c.pos, n = c.size
    cdef uint8_t ch, cls
    cdef int flags = 0
    f.line = c.line
    f.doubled = 0
    if p < n and b[p] == 34:
        f.quoted = 1
        p += 1
        f.start = p
        while True:
            if p >= n:
                c.line = f.line
                return <int>_fail(c, E_UNTERMINATED)
            ch = b[p]
            if ch == 34:
                if p + 1 < n and b[p + 1] == 34:
                    f.doubled = 1
                    p += 2
                    continue
                break
            if ch == 10:
                c.line += 1
            flags |= BYTE_CLASS[ch]
            p += 1
        f.end = p
        p += 1
        if p >= n:
            f.ending = ENDS_FILE
        elif b[p] == 44:
            f.ending = ENDS_FIELD
            p += 1
        elif b[p] == 13 or b[p] == 10:
            p = _line_end(c, p)
            if p < 0:
                return -1
            f.ending = ENDS_RECORD
        else:
            return <int>_fail(c, E_AFTER_QUOTE)
        f.flags = flags & (CONTROL | HIGH)
    else:
        f.quoted = 0
        f.start = p
        while p < n:
            cls = BYTE_CLASS[b[p]]
            if cls & SPECIAL:
                break
            flags |= cls
            p += 1
        f.end = p
        f.flags = flags
        if p >= n:
            f.ending = ENDS_FILE
        elif b[p] == 44:
            f.ending = ENDS_FIELD
            p += 1
        elif b[p] == 34:
            return <int>_fail(c, E_QUOTE_INSIDE)
        else:
            p = _line_end(c, p)
            if p < 0:
                return -1
            f.ending = ENDS_RECORD
    c.pos = p
    return 0


cdef _raise(Cursor *c, str where):
    """Raise the CsvError for c.error; `where` names the column."""
    line = c.error_line
    if c.error == E_LONE_CR:
        message = (
            f"line {line}: a carriage return (CR) not followed by a line feed (LF); lines must end "
            "in LF or CRLF (CR-only line endings, as classic Mac OS wrote them, are not read)"
        )
    elif c.error == E_CRLF_IN_LF:
        message = f"line {line}: ends in CRLF, but the header line ends in LF; every line must end the same way"
    elif c.error == E_LF_IN_CRLF:
        message = f"line {line}: ends in LF, but the header line ends in CRLF; every line must end the same way"
    elif c.error == E_QUOTE_INSIDE:
        message = (
            f"line {line}, {where}: a double quote inside a field that does not start with one; "
            'enclose the whole field in quotes and double the quote ("") (RFC 4180 section 2)'
        )
    elif c.error == E_AFTER_QUOTE:
        message = f"line {line}, {where}: text after the closing quote of a quoted field (RFC 4180 section 2)"
    elif c.error == E_UNTERMINATED:
        message = f"line {line}, {where}: a quoted field starts here and its closing quote never comes"
    else:
        message = f"line {line}: unreadable (error {c.error})"
    raise CsvError(message)


def _shown(str text):
    """``text`` for a message: quoted, and cut if long."""
    return repr(text) if len(text) <= 80 else repr(text[:80]) + f"... ({len(text)} characters)"


def _text(bytes data, Py_ssize_t start, Py_ssize_t end, int doubled):
    text = data[start:end].decode("utf-8", "backslashreplace")
    return text.replace('""', '"') if doubled else text


# -- the header --------------------------------------------------------------

def _check_name(str name, Py_ssize_t i, list names):
    where = f"line 1, column {i + 1}"
    if not name:
        raise CsvError(f"{where}: empty column name")
    control = [ch for ch in name if unicodedata.category(ch) == "Cc"]
    if control:
        hint = " (the separator must be a comma, not a tab)" if control[0] == "\t" else ""
        raise CsvError(f"{where}: the name {name!r} holds a control character (U+{ord(control[0]):04X}){hint}")
    if name != name.strip():
        raise CsvError(f"{where}: the name {name!r} has leading or trailing whitespace")
    if name in names:
        raise CsvError(f"{where}: the name {name!r} repeats column {names.index(name) + 1}")


def read_header(bytes data, Py_ssize_t start):
    """The header at ``start``: ``(names, body_start, body_line, crlf)``,
    where crlf is 1 if the header ends in CRLF, 0 in LF, -1 if the file
    ends with it."""
    cdef Cursor c
    cdef Field f
    c.buf = <const uint8_t *><char *>data
    c.size = len(data)
    c.pos = start
    c.line = 1
    c.crlf = -1
    c.error = 0
    if start >= c.size:
        raise CsvError("the file is empty: expected a header line naming the columns")
    if data[start] in b"\r\n":
        raise CsvError("line 1: a blank line; expected a header line naming the columns")
    names = []
    while True:
        if _next_field(&c, &f) < 0:
            _raise(&c, f"column {len(names) + 1}")
        name = _text(data, f.start, f.end, f.doubled)
        _check_name(name, len(names), names)
        names.append(name)
        if f.ending != ENDS_FIELD:
            break
    if len(names) < 2:
        hint = ""
        if ";" in names[0] or "\t" in names[0]:
            hint = " (the separator must be a comma, not ';' or a tab)"
        raise CsvError(
            f"line 1: the header names {len(names)} column, {names[0]!r}; expected an id column "
            f"and at least one feature column{hint}"
        )
    return names, c.pos, c.line, c.crlf


# -- ids ---------------------------------------------------------------------

cdef enum:
    ID_OK = 0
    ID_EMPTY = 1
    ID_CONTROL = 2
    ID_SPACE = 3


cdef inline int _space_length(const uint8_t *p, Py_ssize_t available) noexcept nogil:
    """Length of the UTF-8 whitespace character (by str.isspace) at p, else 0.
    C0 whitespace and U+0085 are control characters, refused as such."""
    if p[0] == 32:
        return 1
    if available >= 2 and p[0] == 0xC2 and p[1] == 0xA0:                # U+00A0
        return 2
    if available >= 3:
        if p[0] == 0xE1 and p[1] == 0x9A and p[2] == 0x80:              # U+1680
            return 3
        if p[0] == 0xE2 and p[1] == 0x80 and (
            p[2] <= 0x8A or p[2] == 0xA8 or p[2] == 0xA9 or p[2] == 0xAF  # U+2000-200A, 2028, 2029, 202F
        ):
            return 3
        if p[0] == 0xE2 and p[1] == 0x81 and p[2] == 0x9F:              # U+205F
            return 3
        if p[0] == 0xE3 and p[1] == 0x80 and p[2] == 0x80:              # U+3000
            return 3
    return 0


cdef inline int _id_problem(const uint8_t *b, Py_ssize_t s, Py_ssize_t e, int flags) noexcept nogil:
    cdef Py_ssize_t i, last
    if s == e:
        return ID_EMPTY
    if flags & CONTROL:
        return ID_CONTROL
    if b[s] == 32 or b[e - 1] == 32:
        return ID_SPACE
    if flags & HIGH:
        for i in range(s, e - 1):
            if b[i] == 0xC2 and 0x80 <= b[i + 1] <= 0x9F:      # U+0080-009F (C1)
                return ID_CONTROL
        if _space_length(b + s, e - s):
            return ID_SPACE
        last = e - 1
        while last > s and (b[last] & 0xC0) == 0x80:
            last -= 1
        if _space_length(b + last, e - last) == e - last:
            return ID_SPACE
    return ID_OK


def is_space_at_edge(bytes text):
    """Whether the UTF-8 ``text`` starts or ends with whitespace, as the
    reader decides it for ids (exposed so tests can hold it to str.isspace)."""
    cdef const uint8_t *b = <const uint8_t *><char *>text
    cdef int flags = HIGH if not text.isascii() else 0
    return len(text) > 0 and _id_problem(b, 0, len(text), flags) == ID_SPACE


# -- counts ------------------------------------------------------------------

cdef enum:
    N_OK = 0
    N_EMPTY = 1
    N_NOT_NUMBER = 2
    N_SIGNED = 3
    N_TOO_LARGE = 4
    N_TOO_SMALL = 5
    N_INEXACT = 6


cdef inline bint _digit(uint8_t ch) noexcept nogil:
    return 48 <= ch <= 57


cdef inline int _trailing_zeros(uint64_t v) noexcept nogil:
    cdef int n = 0
    while not (v & 1):
        v >>= 1
        n += 1
    return n


cdef int _whole_number(bytes digits, double *out) except -1:
    """A whole number of more than 19 significant digits (rare): exact, or
    refused. Over 309 digits it is over DBL_MAX (and int() would refuse
    more than 4,300 digits, sys.get_int_max_str_digits)."""
    if len(digits) > 309:
        return N_TOO_LARGE
    n = int(digits)
    try:
        x = float(n)
    except OverflowError:
        return N_TOO_LARGE
    if int(x) != n:
        return N_INEXACT
    out[0] = x
    return N_OK


cdef int _parse_count(const uint8_t *b, Py_ssize_t s, Py_ssize_t e, double *out) except -1:
    """The count written in b[s:e] (see the module docstring), into out."""
    cdef Py_ssize_t p = s, q, mantissa_end, digits
    cdef uint64_t v = 0
    cdef bint nonzero = False
    cdef char *end
    cdef double x
    if s == e:
        return N_EMPTY
    if (b[s] == 45 or b[s] == 43) and s + 1 < e and (_digit(b[s + 1]) or b[s + 1] == 46):
        return N_SIGNED
    while p < e and _digit(b[p]):
        p += 1
    if p == e:
        # A whole number, in digits: held exactly or refused. Up to 19
        # significant digits it is exact in uint64; beyond, Python's int.
        q = s
        while q < e - 1 and b[q] == 48:
            q += 1
        if e - q > 19:
            return _whole_number((<char *>b)[q:e], out)
        while q < e:
            v = v * 10 + (b[q] - 48)
            q += 1
        if v > EXACT_LIMIT and (v >> _trailing_zeros(v)) >= EXACT_LIMIT:
            return N_INEXACT
        out[0] = <double>v
        return N_OK
    digits = p - s
    if b[p] == 46:                 # p < e: an integer returned above
        p += 1
        q = p
        while p < e and _digit(b[p]):
            p += 1
        digits += p - q
    if digits == 0:
        return N_NOT_NUMBER
    mantissa_end = p
    if p < e and (b[p] == 101 or b[p] == 69):
        p += 1
        if p < e and (b[p] == 43 or b[p] == 45):
            p += 1
        q = p
        while p < e and _digit(b[p]):
            p += 1
        if p == q:
            return N_NOT_NUMBER
    if p != e:
        return N_NOT_NUMBER
    for q in range(s, mantissa_end):
        if 49 <= b[q] <= 57:
            nonzero = True
            break
    # The field ends at a comma, quote, line ending or the end of the
    # bytes object (NUL-terminated): none continues a number.
    x = PyOS_string_to_double(<const char *>(b + s), &end, NULL)
    if <const uint8_t *>end != b + e:
        return N_NOT_NUMBER
    if not x <= DBL_MAX:
        return N_TOO_LARGE
    if nonzero and x < DBL_MIN:
        return N_TOO_SMALL
    out[0] = x
    return N_OK


# -- timestamps (the updated_at column) ---------------------------------------

cdef enum:
    T_BAD_FORM = 20
    T_OUT_OF_RANGE = 21
    T_BEFORE_EPOCH = 22


cdef inline int _digits(const uint8_t *b, Py_ssize_t p, int n, int *out) noexcept nogil:
    """The value of the n decimal digits at b[p:p + n], or -1 if one is not a digit."""
    cdef int value = 0, i
    for i in range(n):
        if not _digit(b[p + i]):
            return -1
        value = value * 10 + (b[p + i] - 48)
    out[0] = value
    return 0


cdef inline int64_t _days_from_civil(int64_t y, int64_t m, int64_t d) noexcept nogil:
    """Days from 1970-01-01 to the proleptic Gregorian date y-m-d: Howard
    Hinnant's days_from_civil ("chrono-Compatible Low-Level Date Algorithms")."""
    y -= m <= 2
    cdef int64_t era = (y if y >= 0 else y - 399) // 400
    cdef int64_t yoe = y - era * 400
    cdef int64_t doy = (153 * (m - 3 if m > 2 else m + 9) + 2) // 5 + d - 1
    cdef int64_t doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


cdef inline int _days_in_month(int y, int m) noexcept nogil:
    if m == 2:
        return 29 if (y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)) else 28
    return 30 if m in (4, 6, 9, 11) else 31


cdef int _parse_rfc3339(const uint8_t *b, Py_ssize_t s, Py_ssize_t e, double *out) except -1:
    """RFC 3339 section 5.6 ``date-time`` in b[s:e] as Unix seconds: full-date
    "T" full-time, where "T" may be "t" or a space (the section's note), the
    offset "Z", "z" or +hh:mm / -hh:mm, and a second of 60 (a leap second)
    counts as the first second of the next minute, as POSIX time has none."""
    cdef int year, month, day, hour, minute, second, oh = 0, om = 0, sign = 0
    cdef Py_ssize_t p = s + 19, q
    cdef double fraction = 0.0
    cdef char *end
    if e - s < 20:
        return T_BAD_FORM
    if (_digits(b, s, 4, &year) or b[s + 4] != 45 or _digits(b, s + 5, 2, &month) or b[s + 7] != 45
            or _digits(b, s + 8, 2, &day) or not (b[s + 10] == 84 or b[s + 10] == 116 or b[s + 10] == 32)
            or _digits(b, s + 11, 2, &hour) or b[s + 13] != 58 or _digits(b, s + 14, 2, &minute)
            or b[s + 16] != 58 or _digits(b, s + 17, 2, &second)):
        return T_BAD_FORM
    if p < e and b[p] == 46:                       # '.' time-secfrac = "." 1*DIGIT
        q = p + 1
        while q < e and _digit(b[q]):
            q += 1
        if q == p + 1:
            return T_BAD_FORM
        # The field ends at a comma, quote, line ending or the end of the
        # bytes object: float() of ".ddd" stops at the offset that follows.
        fraction = PyOS_string_to_double(<const char *>(b + p), &end, NULL)
        if <const uint8_t *>end != b + q:
            return T_BAD_FORM
        p = q
    if p < e and (b[p] == 90 or b[p] == 122):     # Z, z
        p += 1
    elif p + 6 == e and (b[p] == 43 or b[p] == 45) and b[p + 3] == 58:
        sign = 1 if b[p] == 43 else -1
        if _digits(b, p + 1, 2, &oh) or _digits(b, p + 4, 2, &om):
            return T_BAD_FORM
        p += 6
    else:
        return T_BAD_FORM
    if p != e:
        return T_BAD_FORM
    if not (1 <= month <= 12 and 1 <= day <= _days_in_month(year, month) and hour <= 23
            and minute <= 59 and second <= 60 and oh <= 23 and om <= 59):
        return T_OUT_OF_RANGE
    cdef int64_t seconds = (_days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
                            - sign * (oh * 3600 + om * 60))
    if seconds < 0:
        return T_BEFORE_EPOCH
    out[0] = <double>seconds + fraction
    return N_OK


cdef int _parse_time(const uint8_t *b, Py_ssize_t s, Py_ssize_t e, double *out) except -1:
    """A timestamp: RFC 3339 when it looks like a date (a '-' after four
    digits), otherwise Unix seconds written as a count."""
    if e - s >= 5 and b[s + 4] == 45:
        return _parse_rfc3339(b, s, e, out)
    return _parse_count(b, s, e, out)


def parse_time(bytes text):
    """The Unix seconds ``text`` stands for in the updated_at column, or
    ValueError saying why it is not a time (for tests: the reader's code)."""
    cdef double x = 0.0
    cdef int problem = _parse_time(<const uint8_t *><char *>text, 0, len(text), &x)
    if problem != N_OK:
        raise ValueError(_time_message(problem, text.decode("utf-8", "backslashreplace")))
    return x


def _time_message(int problem, str text):
    shown = _shown(text)
    if problem == T_BAD_FORM:
        return (f"{shown} is not a time: write Unix seconds (1715000000, 1715000000.25) or an RFC 3339 "
                "date-time (2024-05-06T12:53:20Z, 2024-05-06T14:53:20.5+02:00)")
    if problem == T_OUT_OF_RANGE:
        return f"{shown} is not a time: a month, day, hour, minute, second or offset is out of range"
    if problem == T_BEFORE_EPOCH:
        return f"{shown} is before 1970-01-01T00:00:00Z"
    return _count_message(problem, text)


def _count_message(int problem, str text):
    shown = _shown(text)
    if problem == N_EMPTY:
        return "empty value"
    if problem == N_SIGNED:
        return f"{shown} is not a count: counts are >= 0 and written without a sign"
    if problem == N_TOO_LARGE:
        return f"{shown} is over 1.7976931348623157e308, the largest float64"
    if problem == N_INEXACT:
        return (
            f"{shown} is a whole number that float64 cannot hold exactly (it would read as "
            f"{int(float(int(text.lstrip('0')))):d}); whole numbers written in digits are held exactly or refused"
        )
    if problem == N_TOO_SMALL:
        return f"{shown} is not zero but below 2.2e-308, the smallest normal float64"
    return f"{shown} is not a number (counts are written like 12, 0.5 or 1e3, with a '.' for decimals)"


def parse_count(bytes text):
    """The count ``text`` stands for, or ValueError saying why it is none
    (for tests: the same code the reader runs on every value)."""
    cdef double x = 0.0
    cdef int problem = _parse_count(<const uint8_t *><char *>text, 0, len(text), &x)
    if problem != N_OK:
        raise ValueError(_count_message(problem, text.decode("utf-8", "backslashreplace")))
    return x


cdef _id_error(int problem, bytes data, Field *f, str column):
    where = f"line {f.line}, column {column!r}"
    if problem == ID_EMPTY:
        raise CsvError(f"{where}: empty id")
    text = _text(data, f.start, f.end, f.doubled)
    if problem == ID_CONTROL:
        bad = next(ch for ch in text if unicodedata.category(ch) == "Cc")
        raise CsvError(
            f"{where}: the id {_shown(text)} holds a control character (U+{ord(bad):04X}); ids must be printable"
        )
    raise CsvError(
        f"{where}: the id {_shown(text)} has leading or trailing whitespace; ids are matched exactly as "
        "written, so it would never match the id without it"
    )


# -- the rows ----------------------------------------------------------------

def parse_rows(bytes data, Py_ssize_t body_start, Py_ssize_t body_line, int crlf, list columns):
    """Parse the rows after the header (see ``read_header``).

    Returns ``(blob, offsets, values, line_numbers)``: the ids' UTF-8 bytes
    back to back, offsets (``n + 1`` int64) into the blob, a float64 matrix
    of shape ``(n_features, n + 1)`` whose last column is zeros (the row
    that missing ids point at), and the line on which every row starts.
    """
    cdef Cursor c
    cdef Field f
    c.buf = <const uint8_t *><char *>data
    c.size = len(data)
    c.pos = body_start
    c.line = body_line
    c.crlf = crlf
    c.error = 0
    cdef const uint8_t *b = c.buf
    cdef Py_ssize_t n_features = len(columns) - 1
    cdef cnp.ndarray time_flags = np.array([name == TIMESTAMP_COLUMN for name in columns[1:]], dtype=np.uint8)
    cdef const uint8_t[::1] is_time = time_flags
    # An upper bound on rows: the line feeds, plus a last line without one.
    cdef Py_ssize_t capacity = data.count(b"\n", body_start) + 1
    cdef cnp.ndarray offsets = np.empty(capacity + 1, dtype=np.int64)
    cdef cnp.ndarray values = np.zeros((n_features, capacity + 1), dtype=np.float64)
    cdef cnp.ndarray lines = np.empty(capacity, dtype=np.int64)
    cdef int64_t *off = <int64_t *>cnp.PyArray_DATA(offsets)
    cdef double *val = <double *>cnp.PyArray_DATA(values)
    cdef int64_t *line_of = <int64_t *>cnp.PyArray_DATA(lines)
    # Ids are never longer than the file.
    cdef cnp.ndarray blob = np.empty(c.size - body_start + 1, dtype=np.uint8)
    cdef uint8_t *out = <uint8_t *>cnp.PyArray_DATA(blob)
    cdef Py_ssize_t n = 0, written = 0, k, i, stride = capacity + 1, record_line, blank_line, found
    cdef int problem
    cdef double x
    off[0] = 0
    while c.pos < c.size:
        if b[c.pos] == 10 or b[c.pos] == 13:
            # Only line endings may follow a blank line: the end of the file.
            blank_line = c.line
            while c.pos < c.size and (b[c.pos] == 10 or b[c.pos] == 13):
                c.pos = _line_end(&c, c.pos)
                if c.pos < 0:
                    _raise(&c, "")
            if c.pos < c.size:
                raise CsvError(f"line {blank_line}: a blank line; blank lines may only end the file")
            break
        record_line = c.line
        # The id.
        if _next_field(&c, &f) < 0:
            _raise(&c, f"column {columns[0]!r}")
        if f.ending != ENDS_FIELD:
            raise CsvError(f"line {record_line}: expected {len(columns)} fields, found 1")
        problem = _id_problem(b, f.start, f.end, f.flags)
        if problem != ID_OK:
            _id_error(problem, data, &f, columns[0])
        if f.doubled:
            i = f.start
            while i < f.end:
                out[written] = b[i]
                written += 1
                i += 2 if b[i] == 34 else 1
        else:
            memcpy(out + written, b + f.start, f.end - f.start)
            written += f.end - f.start
        # The counts.
        for k in range(n_features):
            if _next_field(&c, &f) < 0:
                _raise(&c, f"column {columns[k + 1]!r}")
            if f.ending == ENDS_FIELD and k == n_features - 1:
                found = len(columns) + 1
                while f.ending == ENDS_FIELD:
                    if _next_field(&c, &f) < 0:
                        _raise(&c, f"column {found}")
                    found += 1
                raise CsvError(f"line {record_line}: expected {len(columns)} fields, found {found - 1}")
            if f.ending != ENDS_FIELD and k < n_features - 1:
                raise CsvError(f"line {record_line}: expected {len(columns)} fields, found {k + 2}")
            if f.doubled:
                problem = N_NOT_NUMBER
            elif is_time[k]:
                problem = _parse_time(b, f.start, f.end, &x)
            else:
                problem = _parse_count(b, f.start, f.end, &x)
            if problem != N_OK:
                text = _text(data, f.start, f.end, f.doubled)
                raise CsvError(
                    f"line {f.line}, column {columns[k + 1]!r}: "
                    + (_time_message(problem, text) if is_time[k] else _count_message(problem, text))
                )
            val[k * stride + n] = x
        line_of[n] = record_line
        n += 1
        off[n] = written
    # Trim to the rows found; the zero row moves to index n.
    values = np.ascontiguousarray(values[:, : n + 1])
    values[:, n] = 0.0
    return blob[:written].copy(), offsets[: n + 1].copy(), values, lines[:n].copy()
