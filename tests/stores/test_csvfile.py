"""The embedded store's CSV reader (mab.stores.csvfile, and its compiled
part mab.stores._csv): every file is read
exactly as written, or refused with a message naming the line.

Three kinds of test:

* a table of hostile files, each with the exact parse or the refusal (line
  and wording) it must get;
* a differential property test against ``reference_read`` below, the
  documented rules written plainly in Python over ``str`` with regular
  expressions: on generated near-CSV bytes, both must accept the same
  files with the same content, and refuse the others at the same line;
* a round-trip property test: files written by Python's ``csv`` module from
  random ids and counts are read back exactly when the rules allow them,
  and refused, naming a line, exactly when they do not.
"""

import csv
import io
import math
import random
import re
import sys
import unicodedata

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mab.stores import _csv, csvfile
from mab.stores.embedded import compile_data

BOM = b"\xef\xbb\xbf"
DBL_MAX = sys.float_info.max


def read(data):
    """(columns, [(id, values), ...]) as the store holds them."""
    columns, arrays = compile_data(data)
    records = arrays["records"][:-1]
    blob = arrays["blob"].tobytes()
    rows = [
        (blob[r["offset"]:r["offset"] + r["length"]].decode("utf-8"), tuple(r["features"].tolist()))
        for r in records
    ]
    return columns, rows


def refusal(data):
    with pytest.raises(_csv.CsvError) as raised:
        compile_data(data)
    return str(raised.value)


# -- the table ---------------------------------------------------------------

H = b"id,s,f\n"
HC = b"id,s,f\r\n"

ACCEPTED = {
    "LF": (H + b"a,1,2\nb,3,4\n", [("a", (1, 2)), ("b", (3, 4))]),
    "CRLF": (HC + b"a,1,2\r\nb,3,4\r\n", [("a", (1, 2)), ("b", (3, 4))]),
    "no final line break": (H + b"a,1,2\nb,3,4", [("a", (1, 2)), ("b", (3, 4))]),
    "CRLF, no final line break": (HC + b"a,1,2", [("a", (1, 2))]),
    "blank lines ending the file": (H + b"a,1,2\n\n\n", [("a", (1, 2))]),
    "CRLF blank lines ending the file": (HC + b"a,1,2\r\n\r\n", [("a", (1, 2))]),
    "header only": (H, []),
    "header only, no line break": (b"id,s,f", []),
    "UTF-8 BOM": (BOM + H + b"a,1,2\n", [("a", (1, 2))]),
    "quoted header (issue 9)": (b'"item_id","successes","failures"\nA,9,1\n', [("A", (9, 1))]),
    "quoted id with a comma": (H + b'"a,b",1,2\n', [("a,b", (1, 2))]),
    "doubled quotes": (H + b'"say ""hi""",1,2\n', [('say "hi"', (1, 2))]),
    "quoted counts": (H + b'a,"1","2.5"\n', [("a", (1, 2.5))]),
    "every field quoted, CRLF": (b'"id","s","f"\r\n"a","1","2"\r\n', [("a", (1, 2))]),
    "quoted empty-looking id": (H + b'"""",1,2\n', [('"', (1, 2))]),
    "inner spaces": (H + b"a b,1,2\n", [("a b", (1, 2))]),
    "non-ASCII ids": (
        H + "café,1,2\n日本,3,4\n🎲,5,6\n".encode(), [("café", (1, 2)), ("日本", (3, 4)), ("🎲", (5, 6))],
    ),
    "a decomposed id without a twin": (H + "cafe\u0301,1,2\n".encode(), [("cafe\u0301", (1, 2))]),
    "ids differing in case": (H + b"A,1,2\na,3,4\n", [("A", (1, 2)), ("a", (3, 4))]),
    "numeric-looking ids": (H + b"007,1,2\n7,3,4\n", [("007", (1, 2)), ("7", (3, 4))]),
    "number forms": (
        b"id,a,b,c,d,e,f,g\nx,0,007,0.5,.5,5.,1e3,1.5E+2\n",
        [("x", (0, 7, 0.5, 0.5, 5, 1000, 150))],
    ),
    "whole numbers held exactly": (
        b"id,a,b,c,d\nx,9007199254740992,9007199254740994,18446744073709551616,100000000000000000000\n",
        [("x", (2.0**53, 2.0**53 + 2, 2.0**64, 1e20))],
    ),
    "exponent forms are rounded": (b"id,a,b\nx,1e17,1e23\n", [("x", (1e17, 1e23))]),
    "a decimal over 2**53 is rounded": (b"id,s\na,9007199254740993.0\n", [("a", (2.0**53,))]),
    "the largest float64 (issue 9's tie samples)": (
        b"id,s,f\nfirst,1e17,0\nlargest,1.7976931348623157e308,0\n", [("first", (1e17, 0)), ("largest", (DBL_MAX, 0))],
    ),
    "zero in many forms": (b"id,a,b,c\nx,0.0,0e-400,000\n", [("x", (0, 0, 0))]),
    "smallest normal": (b"id,s\na,2.2250738585072014e-308\n", [("a", (sys.float_info.min,))]),
    "a long id": (H + b"x" * 10_000 + b",1,2\n", [("x" * 10_000, (1, 2))]),
    "semicolons inside an id": (H + b"a;b,1,2\n", [("a;b", (1, 2))]),
}


@pytest.mark.parametrize("case", ACCEPTED, ids=list(ACCEPTED))
def test_accepted_exactly(case):
    data, rows = ACCEPTED[case]
    assert read(data)[1] == rows


def test_header_names_are_read_exactly():
    assert read(b'"item_id","successes","failures"\nA,9,1\n')[0] == ["item_id", "successes", "failures"]
    assert read(BOM + b'"item_id","successes","failures"\r\n')[0] == ["item_id", "successes", "failures"]
    assert read(b'id,"a,b","say ""x""",\xc3\xa9\n')[0] == ["id", "a,b", 'say "x"', "é"]


REFUSED = {
    # line endings
    "CR only (issue 9)": (
        b"item_id,successes,failures,note\rA,9,1,x\rB,2,8,y\r", 1, "carriage return (CR) not followed by a line feed",
    ),
    "CRLF after an LF header": (H + b"a,1,2\nb,3,4\r\n", 3, "ends in CRLF, but the header line ends in LF"),
    "LF after a CRLF header": (HC + b"a,1,2\r\nb,3,4\n", 3, "ends in LF, but the header line ends in CRLF"),
    "a lone CR inside an id": (H + b"a\rb,1,2\n", 2, "not followed by a line feed"),
    "a lone CR inside a count": (H + b"a,1\r2,2\n", 2, "not followed by a line feed"),
    "a lone CR ending the file": (H + b"a,1,2\r", 2, "not followed by a line feed"),
    "a CR in a quoted id": (H + b'"a\rb",1,2\n', 2, "control character (U+000D)"),
    "a line break in a quoted id": (H + b'x,1,2\n"a\nb",1,2\n', 3, "control character (U+000A)"),
    "a line break in a quoted count": (H + b'a,"1\n",2\n', 2, "'1\\n' is not a number"),
    "a blank line in the middle": (H + b"a,1,2\n\nb,3,4\n", 3, "a blank line; blank lines may only end the file"),
    "a blank first line": (b"\nid,s,f\n", 1, "a blank line; expected a header line"),
    "a whitespace-only line": (H + b"a,1,2\n   \n", 3, "expected 3 fields, found 1"),
    "LF blank line in a CRLF file": (HC + b"a,1,2\r\n\n", 3, "ends in LF, but the header line ends in CRLF"),
    # quoting
    "an unterminated quote": (H + b'a,1,2\n"b,3,4\nc,5,6\n', 3, "its closing quote never comes"),
    "an unterminated quote after a doubled one": (H + b'"a""\n', 2, "its closing quote never comes"),
    "a quote inside an unquoted field": (H + b'a"b,1,2\n', 2, "a double quote inside a field"),
    "text after a closing quote": (H + b'"a"b,1,2\n', 2, "text after the closing quote"),
    "a space before an opening quote": (H + b' "a",1,2\n', 2, "a double quote inside a field"),
    "a space after a closing quote": (H + b'"a" ,1,2\n', 2, "text after the closing quote"),
    "text after a quote that closes on a later line": (H + b'"a\nb"c,1,2\n', 3, "text after the closing quote"),
    "an unterminated quote in the header": (b'"id,s,f\n', 1, "its closing quote never comes"),
    "a doubled quote in a count": (H + b'a,"1""",2\n', 2, "is not a number"),
    "an empty quoted id": (H + b'"",1,2\n', 2, "empty id"),
    # encodings
    "Latin-1 id (issue 9)": (H + b"ok,1,2\ncaf\xe9,1,2\n", 3, "invalid UTF-8 (bytes E9)"),
    "invalid UTF-8 in the header": (b"id,\xff,f\n", 1, "invalid UTF-8 (bytes FF)"),
    "invalid UTF-8 in a count": (H + b"a,1\x80,2\n", 2, "invalid UTF-8"),
    "an overlong encoding": (H + b"a\xc0\xaf,1,2\n", 2, "invalid UTF-8"),
    "an encoded surrogate": (H + b"a\xed\xa0\x80,1,2\n", 2, "invalid UTF-8"),
    "a sequence cut by the end of the file": (H + b"a,1,2\nb\xe6\x97", 3, "invalid UTF-8"),
    "Windows-1252 quotes": (H + b"\x93a\x94,1,2\n", 2, "invalid UTF-8"),
    "UTF-16 LE with its BOM": ("id,s,f\na,1,2\n".encode("utf-16"), None, "UTF-16 byte order mark"),
    "UTF-16 BE with its BOM": (b"\xfe\xff" + "id,s,f\n".encode("utf-16-be"), None, "UTF-16 byte order mark"),
    "UTF-16 without a BOM": ("id,s,f\na,1,2\n".encode("utf-16-le"), 1, "a NUL byte"),
    "UTF-32 LE with its BOM": ("id,s\n".encode("utf-32"), None, "UTF-16 byte order mark"),
    "a NUL byte in an id": (H + b"a,1,2\nb\x00,1,2\n", 3, "a NUL byte"),
    "a NUL byte in a count": (H + b"a,1\x00,2\n", 2, "a NUL byte"),
    "a second BOM (two files joined)": (BOM + H + b"a,1,2\n" + BOM + H, 3, "byte order mark (U+FEFF) inside"),
    "a BOM twice at the start": (BOM + BOM + H, 1, "byte order mark (U+FEFF) inside"),
    # ids
    "an empty id": (H + b",1,2\n", 2, "column 'id': empty id"),
    "a leading space": (H + b" a,1,2\n", 2, "leading or trailing whitespace"),
    "a trailing space": (H + b"a ,1,2\n", 2, "leading or trailing whitespace"),
    "a trailing no-break space": (H + "a\u00a0,1,2\n".encode(), 2, "leading or trailing whitespace"),
    "a leading ideographic space": (H + "\u3000a,1,2\n".encode(), 2, "leading or trailing whitespace"),
    "a quoted leading space": (H + b'" a",1,2\n', 2, "leading or trailing whitespace"),
    "a tab": (H + b"a\tb,1,2\n", 2, "control character (U+0009)"),
    "DEL": (H + b"a\x7f,1,2\n", 2, "control character (U+007F)"),
    "a C1 control (NEL)": (H + b"a\xc2\x85,1,2\n", 2, "control character (U+0085)"),
    "a C1 control (U+0080)": (H + b"\xc2\x80a,1,2\n", 2, "control character (U+0080)"),
    "an escape character": (H + b"a\x1b[0m,1,2\n", 2, "control character (U+001B)"),
    "a duplicate id": (H + b"a,1,2\nb,1,2\na,5,5\n", 4, "duplicate id 'a' (first on line 2)"),
    "a duplicate id after a quoted one": (H + b'"a",1,2\na,5,5\n', 3, "duplicate id 'a' (first on line 2)"),
    "the same id in two normal forms": (
        H + "café,1,2\nx,1,2\ncafe\u0301,3,4\n".encode(), 4, "in another Unicode normal form",
    ),
    "the NFD form first": (H + "cafe\u0301,1,2\ncafé,3,4\n".encode(), 3, "in another Unicode normal form"),
    "two non-NFC forms of one text": (
        H + "e\u0301\u0323,1,2\ne\u0323\u0301,3,4\n".encode(), 3, "in another Unicode normal form",
    ),
    # headers
    "an empty file": (b"", None, "the file is empty"),
    "a BOM and nothing else": (BOM, None, "the file is empty"),
    "one column": (b"id\na\n", 1, "the header names 1 column"),
    "semicolons": (b"id;s;f\na;1;2\n", 1, "the separator must be a comma"),
    "tabs": (b"id\ts\tf\n", 1, "control character (U+0009) (the separator must be a comma, not a tab)"),
    "a duplicate name": (b"id,s,s\n", 1, "column 3: the name 's' repeats column 2"),
    "a duplicate name, one quoted": (b'id,s,"s"\n', 1, "repeats column 2"),
    "an empty name": (b"id,,f\n", 1, "column 2: empty column name"),
    "a trailing comma in the header": (b"id,s,\n", 1, "column 3: empty column name"),
    "a padded name": (b"id, s,f\n", 1, "leading or trailing whitespace"),
    "a name with a line break": (b'id,"s\nx",f\n', 1, "control character (U+000A)"),
    # rows
    "too few fields": (H + b"a,1\n", 2, "expected 3 fields, found 2"),
    "one field": (H + b"a\n", 2, "expected 3 fields, found 1"),
    "too many fields": (H + b"a,1,2,3,4\n", 2, "expected 3 fields, found 5"),
    "a trailing comma": (H + b"a,1,2,\n", 2, "expected 3 fields, found 4"),
    "too few fields, last line": (H + b"a,1,2\nb,1", 3, "expected 3 fields, found 2"),
    "a text column (issue 9's note)": (b"id,s,note\na,1,x\n", 2, "column 'note': 'x' is not a number"),
    # counts
    "negative": (H + b"a,1,2\nb,-3,4\n", 3, "column 's': '-3' is not a count"),
    "minus zero": (H + b"a,-0,2\n", 2, "written without a sign"),
    "a plus sign": (H + b"a,+5,2\n", 2, "written without a sign"),
    "hex": (H + b"a,0x10,2\n", 2, "'0x10' is not a number"),
    "inf": (H + b"a,inf,2\n", 2, "'inf' is not a number"),
    "nan": (H + b"a,1,nan\n", 2, "column 'f': 'nan' is not a number"),
    "Infinity": (H + b"a,Infinity,2\n", 2, "is not a number"),
    "overflow": (H + b"a,1e400,2\n", 2, "'1e400' is over 1.7976931348623157e308, the largest float64"),
    "just over the largest float64": (H + b"a,1.7976931348623159e308,2\n", 2, "is over 1.797"),
    "2**53 + 1, which would read as 2**53": (
        H + b"a,9007199254740993,2\n", 2,
        "'9007199254740993' is a whole number that float64 cannot hold exactly (it would read as 9007199254740992)",
    ),
    "2**64 - 1": (H + b"a,18446744073709551615,2\n", 2, "cannot hold exactly"),
    "a long whole number": (H + b"a,123456789012345678901234567890,2\n", 2, "cannot hold exactly"),
    "a whole number over the largest float64": (H + b"a," + b"9" * 400 + b",2\n", 2, "... (400 characters) is over"),
    "more digits than int() takes": (H + b"a," + b"0" * 5000 + b"9007199254740993,2\n", 2, "cannot hold exactly"),
    "underflow": (H + b"a,1e-400,2\n", 2, "'1e-400' is not zero but below 2.2e-308"),
    "subnormal": (H + b"a,5e-324,2\n", 2, "below 2.2e-308"),
    "underscores": (H + b"a,1_000,2\n", 2, "'1_000' is not a number"),
    "a leading space in a count": (H + b"a, 1,2\n", 2, "' 1' is not a number"),
    "a trailing space in a count": (H + b"a,1,2 \n", 2, "'2 ' is not a number"),
    "a decimal comma (quoted)": (H + b'a,"1,5",2\n', 2, "'1,5' is not a number"),
    "a decimal comma (unquoted)": (H + b"a,1,5,2\n", 2, "expected 3 fields, found 4"),
    "an empty count": (H + b"a,,2\n", 2, "column 's': empty value"),
    "a lone dot": (H + b"a,.,2\n", 2, "'.' is not a number"),
    "an exponent without digits": (H + b"a,1e,2\n", 2, "'1e' is not a number"),
    "a thousands separator": (H + b"a,1.000.000,2\n", 2, "is not a number"),
    "Arabic-Indic digits": (H + "a,\u0661,2\n".encode(), 2, "is not a number"),
    "full-width digits": (H + "a,\uff11,2\n".encode(), 2, "is not a number"),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_refused_naming_the_line(case):
    data, line, words = REFUSED[case]
    message = refusal(data)
    if line is None:
        assert not message.startswith("line "), message
    else:
        assert re.match(rf"line {line}[:, ]", message), message
    assert words in message


def test_invalid_utf8_names_the_byte_offset():
    data = H + b"a,1,2\nb\xe9,1,2\n"
    offset = data.index(b"\xe9")
    assert refusal(data).startswith(f"line 3 (byte offset {offset}): invalid UTF-8")


def test_line_numbers_past_the_first_chunk(monkeypatch):
    # The encoding is checked in pieces cut at line feeds; offsets and lines
    # stay those of the whole file.
    monkeypatch.setattr(csvfile, "CHECK_CHUNK", 16)
    rows = b"".join(b"\xc3\xa9%d,1,2\n" % i for i in range(50))
    data = H + rows + b"x\xff,1,2\n"
    offset = data.index(b"\xff")
    assert refusal(data).startswith(f"line 52 (byte offset {offset}): invalid UTF-8")
    assert len(read(H + rows)[1]) == 50


def test_nfc_is_judged_per_piece(monkeypatch):
    monkeypatch.setattr(csvfile, "CHECK_CHUNK", 8)
    data = H + b"".join(b"id%d,1,2\n" % i for i in range(20)) + "cafe\u0301,1,2\ncafé,1,2\n".encode()
    assert "another Unicode normal form" in refusal(data)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"0", 0.0), (b"12", 12.0), (b"007", 7.0), (b"0.5", 0.5), (b".5", 0.5), (b"5.", 5.0), (b"1e3", 1000.0),
        (b"1E+3", 1000.0), (b"25e-1", 2.5), (b"0.1", 0.1), (b"9007199254740991", 2.0**53 - 1),
        (b"9007199254740991.4", 2.0**53 - 1), (b"9007199254740992", 2.0**53), (b"1e308", 1e308), (b"0000000000000000000000001", 1.0), (b"0e999999", 0.0),
        (b"1" + b"0" * 15, 1e15), (b"123456789.123456789", 123456789.123456789),
    ],
)
def test_counts(text, value):
    assert _csv.parse_count(text) == value


@pytest.mark.parametrize(
    "text",
    [b"", b"-1", b"-0", b"+0", b"-.5", b"0x1F", b"inf", b"nan", b"1e400", b"1e-400", b"1_0", b" 1", b"1 ",
     b"1,0", b".", b"e1", b"1e", b"1e+", b"1.2.3", b"--1", b"1e5.5", b"9007199254740993", b"1" * 17, b"1" * 400],
)
def test_not_counts(text):
    with pytest.raises(ValueError):
        _csv.parse_count(text)


def test_counts_ignore_the_c_locale():
    # C's strtod follows LC_NUMERIC; the reader uses Python's own conversion.
    import locale

    for name in ("de_DE.UTF-8", "fr_FR.UTF-8", "de_DE.utf8", "fr_FR.utf8"):
        try:
            locale.setlocale(locale.LC_NUMERIC, name)
            break
        except locale.Error:
            continue
    else:
        pytest.skip("no locale with a decimal comma is installed (Debian: locales, locale-gen de_DE.UTF-8)")
    try:
        assert locale.localeconv()["decimal_point"] == ","
        assert _csv.parse_count(b"2.5") == 2.5
        assert _csv.parse_count(b"1e-3") == 0.001
        with pytest.raises(ValueError):
            _csv.parse_count(b"2,5")
    finally:
        locale.setlocale(locale.LC_NUMERIC, "C")


def test_whitespace_at_an_edge_is_what_str_isspace_says():
    # Every code point: the compiled check of an id's first and last
    # character agrees with Python's str.isspace (control characters are
    # refused as such, before this check).
    disagree = []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF or unicodedata.category(chr(cp)) == "Cc":
            continue
        ch = chr(cp)
        for text in (ch, "a" + ch, ch + "a"):
            if _csv.is_space_at_edge(text.encode()) != (text != text.strip()):
                disagree.append(text)
    assert not disagree, [hex(ord(max(t))) for t in disagree[:10]]


# -- the reference reader ----------------------------------------------------


class Refused(Exception):
    def __init__(self, line):
        super().__init__(line)
        self.line = line


NUMBER = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# RFC 4180 section 2: a quoted field, '""' an escaped quote. Possessive, so
# that a '""' is never split to close the field early.
QUOTED = re.compile(r'"((?:[^"]|"")*+)"')
PLAIN = re.compile(r'[^",\r\n]*')


def reference_read(data):
    """The rules in mab/stores/csvfile.py's docstring, plainly: (columns,
    [(id, values)]) or raises Refused(line), line None for whole-file faults."""
    def line_at(offset):
        return data.count(b"\n", 0, offset) + 1

    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise Refused(None)
    start = 3 if data.startswith(BOM) else 0
    if b"\x00" in data[start:]:
        raise Refused(line_at(data.index(b"\x00", start)))
    try:
        text = data[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refused(line_at(start + exc.start)) from None
    if "\ufeff" in text:
        raise Refused(text.count("\n", 0, text.index("\ufeff")) + 1)

    state = {"pos": 0, "line": 1, "crlf": None}

    def line_ending(p):
        if text.startswith("\r\n", p):
            if state["crlf"] is False:
                raise Refused(state["line"])
            state["crlf"] = True
            p += 2
        elif text[p] == "\r":
            raise Refused(state["line"])
        else:
            if state["crlf"] is True:
                raise Refused(state["line"])
            state["crlf"] = False
            p += 1
        state["line"] += 1
        return p

    def field():
        """(value, line it starts on, what ends it)."""
        p, first = state["pos"], state["line"]
        if text.startswith('"', p):
            m = QUOTED.match(text, p)
            if not m:
                raise Refused(first)
            value = m.group(1).replace('""', '"')
            state["line"] += m.group(1).count("\n")
            p = m.end()
            if p < len(text) and text[p] not in ",\r\n":
                raise Refused(state["line"])
        else:
            m = PLAIN.match(text, p)
            value, p = m.group(), m.end()
            if p < len(text) and text[p] == '"':
                raise Refused(state["line"])
        if p == len(text):
            ending = "file"
        elif text[p] == ",":
            ending, p = "field", p + 1
        else:
            ending, p = "record", line_ending(p)
        state["pos"] = p
        return value, first, ending

    def bad_text(value):
        return any(unicodedata.category(ch) == "Cc" for ch in value) or value != value.strip()

    if not text:
        raise Refused(None)
    if text[0] in "\r\n":
        raise Refused(1)
    columns = []
    while True:
        name, _, ending = field()
        if not name or bad_text(name) or name in columns:
            raise Refused(1)
        columns.append(name)
        if ending != "field":
            break
    if len(columns) < 2:
        raise Refused(1)

    def count(value, line):
        if value[:1] in ("+", "-") and value[1:2] and value[1] in "0123456789.":
            raise Refused(line)
        if not NUMBER.fullmatch(value):
            raise Refused(line)
        if value.isdigit():
            whole = int(value.lstrip("0") or "0")
            if len(str(whole)) > 309 or int(float(whole)) != whole:
                raise Refused(line)
            return float(whole)
        x = float(value)
        mantissa = re.split("[eE]", value)[0]
        if x > DBL_MAX or (x < sys.float_info.min and any(c in "123456789" for c in mantissa)):
            raise Refused(line)
        return x

    rows, lines = [], []
    n_features = len(columns) - 1
    while state["pos"] < len(text):
        if text[state["pos"]] in "\r\n":
            blank = state["line"]
            while state["pos"] < len(text) and text[state["pos"]] in "\r\n":
                state["pos"] = line_ending(state["pos"])
            if state["pos"] < len(text):
                raise Refused(blank)
            break
        record_line = state["line"]
        item, _, ending = field()
        if ending != "field":
            raise Refused(record_line)
        if not item or bad_text(item):
            raise Refused(record_line)
        values = []
        for k in range(n_features):
            value, line, ending = field()
            if ending == "field" and k == n_features - 1:
                while ending == "field":
                    _, _, ending = field()
                raise Refused(record_line)
            if ending != "field" and k < n_features - 1:
                raise Refused(record_line)
            values.append(count(value, line))
        rows.append((item, tuple(values)))
        lines.append(record_line)

    first = {}
    for row, (item, _) in enumerate(rows):
        if item in first:
            raise Refused(lines[row])
        first[item] = row
    seen = {}
    for row, (item, _) in enumerate(rows):
        if unicodedata.is_normalized("NFC", item):
            continue
        nfc = unicodedata.normalize("NFC", item)
        other = first[nfc] if nfc in first else seen.setdefault(nfc, row)
        if other != row:
            raise Refused(lines[max(row, other)])
    return columns, rows


def compiled_read(data):
    """Like reference_read, from the store's reader."""
    try:
        return read(data)
    except _csv.CsvError as exc:
        match = re.match(r"line (\d+)\b", str(exc))
        raise Refused(int(match.group(1)) if match else None) from None


def outcome(reader, data):
    try:
        return reader(data)
    except Refused as refused:
        return ("refused", refused.line)


def test_the_reference_agrees_with_the_table():
    for case, (data, rows) in ACCEPTED.items():
        assert reference_read(data)[1] == rows, case
    for case, (data, line, _) in REFUSED.items():
        assert outcome(reference_read, data) == ("refused", line), case


# -- generated files ---------------------------------------------------------

# Pieces of near-CSV: separators, quotes, line endings, digits and number
# syntax, characters refused in ids, and (rarer) bytes that no UTF-8 text
# holds.
PIECES = [
    b",", b'"', b'""', b"\n", b"\r\n", b"\r", b"a", b"A", b"1", b"0", b".", b"e", b"-", b"+", b" ",
    b"\t", b"\x7f", b"\xc3\xa9", b"e\xcc\x81", b"\xc2\x85", b"\xc2\xa0", b"\xe3\x80\x80",
    b"9007199254740993", b"9007199254740993.0", b"18446744073709551615", b"2.2e-308", b"1e400", b"1e-400",
    b"1.7976931348623157e308", b"1.7976931348623159e308", b"inf",
]
FATAL = [b"\x00", b"\xe9", b"\xff", BOM]
# Texts of valid ids (each row appends its number, so that most files hold
# no duplicate) and valid counts.
GOOD_IDS = [b"a", b"caf\xc3\xa9", b"cafe\xcc\x81", b"x,y", b'q"q', b"a b", b"\xe6\x97\xa5"]
GOOD_COUNTS = [b"0", b"1", b"42", b"0.5", b".5", b"5.", b"1e3", b'"7"', b"9007199254740991", b"2.5e-308", b"00"]


def render(text, quote):
    if quote or b"," in text or b'"' in text:
        return b'"' + text.replace(b'"', b'""') + b'"'
    return text


@st.composite
def near_csv(draw):
    """Mostly valid files, with now and then a hostile piece in a field, a
    row or a line ending, or anywhere. The weights come from a Random
    seeded by hypothesis: hypothesis's own choices favour the simplest
    values (a random() of 0.0), which would make almost every file hostile."""
    rnd = random.Random(draw(st.integers(0, 2**64 - 1)))

    def pick(rare, common, p_rare):
        return rnd.choice(rare) if rnd.random() < p_rare else common

    header = pick([b"id,s,s", b"id", b"id,,f", b"id, s,f", b"id,s\t"], rnd.choice(
        [b"id,s,f", b"id,s,f", b'"id","s","f"', b"id,s", BOM + b"id,s,f"]), 0.05)
    n_fields = header.count(b",") + 1
    ending = rnd.choice([b"\n", b"\r\n"])

    def junk():
        return b"".join(rnd.choice(PIECES) for _ in range(rnd.randint(1, 3)))

    rows = []
    for i in range(rnd.randint(0, 8)):
        width = n_fields if rnd.random() > 0.03 else rnd.randint(1, n_fields + 2)
        # Now and then an earlier row's number: a duplicate id, or (café
        # and its decomposed form) the same id in another normal form.
        text = rnd.choice(GOOD_IDS) + b"%d" % (i if rnd.random() > 0.1 else rnd.randint(0, i))
        fields = [render(text, rnd.random() < 0.3) if rnd.random() > 0.03 else junk()]
        fields += [rnd.choice(GOOD_COUNTS) if rnd.random() > 0.03 else junk() for _ in range(width - 1)]
        end = ending if rnd.random() > 0.03 else rnd.choice([b"\n", b"\r\n", b"\r", b"", b"\n\n"])
        rows.append(b",".join(fields) + end)
    data = header + ending + b"".join(rows)
    if rnd.random() < 0.15:
        at = rnd.randint(0, len(data))
        data = data[:at] + rnd.choice(PIECES + FATAL) + data[at:]
    return data


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_csv())
@example(b'id,s,f\n"a\nb""\n')
@example(b"id,s,f\na,1,2\n\r\n")
@example(b"id,s,f\r\n\r\n\n")
def test_the_reader_agrees_with_the_reference(data):
    assert outcome(compiled_read, data) == outcome(reference_read, data)


counts = st.one_of(
    st.integers(0, 2**53 + 10),
    st.integers(2**53 - 10, 2**66),
    st.integers(10**300, 10**310),
    st.integers(-5, 5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e16, 2**53 - 1.0, 2.0**53, 1e17, DBL_MAX, 1e-320, 5e-324, 2.2250738585072014e-308, -0.0]),
)
ids = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
    st.text("abc \t\"',\r\n\u00a0\u0301é", max_size=6),
)


def allowed_count(value):
    if isinstance(value, int):
        return 0 <= value and value <= DBL_MAX and int(float(value)) == value
    text = repr(value)          # csv writes floats as repr does
    return (
        math.isfinite(value) and not text.startswith("-")
        and (value == 0 or value >= sys.float_info.min)
    )


def allowed_id(item):
    return (
        bool(item) and item == item.strip() and "\ufeff" not in item
        and not any(unicodedata.category(ch) == "Cc" for ch in item)
    )


@settings(max_examples=500, deadline=None)
@given(
    rows=st.lists(st.tuples(ids, counts, counts), max_size=20),
    lineterminator=st.sampled_from(["\r\n", "\n"]),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]),
    bom=st.booleans(),
)
def test_files_written_by_the_csv_module_read_back_exactly(rows, lineterminator, quoting, bom):
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=lineterminator, quoting=quoting)
    writer.writerow(["item_id", "successes", "failures"])
    writer.writerows(rows)
    data = (BOM if bom else b"") + out.getvalue().encode()
    items = [item for item, _, _ in rows]
    nfc = [unicodedata.normalize("NFC", item) for item in items]
    should_accept = (
        all(allowed_id(item) for item in items)
        and all(allowed_count(s) and allowed_count(f) for _, s, f in rows)
        and len(set(items)) == len(items)
        and len(set(nfc)) == len(nfc)
    )
    try:
        columns, got = read(data)
    except _csv.CsvError as exc:
        assert re.match(r"line \d+\b", str(exc)), str(exc)
        assert not should_accept, f"refused a file the rules allow: {exc}"
        return
    assert should_accept, "accepted a file the rules refuse"
    assert columns == ["item_id", "successes", "failures"]
    assert got == [(item, (float(s), float(f))) for item, s, f in rows]


# -- the updated_at column ---------------------------------------------------

import datetime  # noqa: E402


def test_updated_at_is_read_as_unix_seconds():
    data = (b"id,s,updated_at\n"
            b"a,1,1715000000\n"
            b"b,2,1715000000.25\n"
            b"c,3,2024-05-06T12:53:20Z\n"
            b"d,4,2024-05-06 14:53:20.5+02:00\n"
            b"e,5,2024-05-06t12:53:20.000001z\n"
            b"f,6,2016-12-31T23:59:60Z\n")
    columns, rows = read(data)
    assert columns == ["id", "s", "updated_at"]
    assert [values for _, values in rows] == [
        (1.0, 1715000000.0), (2.0, 1715000000.25), (3.0, 1715000000.0), (4.0, 1715000000.5),
        (5.0, 1715000000.000001), (6.0, 1483228800.0),        # a leap second: the next minute's first
    ]


@pytest.mark.parametrize(("text", "why"), [
    ("2024-05-06T12:53:20", "is not a time"),                # no offset
    ("2024-05-06T12:53:20.Z", "is not a time"),              # a fraction without digits
    ("2024-05-06T12:53Z", "is not a time"),
    ("2024-5-06T12:53:20Z", "is not a time"),
    ("2024-05-06X12:53:20Z", "is not a time"),
    ("2024-05-06T12:53:20+0200", "is not a time"),
    ("2024-05-06T12:53:20Z ", "is not a time"),
    ("2023-02-29T00:00:00Z", "out of range"),
    ("2024-13-01T00:00:00Z", "out of range"),
    ("2024-05-06T24:00:00Z", "out of range"),
    ("2024-05-06T12:53:61Z", "out of range"),
    ("2024-05-06T12:53:20+24:00", "out of range"),
    ("1969-12-31T23:59:59Z", "before 1970"),
    ("-5", "not a count"),
    ("soon", "not a number"),
    ("", "empty value"),
])
def test_bad_times_name_the_line_and_column(text, why):
    message = refusal(b"id,s,updated_at\na,1,1\nb,2," + text.encode() + b"\n")
    assert message.startswith("line 3, column 'updated_at': ") and why in message, message


@given(st.datetimes(min_value=datetime.datetime(1970, 1, 2), max_value=datetime.datetime(9999, 12, 30),
                    timezones=st.timezones()),
       st.sampled_from(["T", "t", " "]), st.integers(min_value=0, max_value=6))
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
def test_rfc3339_times_agree_with_datetime(moment, separator, digits):
    """The compiled parser against the standard library's, for any date,
    offset and precision (offsets in whole minutes, as RFC 3339 writes them)."""
    offset = moment.utcoffset()
    if offset is None or offset.seconds % 60 or offset.microseconds:
        return
    moment = moment.replace(microsecond=moment.microsecond // 10 ** (6 - digits) * 10 ** (6 - digits))
    text = moment.strftime("%Y-%m-%d") + separator + moment.strftime("%H:%M:%S")
    if digits:
        text += "." + f"{moment.microsecond:06d}"[:digits]
    minutes = offset.days * 1440 + offset.seconds // 60
    text += "Z" if minutes == 0 else f"{'+' if minutes > 0 else '-'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    utc = moment.astimezone(datetime.timezone.utc)
    whole = (utc.replace(microsecond=0) - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc))
    expected = whole.days * 86400 + whole.seconds + float("0." + f"{moment.microsecond:06d}"[:digits] if digits else 0)
    assert _csv.parse_time(text.encode()) == expected, text
