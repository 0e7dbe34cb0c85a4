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

import numpy as np
import orjson

from mab import _wire
from mab.errors import RequestError
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


class _Object(dict):
    """A JSON object of the reference reading, with the first name it repeats."""

    repeated = None


def _object(pairs):
    # Checked here, for the values that a repeated name then drops.
    if not all(_strings_are_unicode(name) and _strings_are_unicode(value) for name, value in pairs):
        raise ValueError("a lone surrogate")
    obj = _Object(pairs)
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


def _strings_are_unicode(value):
    """False if a string holds a lone surrogate (from a \\uD800-style escape)."""
    if type(value) is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if type(value) is list:
        return all(_strings_are_unicode(v) for v in value)
    if isinstance(value, dict):
        return all(_strings_are_unicode(k) and _strings_are_unicode(v) for k, v in value.items())
    return True


def reference_read(body, max_items=MAX_ITEMS):
    """The request in ``body`` as the README's API and RFC 8259 define it, read
    with the standard library's ``json``: UTF-8 (section 8.1), no byte order
    mark and no lone surrogate (refusals sections 8.1 and 8.2 allow, as
    orjson does), integers in [-2**63, 2**64 - 1] exact and other numbers as
    binary64, finite (section 6 allows the limit), a repeated name refused
    (``duplicate_field``). Raises ``RequestError`` like the service."""
    from mab.errors import InvalidRequest, MalformedRequest

    def malformed(why):
        return MalformedRequest(f"the body is not valid JSON: {why}", code="malformed_json")

    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise malformed(exc) from None
    if text.startswith("\ufeff"):
        raise malformed("a byte order mark")
    try:
        doc = json.loads(
            text, object_pairs_hook=_object, parse_int=_integer, parse_float=_finite, parse_constant=_refuse_constant
        )
    except (ValueError, RecursionError) as exc:
        raise malformed(exc) from None
    if not _strings_are_unicode(doc):
        raise malformed("a lone surrogate")
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
    if [_name.decode() for _name in names] != list(orjson.loads(body)):
        raise Disagreement(f"object_member_names gave {names!r} for the simple body {body[:300]!r}")


def fuzz_one_input(data):
    """One fuzzer input: ``data`` (bytes) as a /predict body. Raises
    ``Disagreement`` for a disagreement; any other exception is a finding."""
    body = bytes(data)
    check_agreement(body)
    check_compiled_parts(body)
