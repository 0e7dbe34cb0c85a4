"""Reading the embedded store's CSV file: exactly as written, or not at all.

``read_csv(data)`` turns the bytes of a whole file into its column names, a
blob of ids and a matrix of counts, or raises ``CsvError`` naming the line
(and the column, or the byte offset, where that helps) of the first thing
it cannot read exactly. This module holds the checks of the whole text
(encoding, Unicode normal forms); the byte loops (tokenizer, header, ids,
counts) are compiled, in ``mab.stores._csv``. The rules, which the README's
"Running it on your data" section states for users and
``tests/stores/test_csvfile.py`` holds the code to:

* Encoding: UTF-8, optionally after a UTF-8 byte order mark. Invalid UTF-8,
  a NUL byte, a UTF-16/32 byte order mark, or a byte order mark anywhere
  but the start is refused.
* Records and fields: RFC 4180 section 2. Fields are separated by commas; a
  field may be enclosed in double quotes, and then may hold commas, line
  breaks and doubled quotes (``""`` stands for one ``"``). A quote inside an
  unquoted field, text after a closing quote, and a quote never closed are
  refused. Spaces are part of a field (RFC 4180: "should not be ignored").
* Line endings: LF or CRLF, the same on every line (the header's decides).
  A CR not followed by LF (CR-only files, a stray CR) is refused. The last
  line may end without a line break; blank lines are refused except at the
  very end of the file.
* Header: the first line names an id column and at least one feature
  column; names are non-empty, unique, hold no control character and no
  leading or trailing whitespace (whitespace as ``str.strip`` means it).
* Every row has exactly as many fields as the header.
* Ids: non-empty, no control character (C0, DEL, C1), no leading or trailing
  whitespace; compared code point for code point (no case folding, no
  Unicode normalisation), so two ids that are the same text in different
  Unicode normal forms are refused (``check_normal_forms``).
* Counts: decimal numbers without sign, ``[0-9]+`` or ``[0-9]*.[0-9]*``
  with at least one digit, optionally followed by ``e`` or ``E``, an
  optional sign and digits; finite, at most DBL_MAX (1.7976931348623157e308).
  A whole number written in digits only is a count of events: it is held
  exactly or refused (every one up to 2**53 = 9007199254740992 is, above
  that only those float64 holds, so 9007199254740993 is refused). Decimals
  and exponent forms are rounded to the nearest float64 (Python's own
  ``float()``, independent of the C locale), as any reader of ``0.1`` must.
  A non-zero count below the smallest normal float64 (2.2e-308) is refused.
  Hex, ``inf``, ``nan``, signs (``-0``, ``+5``), ``1_000``, ``1,5`` and
  surrounding spaces are not numbers here.

* Timestamps: a column named ``updated_at`` (``_csv.TIMESTAMP_COLUMN``), if
  the header has one, says when each row's counts were last updated, for
  decay (a model's ``half_life_seconds``) and for folding rewards into a
  new snapshot. Its values are Unix seconds written as a count (above), or
  an RFC 3339 section 5.6 date-time (``2024-05-06T12:53:20Z``,
  ``2024-05-06 14:53:20.25+02:00``: "T", "t" or a space between date and
  time, "Z", "z" or a numeric offset, a second of 60 read as the next
  minute's first), at or after 1970-01-01T00:00:00Z. Either way the store
  holds float64 Unix seconds.

Line numbers are the file's physical lines, counted from 1, as an editor
shows them; a quoted line break starts a new one.
"""

import unicodedata

import numpy as np

from mab.stores import _csv
from mab.stores._csv import TIMESTAMP_COLUMN, CsvError  # noqa: F401 (TIMESTAMP_COLUMN: for the store)

UTF8_BOM = b"\xef\xbb\xbf"
# Text is checked (decoded) in pieces of about this many bytes, cut at
# line feeds, so a large non-ASCII file never exists as one str.
CHECK_CHUNK = 1 << 24


# -- the encoding ------------------------------------------------------------

def _line_at(data, offset):
    return data.count(b"\n", 0, offset) + 1


def check_encoding(data):
    """Check that ``data`` is UTF-8 text. Returns ``(start, nfc)``: the
    offset after a UTF-8 byte order mark (0 or 3), and whether the whole
    text is in Unicode normal form C (so no two ids can be the same text
    in different forms). Raises CsvError naming the line and byte offset."""
    if data.startswith(b"\xff\xfe") or data.startswith(b"\xfe\xff"):
        raise CsvError(
            "the file starts with a UTF-16 byte order mark (bytes FF FE or FE FF): it is UTF-16 "
            "(or UTF-32) text; save it as UTF-8"
        )
    start = 3 if data.startswith(UTF8_BOM) else 0
    nul = data.find(b"\x00", start)
    if nul >= 0:
        raise CsvError(
            f"line {_line_at(data, nul)} (byte offset {nul}): a NUL byte, which UTF-8 text never holds "
            "(is the file UTF-16, or not text at all?)"
        )
    if data.isascii():
        return start, True
    nfc = True
    view = memoryview(data)
    pos = start
    while pos < len(data):
        # Cut at a line feed, which is never inside a UTF-8 sequence, and is
        # a character no other composes with: each piece can be checked alone.
        cut = data.find(b"\n", pos + CHECK_CHUNK)
        end = len(data) if cut < 0 else cut + 1
        try:
            text = str(view[pos:end], "utf-8")
        except UnicodeDecodeError as exc:
            offset = pos + exc.start
            bad = data[offset:offset + min(4, exc.end - exc.start)].hex(" ").upper()
            raise CsvError(
                f"line {_line_at(data, offset)} (byte offset {offset}): invalid UTF-8 (bytes {bad}); "
                "the file must be UTF-8 (is it Latin-1 or Windows-1252? convert it, e.g. with iconv)"
            ) from None
        if nfc and not unicodedata.is_normalized("NFC", text):
            nfc = False
        pos = end
    bom = data.find(UTF8_BOM, start)
    if bom >= 0:
        raise CsvError(
            f"line {_line_at(data, bom)} (byte offset {bom}): a byte order mark (U+FEFF) inside the "
            "file; only the first bytes of a file may hold one (were two files joined?)"
        )
    return start, nfc


def check_normal_forms(index, blob, offsets, lines, chunk_rows=1 << 20):
    """Refuse two ids that are the same text in different Unicode normal
    forms (say 'café' with a precomposed é and with e + U+0301): a request
    would find one and miss the other's counts. ``index`` is an
    ``_table.IdIndex`` over the rows. Only worth calling when the file is
    not all in normal form C (``check_encoding`` says so).

    Works on ``chunk_rows`` ids at a time, joined by line feeds (which no
    id holds, and which no character composes with, so the join normalises
    piece by piece): a few C-level calls per chunk rather than several
    Python calls per id.
    """
    n = len(offsets) - 1
    seen = {}
    for first in range(0, n, chunk_rows):
        last = min(n, first + chunk_rows)
        starts = offsets[first:last]
        joined = np.insert(blob[offsets[first]:offsets[last]], starts[1:] - starts[0], 10).tobytes().decode("utf-8")
        if unicodedata.is_normalized("NFC", joined):
            continue
        ids = joined.split("\n")
        forms = unicodedata.normalize("NFC", joined).split("\n")
        changed = [i for i, (item, form) in enumerate(zip(ids, forms)) if item != form]
        rows, _ = index.find([forms[i] for i in changed])
        absent = [forms[i] for i, found in zip(changed, rows.tolist()) if found >= n]
        if len(absent) == len(changed) and len(set(absent)) == len(absent) and not seen.keys() & absent:
            seen.update(dict.fromkeys(absent, -1))        # the usual case: no twin here
            continue
        for i, found in zip(changed, rows.tolist()):
            row = first + i
            other = found if found < n else seen.setdefault(forms[i], row)
            if other == -1:
                other = next(r for r in range(first) if _form(blob, offsets, r) == forms[i])
            if other != row:
                earlier, later = sorted((row, other))
                raise CsvError(
                    f"line {lines[later]}: the id {_id_at(blob, offsets, later)!r} is the id "
                    f"{_id_at(blob, offsets, earlier)!r} of line {lines[earlier]} in another Unicode normal "
                    "form; write each id once, in one form (NFC)"
                )


def _form(blob, offsets, row):
    return unicodedata.normalize("NFC", _id_at(blob, offsets, row))


def _id_at(blob, offsets, row):
    return bytes(blob[offsets[row]:offsets[row + 1]]).decode("utf-8")



# -- the whole file ----------------------------------------------------------

def read_csv(data):
    """Read the bytes of a whole file. Returns ``(columns, blob, offsets,
    values, line_numbers, nfc)``: see ``mab.stores._csv.parse_rows`` for
    the arrays and ``check_encoding`` for ``nfc``. Raises ``CsvError``."""
    start, nfc = check_encoding(data)
    columns, body_start, body_line, crlf = _csv.read_header(data, start)
    blob, offsets, values, lines = _csv.parse_rows(data, body_start, body_line, crlf, columns)
    return columns, blob, offsets, values, lines, nfc
