"""Differential property tests of the /predict body parsers.

The compiled parser (``mab._wire``, through ``read_prediction_request``) and
the general path (orjson and ``parse_prediction_request``, through
``decode_prediction_request``) must agree on every body, valid, nearly valid
or hostile: on accepting it, on the error (code, HTTP status, message) and
on every field. A reading with the standard library's ``json``
(``mab.testing.fuzz_wire.reference_read``) checks both against RFC 8259 and
the README's API. The oracle is the one scripts/fuzz.py uses.

In CI the examples are few and derandomised (a fixed set, a few seconds). For
a long local search set ``MAB_WIRE_EXAMPLES``::

    MAB_WIRE_EXAMPLES=200000 .venv/bin/python -m pytest tests/test_wire_properties.py
"""

import json
import os

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mab import _wire
from mab.errors import InvalidRequest, MalformedRequest
from mab.service import decode_prediction_request, read_prediction_request
from mab.testing.fuzz_wire import (
    MAX_ITEMS,
    Disagreement,
    check_agreement,
    check_compiled_parts,
    fuzz_one_input,
    outcome,
)

_LONG_RUN = int(os.environ.get("MAB_WIRE_EXAMPLES", "0"))


def budget(examples):
    """``examples`` fixed examples in CI; MAB_WIRE_EXAMPLES random ones if set."""
    if _LONG_RUN:
        return settings(max_examples=_LONG_RUN, deadline=None, suppress_health_check=list(HealthCheck))
    return settings(
        max_examples=examples, deadline=None, derandomize=True, database=None,
        suppress_health_check=list(HealthCheck),
    )


# -- JSON-ish texts, as bytes ----------------------------------------------------

FIELD_NAMES = ["item_ids", "user_id", "top_k", "model", "seed"]

whitespace = st.sampled_from([b"", b"", b" ", b"\n", b"\t", b"\r\n", b" \t\r\n "])
# Not JSON whitespace (RFC 8259 section 2): form feed, vertical tab, NUL,
# no-break space, line separator, a byte order mark inside the text.
foreign_whitespace = st.sampled_from([b"\x0c", b"\x0b", b"\x00", b"\xc2\xa0", b"\xe2\x80\xa8", b"\xef\xbb\xbf"])

boundary_integers = [
    0, 1, 5, 8, 9, 2**31, 2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**63 + 1, 2**64 - 1, 2**64, 2**64 + 1, 10**20, 10**30,
]
signed_boundaries = sorted(set(boundary_integers + [-n for n in boundary_integers]))
integer_texts = st.one_of(
    st.sampled_from(boundary_integers).map(str),
    st.sampled_from(boundary_integers).map(lambda n: f"-{n}"),
    st.integers(-(2**70), 2**70).map(str),
    st.integers(0, 12).map(str),
)
float_texts = st.one_of(
    st.sampled_from([
        "5.0", "1.0", "0.0", "-0.0", "-0", "1e2", "1E2", "1e+2", "1e-2", "2.5", "1e400", "-1e400", "1e-400",
        "18446744073709551615.0", "18446744073709551616.0", "1.8446744073709552e19", "9007199254740993.0",
        "0.5e1", "1.0000000000000000001", "123456789012345678901234567890", "1" + "0" * 310, "1e308", "1.7976931348623159e308",
    ]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
# Not JSON numbers or literals.
bad_number_texts = st.sampled_from([
    "01", "+1", ".5", "1.", "-", "1e", "0x10", "NaN", "-NaN", "Infinity", "-Infinity", "1_000", "00", "-01",
    "1.e2", "--1", "1e2.5", "nul", "True", "None", "undefined", "tru",
])
number_texts = st.one_of(integer_texts, integer_texts, float_texts, bad_number_texts).map(str.encode)

printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters='"\\'), max_size=8)
# Escapes, valid and not (RFC 8259 section 7), raw UTF-8, and bytes that are
# not UTF-8 (RFC 3629: a lone continuation byte, a truncated sequence, an
# encoded surrogate, overlong forms), control characters (which must be
# escaped; DEL need not be).
valid_pieces = st.sampled_from([
    b"\\n", b'\\"', b"\\\\", b"\\/", b"\\b", b"\\f", b"\\r", b"\\t", b"\\u0041", b"\\u00e9", b"\\u005f",
    b"\\ud83d\\ude00", b"\\uD834\\uDD1E", b"\\u0000", "\u00e9".encode(), "\U0001f600".encode(),
    "\u2028".encode(), "\ufeff".encode(), b"\x7f",
])
invalid_pieces = st.sampled_from([
    b"\\ud800", b"\\udc00", b"\\udc00\\ud800", b"\\x41", b"\\U0041", b"\\u12", b"\\", b"\\a",
    b"\xff", b"\x80", b"\xc3", b"\xed\xa0\x80", b"\xc0\x80", b"\xe0\x80\xaf", b"\xf4\x90\x80\x80",
    b"\x00", b"\x1f", b"\n", b"\t",
])
string_pieces = st.one_of(printable.map(str.encode), printable.map(str.encode), valid_pieces, invalid_pieces)
string_texts = st.lists(string_pieces, max_size=3).map(lambda pieces: b'"' + b"".join(pieces) + b'"')
simple_strings = printable.map(lambda s: b'"' + s.encode() + b'"')


def joined(items, ws, trailing_comma):
    sep = ws + b"," + ws
    return sep.join(items) + (b"," if trailing_comma and items else b"")


@st.composite
def arrays(draw, elements):
    items = draw(st.lists(elements, max_size=MAX_ITEMS + 2))
    ws = draw(whitespace)
    trailing = draw(st.integers(0, 9)) == 0
    return b"[" + ws + joined(items, ws, trailing) + ws + b"]"


literals = st.sampled_from([b"null", b"true", b"false"])
scalars = st.one_of(literals, number_texts, string_texts)
small_objects = st.lists(st.tuples(string_texts, scalars), max_size=3).map(
    lambda members: b"{" + b",".join(k + b":" + v for k, v in members) + b"}"
)
json_values = st.one_of(scalars, arrays(scalars), small_objects, arrays(st.one_of(arrays(scalars), small_objects)))
id_arrays = arrays(st.one_of(simple_strings, simple_strings, simple_strings, string_texts, literals, number_texts))

field_values = {
    "item_ids": st.one_of(id_arrays, id_arrays, id_arrays, json_values),
    "user_id": st.one_of(simple_strings, string_texts, json_values),
    "top_k": st.one_of(number_texts, json_values),
    "model": st.one_of(simple_strings, string_texts, literals, json_values),
    "seed": st.one_of(number_texts, json_values),
}
names = st.one_of(
    st.sampled_from(FIELD_NAMES).map(lambda name: name.encode()),
    st.sampled_from(FIELD_NAMES).map(lambda name: name.encode()),
    st.sampled_from(FIELD_NAMES).map(lambda name: name.encode()),
    st.sampled_from([
        b"item\\u005fids", b"se\\u0065d", b"\\u0074op_k", b"Seed", b"item_ids ", b"colour", b"", b"top_k\\u0000",
        b"mod\xc3\xa9l", b"us\\er_id",
    ]),
)


@st.composite
def objects(draw):
    """A JSON-ish object: mostly request fields, now and then repeated,
    unknown, escaped or of the wrong type."""
    chosen = [b"item_ids"] if draw(st.booleans()) else []
    chosen += draw(st.lists(names, max_size=6))
    ws = draw(whitespace)
    members = []
    for name in chosen:
        plain = name.decode("utf-8", "replace")
        value = draw(field_values[plain] if plain in field_values else json_values)
        colon = draw(st.sampled_from([b":"] * 8 + [b" : ", b"", b"::"]))
        members.append(b'"' + name + b'"' + colon + ws + value)
    trailing = draw(st.integers(0, 9)) == 0
    return b"{" + ws + joined(members, ws, trailing) + ws + b"}"


@st.composite
def documents(draw):
    """An object (most of the time) or any other JSON-ish text, with whitespace around."""
    doc = draw(st.one_of(objects(), objects(), objects(), json_values))
    before = draw(st.one_of(whitespace, whitespace, foreign_whitespace))
    after = draw(st.one_of(whitespace, whitespace, foreign_whitespace))
    return before + doc + after


@st.composite
def mutated(draw, bodies):
    """A body with up to three byte-level mutations: truncation, insertion,
    deletion, replacement, a duplicated slice, a prefix or a suffix."""
    body = draw(bodies)
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["truncate", "insert", "delete", "replace", "duplicate", "prefix", "suffix"]))
        at = draw(st.integers(0, len(body)))
        if kind == "truncate":
            body = body[:at]
        elif kind == "insert":
            body = body[:at] + draw(st.one_of(st.binary(min_size=1, max_size=3), st.sampled_from([b",", b"{", b"}", b"[", b"]", b'"', b"\\", b":", b"-", b"0", b"e"]))) + body[at:]
        elif kind == "delete":
            body = body[:at] + body[at + 1:]
        elif kind == "replace" and at < len(body):
            body = body[:at] + bytes([draw(st.integers(0, 255))]) + body[at + 1:]
        elif kind == "duplicate":
            end = draw(st.integers(at, len(body)))
            body = body[:end] + body[at:end] + body[end:]
        elif kind == "prefix":
            body = draw(st.sampled_from([b"\xef\xbb\xbf", b"\xfe\xff", b" ", b"\x00", b"[", b"{"])) + body
        elif kind == "suffix":
            body = body + draw(st.sampled_from([b"\x00", b" x", b"}", b",", b"\n\n", b"{}", b"\xff"]))
    return body


valid_values = {
    "item_ids": st.one_of(
        st.lists(printable, min_size=1, max_size=MAX_ITEMS),
        st.lists(st.text(max_size=6), min_size=1, max_size=MAX_ITEMS + 1),
        st.just([]),
    ),
    "user_id": st.one_of(st.none(), st.text(max_size=6)),
    "top_k": st.one_of(st.none(), st.integers(-2, 12), st.sampled_from(signed_boundaries), st.sampled_from([5.0, 1e2, -0.0, 1.5])),
    "model": st.one_of(st.none(), st.just("default"), st.text(max_size=4)),
    "seed": st.one_of(
        st.none(), st.integers(0, 2**64 - 1), st.sampled_from(signed_boundaries), st.integers(-(2**64), 2**65),
        st.sampled_from([7.0, 1e19, 2.0**64, -0.0, 0.5]),
    ),
}


@st.composite
def valid_bodies(draw):
    """Well-formed request documents, written by the standard library's
    encoder with varied escaping and spacing; most are valid requests."""
    chosen = ["item_ids"] + draw(st.lists(st.sampled_from(FIELD_NAMES[1:]), unique=True))
    doc = {name: draw(valid_values[name]) for name in draw(st.permutations(chosen))}
    text = json.dumps(
        doc,
        ensure_ascii=draw(st.booleans()),
        separators=draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t")])),
        indent=draw(st.sampled_from([None, None, 0, 2, "\t"])),
    )
    return text.encode()


def nested(depth):
    return b'{"item_ids": ' + b"[" * depth + b'"a"' + b"]" * depth + b"}"


bodies = st.one_of(
    valid_bodies(),
    valid_bodies(),
    mutated(valid_bodies()),
    documents(),
    documents(),
    mutated(documents()),
    st.binary(max_size=64),
    st.integers(1, 40).map(nested),
)


# -- the properties ------------------------------------------------------------


@budget(2500)
@given(bodies)
def test_both_paths_and_the_reference_agree(body):
    result = check_agreement(body)
    check_compiled_parts(body)
    event("compiled parser" if _wire.parse_predict_body(body) is not None else "general path")
    event(result[0] if result[0] == "ok" else f"{result[1]} {result[2]}")


@st.composite
def simple_bodies(draw):
    """Bodies in the compiled parser's documented class (mab/_wire.pyx)."""
    chosen = draw(st.lists(st.sampled_from(FIELD_NAMES), unique=True, max_size=5))
    ws = draw(whitespace)
    members = []
    for name in chosen:
        if draw(st.integers(0, 5)) == 0:
            value = b"null"
        elif name == "item_ids":
            value = b"[" + ws + (ws + b"," + ws).join(draw(st.lists(simple_strings, max_size=MAX_ITEMS + 1))) + ws + b"]"
        elif name in ("user_id", "model"):
            value = draw(simple_strings)
        else:
            value = str(draw(st.integers(-(2**63), 2**64 - 1))).encode()
        members.append(b'"' + name.encode() + b'"' + ws + b":" + ws + value)
    return ws + b"{" + ws + (ws + b"," + ws).join(members) + ws + b"}" + ws


@budget(500)
@given(simple_bodies())
def test_the_compiled_parser_takes_every_simple_body(body):
    # Without this, the differential test would pass if the compiled parser
    # declined everything.
    assert _wire.parse_predict_body(body) is not None
    check_agreement(body)


# -- disagreements found, and the decisions they forced, as examples ------------


def general(body):
    return outcome(decode_prediction_request, body)


def served(body):
    return outcome(read_prediction_request, body)


@pytest.mark.parametrize("literal", ["-9223372036854775809", "-18446744073709551615", "-18446744073709551616"])
def test_integers_below_int64_are_read_as_binary64_by_both_paths(literal):
    # Found by the differential test: the compiled parser read integers down
    # to -(2**64 - 1) exactly, orjson reads those below -2**63 as binary64,
    # so the two paths named different values in the 422 message.
    for name in ("seed", "top_k"):
        body = f'{{"item_ids": ["a"], "{name}": {literal}}}'.encode()
        assert _wire.parse_predict_body(body) is None
        assert served(body) == general(body)
        assert served(body)[:3] == ("error", 422, "invalid_value")
    assert _wire.parse_predict_body(b'{"seed": -9223372036854775808}')[4] == -(2**63)


@pytest.mark.parametrize(
    ("body", "name"),
    [
        (b'{"item_ids": ["a"], "item_ids": ["b"]}', "item_ids"),
        (b'{"seed": 1, "item_ids": ["a"], "seed": 1}', "seed"),
        (b'{"item_ids": ["a"], "se\\u0065d": 2, "seed": 3}', "seed"),
        (b'{"colour": 1, "colour": 2, "item_ids": ["a"]}', "colour"),
        (b'{"item_ids": ["\\"seed\\":"], "top_k": 1, "top_k": null}', "top_k"),
    ],
)
def test_a_repeated_name_is_refused_by_both_paths(body, name):
    # RFC 8259 section 4 leaves a repeated name's meaning to the parser
    # (orjson keeps the last, silently); I-JSON (RFC 7493) forbids it. Both
    # paths refuse it, with 422 duplicate_field.
    assert served(body) == general(body) == ("error", 422, "duplicate_field", f"the field {name!r} is given more than once")


def test_repeated_names_inside_values_are_not_the_request_s():
    # Only the request object's own names count; a nested object is refused
    # for its type.
    body = b'{"item_ids": [{"a": 1, "a": 2}], "user_id": "{\\"seed\\": 1, \\"seed\\": 2}"}'
    assert served(body)[:3] == ("error", 400, "wrong_type")
    assert _wire.object_member_names(body) == [b"item_ids", b"user_id"]


def test_member_names_keep_their_escapes_and_skip_values():
    body = b' {"a": 1, "b\\\\": [{"c": 2}, "x,\\""], "a": {"d": [1, 2]}, "e\\"": "}"}'
    assert _wire.object_member_names(body) == [b"a", b"b\\\\", b"a", b'e\\"']
    for not_an_object in (b"", b"[]", b'"{"', b"{", b'{"', b'{"a\\"'):
        assert _wire.object_member_names(not_an_object) == []


def test_the_compiled_functions_refuse_none():
    # A None body was read as bytes (PyBytes_AS_STRING on None: out of
    # bounds); not reachable over HTTP, but a crash in waiting.
    for call in (lambda: _wire.parse_predict_body(None), lambda: _wire.object_member_names(None),
                 lambda: _wire.IdSpans(None, [], [])):
        with pytest.raises(TypeError):
            call()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # Integral numbers count as integers (JSON Schema), exactly where binary64 is exact.
        (b'{"item_ids": ["a"], "top_k": 5.0, "seed": 1e2}', ("ok", ["a"], None, 5, "default", 100)),
        (b'{"item_ids": ["a"], "seed": -0}', ("ok", ["a"], None, None, "default", 0)),
        (b'{"item_ids": ["a"], "seed": -0.0}', ("ok", ["a"], None, None, "default", 0)),
        (b'{"item_ids": ["a"], "seed": 18446744073709551615}', ("ok", ["a"], None, None, "default", 2**64 - 1)),
        (b'{"item_ids": ["a"], "seed": 18446744073709551616}', ("error", 422, "invalid_value")),
        # 2**64 - 1 with a fraction is the binary64 2**64: out of range.
        (b'{"item_ids": ["a"], "seed": 18446744073709551615.0}', ("error", 422, "invalid_value")),
        (b'{"item_ids": ["a"], "top_k": 0}', ("error", 422, "invalid_value")),
        (b'{"item_ids": ["a"], "top_k": -0}', ("error", 422, "invalid_value")),
        (b'{"item_ids": ["a"], "top_k": 1e400}', ("error", 400, "malformed_json")),
        (b'{"item_ids": ["a"], "top_k": NaN}', ("error", 400, "malformed_json")),
        (b'{"item_ids": ["a"], "top_k": Infinity}', ("error", 400, "malformed_json")),
        (b'{"item_ids": ["a"],}', ("error", 400, "malformed_json")),
        (b'{"item_ids": ["a",]}', ("error", 400, "malformed_json")),
        (b'\xef\xbb\xbf{"item_ids": ["a"]}', ("error", 400, "malformed_json")),
        (b'{"item_ids": ["\\ud800"]}', ("error", 400, "malformed_json")),
        (b'{"item_ids": ["\xed\xa0\x80"]}', ("error", 400, "malformed_json")),
        (b'{"item_ids": ["\xff"]}', ("error", 400, "malformed_json")),
        (b'{"item_ids":\x0c["a"]}', ("error", 400, "malformed_json")),
        (b'{"item_ids": ["\\ud83d\\ude00", "\xc3\xa9"]}', ("ok", ["\U0001f600", "\xe9"], None, None, "default", None)),
        (b'{"item_ids": ["a\x7f"]}', ("ok", ["a\x7f"], None, None, "default", None)),
    ],
)
def test_edge_cases_read_as_documented(body, expected):
    result = served(body)
    assert result == general(body)
    assert result[:len(expected)] == expected
    check_agreement(body)


def test_the_oracle_catches_a_disagreement(monkeypatch):
    # The oracle must be able to fail: plant a misreading in the fast path.
    real = _wire.parse_predict_body

    def misreads_seed(body):
        fields = real(body)
        return None if fields is None else fields[:4] + (7,)

    monkeypatch.setattr(_wire, "parse_predict_body", misreads_seed)
    with pytest.raises(Disagreement):
        fuzz_one_input(b'{"item_ids": ["a"], "seed": 1}')


def test_errors_are_request_errors_only():
    # The oracle lets anything but a RequestError through: a finding.
    for body in (b"{", b'{"item_ids": 5}', b'{"item_ids": ["a"], "x": 1}'):
        with pytest.raises((MalformedRequest, InvalidRequest)):
            read_prediction_request(body, MAX_ITEMS)
    assert orjson.loads(b"-0") == 0   # the premise of the -0 examples above


@pytest.mark.parametrize("depth", [1023, 1024, 1025, 3000])
def test_nesting_at_orjson_s_limit_is_read_alike(depth):
    # RFC 8259 section 9 lets a parser limit nesting; orjson's limit is 1024
    # levels, and the reference reading must hold the same one.
    for body in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth,
                 b'{"item_ids": ' + b"[" * (depth - 1) + b'"a"' + b"]" * (depth - 1) + b"}"):
        result = check_agreement(body)
        assert (result[2] == "malformed_json") == (depth > 1024)


int64s = st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, 1, 2**62, 2**63 - 1, -(2**63)]))


@budget(300)
@given(st.binary(max_size=16), st.lists(st.tuples(int64s, int64s), max_size=4))
def test_id_spans_hold_only_spans_inside_their_body(body, spans):
    # Found by reading the code while the fuzzer ran: starts + lengths
    # wrapped around in int64, so a span such as (1, 2**63 - 1) passed the
    # check and reading it would have run off the body.
    starts, lengths = [s for s, _ in spans], [n for _, n in spans]
    try:
        ids = _wire.IdSpans(body, starts, lengths)
    except ValueError:
        assert any(s < 0 or n < 0 or s + n > len(body) for s, n in spans)
        return
    assert all(0 <= s and 0 <= n and s + n <= len(body) for s, n in spans)
    if body.isascii():
        assert list(ids) == [body[s:s + n].decode() for s, n in spans]


def test_id_spans_refuse_a_span_that_wraps_around():
    with pytest.raises(ValueError, match="outside"):
        _wire.IdSpans(b"abc", [1], [2**63 - 1])
    with pytest.raises(ValueError, match="outside"):
        _wire.IdSpans(b"abc", [2**62], [2**62 + 5])
