"""The oracle for fuzzing the /predict body parsers.

A /predict body is read by one of two paths (``mab.service``): the compiled
parser ``mab._wire.parse_predict_body`` for the bodies it recognises, and
orjson plus ``parse_prediction_request`` for every other body. They must read
every body alike: accept or refuse it, refuse it with the same error (class,
code, HTTP status and message), and read the same fields. A third reading,
``reference_read``, follows RFC 8259 and the README's API with the standard
library's ``json`` module, independently of orjson and of the compiled code.

``fuzz_one_input(data)`` checks one body against all three and raises
``Disagreement`` when they differ; any other exception it lets through is a
finding too (a body must end in a request or a ``RequestError``, nothing
else). scripts/fuzz.py runs it under atheris (``--target wire``) and
tests/test_wire_properties.py under hypothesis.
"""

import json
import sys

import numpy as np
import orjson

from mab import _wire
from mab.errors import InvalidRequest, MalformedRequest, RequestError
from mab.service import decode_prediction_request, parse_prediction_request, read_prediction_request
from mab.web import ERROR_STATUS

# Small, so that the 413 of too many ids is in reach of short inputs.
MAX_ITEMS = 8

# The range orjson reads integers in exactly (int64 and uint64).
_EXACT_INTEGERS = (-(2**63), 2**64 - 1)


class Disagreement(AssertionError):
    """Two readings of one body differ."""


def status_of(error):
    """The HTTP status the web layer gives a ``RequestError`` (``mab.web.ERROR_STATUS``)."""
    for error_class, status in ERROR_STATUS:
        if isinstance(error, error_class):
            return status
    return 500


def outcome(read, body, max_items=MAX_ITEMS):
    """What ``read(body, max_items)`` makes of a body, as a comparable tuple:
    ``("ok", item_ids, user_id, top_k, model, seed, types)`` or
    ``("error", status, code, message)``. Other exceptions propagate."""
    try:
        request = read(body, max_items)
    except RequestError as error:
        return ("error", status_of(error), error.code, error.message)
    types = tuple(type(value).__name__ for value in (request.user_id, request.top_k, request.model, request.seed))
    return ("ok", list(request.item_ids), request.user_id, request.top_k, request.model, request.seed, types)


# orjson's limit on nesting (RFC 8259 section 9 lets a parser set one).
MAX_DEPTH = 1024


class _Object(dict):
    """A JSON object of the reference reading: its nesting depth and the
    first name it repeats."""

    depth = 1
    repeated = None


def _scan(value):
    """The nesting depth of a decoded value; raises ValueError for a string
    with a lone surrogate (from a \\uD800-style escape). Objects were
    scanned when they were made, so only lists and strings are walked."""
    depth, stack = 0, [(value, 0)]
    while stack:
        node, above = stack.pop()
        if type(node) is str:
            node.encode("utf-8")      # UnicodeEncodeError is a ValueError
        elif type(node) is list:
            depth = max(depth, above + 1)
            stack.extend((item, above + 1) for item in node)
        elif type(node) is _Object:
            depth = max(depth, above + node.depth)
    return depth


def _object(pairs):
    # Scanned here, for the values that a repeated name then drops.
    obj = _Object(pairs)
    obj.depth = 1 + max((max(_scan(name), _scan(value)) for name, value in pairs), default=0)
    if obj.depth > MAX_DEPTH:
        raise ValueError("nested too deep")
    if len(obj) != len(pairs):
        seen = set()
        obj.repeated = next(name for name, _ in pairs if name in seen or seen.add(name))
    return obj


def _integer(text):
    value = int(text) if len(text) <= 21 else None
    if value is not None and _EXACT_INTEGERS[0] <= value <= _EXACT_INTEGERS[1]:
        return value
    return _finite(text)


def _finite(text):
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:20]} is beyond binary64's range")
    return value


def _refuse_constant(name):
    raise ValueError(f"{name} is not JSON")


def reference_read(body, max_items=MAX_ITEMS):
    """The request in ``body`` as the README's API and RFC 8259 define it, read
    with the standard library's ``json``: UTF-8 (section 8.1), no byte order
    mark and no lone surrogate (refusals sections 8.1 and 8.2 allow, as
    orjson does), integers in [-2**63, 2**64 - 1] exact and other numbers as
    binary64, finite (section 6 allows the limit), nesting at most
    MAX_DEPTH deep (section 9 allows that limit), a repeated name refused
    (``duplicate_field``). Raises ``RequestError`` like the service."""
    def malformed(why):
        return MalformedRequest(f"the body is not valid JSON: {why}", code="malformed_json")

    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise malformed(exc) from None
    if text.startswith("\ufeff"):
        raise malformed("a byte order mark")
    # json's decoder recurses per level: room for bodies nested beyond MAX_DEPTH.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 4 * MAX_DEPTH + len(body)))
    try:
        doc = json.loads(
            text, object_pairs_hook=_object, parse_int=_integer, parse_float=_finite, parse_constant=_refuse_constant
        )
        if _scan(doc) > MAX_DEPTH:
            raise ValueError("nested too deep")
    except ValueError as exc:
        raise malformed(exc) from None
    finally:
        sys.setrecursionlimit(limit)
    if isinstance(doc, _Object):
        if doc.repeated is not None:
            raise InvalidRequest(f"the field {doc.repeated!r} is given more than once", code="duplicate_field")
        doc = dict(doc)
    return parse_prediction_request(doc, max_items)


def check_agreement(body, max_items=MAX_ITEMS):
    """The outcome of ``body``; raises ``Disagreement`` unless the compiled
    path, the orjson path and the reference reading agree on it."""
    served = outcome(read_prediction_request, body, max_items)
    general = outcome(decode_prediction_request, body, max_items)
    if served != general:
        raise Disagreement(f"body {body[:300]!r}:\n  served:  {served!r}\n  general: {general!r}")
    reference = outcome(reference_read, body, max_items)
    if _comparable(served) != _comparable(reference):
        raise Disagreement(f"body {body[:300]!r}:\n  served:    {served!r}\n  reference: {reference!r}")
    return served


def _comparable(result):
    # The JSON parsers word their complaints differently; the rest must match.
    if result[0] == "error" and result[2] in ("malformed_json", "duplicate_field"):
        return result[:3]
    return result


def check_compiled_parts(body):
    """Exercise what else the compiled module does with a body, and check it:
    the id spans' JSON writer and the member-name scan."""
    names = _wire.object_member_names(body)
    if any(type(name) is not bytes or len(name) > len(body) for name in names):
        raise Disagreement(f"object_member_names gave {names!r} for {body[:300]!r}")
    fields = _wire.parse_predict_body(body)
    if fields is None or fields[0] is None:
        return
    spans = fields[0]
    ids = list(spans)
    reverse = np.arange(len(ids) - 1, -1, -1, dtype=np.int64)
    if spans.json_array(reverse) != orjson.dumps(ids[::-1]):
        raise Disagreement(f"json_array does not write {ids[::-1]!r}")
    if [name.decode() for name in names] != list(orjson.loads(body)):
        raise Disagreement(f"object_member_names gave {names!r} for the simple body {body[:300]!r}")


# Byte strings for the fuzzer's dictionary: the words of the format, and the
# values at its edges.
TOKENS = [
    b'"item_ids"', b'"user_id"', b'"top_k"', b'"model"', b'"seed"', b'"default"', b"null", b"true", b"false",
    b"\\u", b"\\ud83d\\ude00", b"\\ud800", b"\\u0000", b'\\"', b"\\\\", b"\xef\xbb\xbf", b"\xed\xa0\x80",
    b"\xc3\xa9", b"-0", b"5.0", b"1e400", b"-1e400", b"NaN", b"Infinity", b"18446744073709551615",
    b"18446744073709551616", b"-9223372036854775808", b"-9223372036854775809", b"9007199254740993",
]


def seed_inputs():
    """A few valid bodies, made fresh at each start (the corpus's seeds)."""
    rng = np.random.default_rng(0)
    bodies = [
        orjson.dumps({"item_ids": ["item-000001", "item-000042", "brand-new-item"], "top_k": 2}),
        orjson.dumps({"item_ids": [f"item-{i:06d}" for i in rng.integers(0, 10**6, 6)], "user_id": "u-17",
                      "top_k": 3, "model": "default", "seed": 2**64 - 1}),
        json.dumps({"seed": 5.0, "item_ids": ["caf\u00e9", "\U0001f600", 'a"b\\'], "user_id": None},
                   indent=1).encode(),
        json.dumps({"item_ids": ["x"], "top_k": 1}, ensure_ascii=False, separators=(" , ", " : ")).encode(),
        b' {"item_ids": [ "a" , "b" ], "seed": -0, "model": "m"}\r\n',
    ]
    return bodies


def fuzz_one_input(data):
    """One fuzzer input: ``data`` (bytes) as a /predict body. Raises
    ``Disagreement`` for a disagreement; any other exception is a finding."""
    body = bytes(data)
    check_agreement(body)
    check_compiled_parts(body)
