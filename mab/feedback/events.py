"""Reading a POST /feedback body: a batch of reward events, all valid or none.

The body is decoded as /predict's general path decodes it
(``mab.service.decode_prediction_request``): orjson, so strict RFC 8259 JSON
in UTF-8 without a byte order mark, and a name given twice in any object
refused (RFC 8259 section 4 leaves its meaning open; I-JSON, RFC 7493
section 2.3, forbids it). Then every event is checked in order, and the
first bad one is reported with its index (``details["index"]``): nothing of
a batch with a bad event is applied.

Statuses follow /predict: a wrong type is malformed (400), a value out of
its domain or an unknown field invalid (422), an unknown model 404, too
many events 413.
"""

import json
import math
from dataclasses import dataclass

from mab.errors import InvalidRequest, MalformedRequest, TooManyItems, UnknownModel
from mab.service import load_json

BODY_FIELDS = frozenset({"events"})
EVENT_FIELDS = frozenset({"decision_id", "item_id", "reward", "model", "user_id"})
#: Longest decision id, in characters (mab's own are 32 hex digits).
MAX_DECISION_ID = 128
#: Longest item id or user id, in UTF-8 bytes.
MAX_ID_BYTES = 1024


@dataclass(frozen=True, slots=True)
class Event:
    """One reward: ``reward`` in [0, 1] for ``item_id`` of decision ``decision_id``."""

    decision_id: str
    item_id: str
    reward: float
    model: str = "default"
    user_id: str | None = None


def _error(cls, index, field, message, code):
    where = "the body" if index is None else f"events[{index}]"
    error = cls(f"{where}{'.' + field if field else ''}: {message}", code=code)
    error.details = {key: value for key, value in (("index", index), ("field", field)) if value is not None}
    return error


class _DuplicateName(dict):
    """What the duplicate scan returns for an object that names a member twice."""


def _pairs(pairs):
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        seen = set()
        duplicate = next(name for name in names if name in seen or seen.add(name))
        marker = _DuplicateName()
        marker.name = duplicate
        return marker
    return dict(pairs)


def _check_nested_names(body, doc):
    """Refuse an event object that names a member twice, with its index.

    orjson keeps the last of repeated names; the standard library's parser
    hands every pair to ``object_pairs_hook``, so it sees them all. It runs
    only on a body orjson has accepted, so both read the same document.
    """
    try:
        scanned = json.loads(body, object_pairs_hook=_pairs)
    except RecursionError:
        return      # nested deeper than any valid body: its types are refused next
    events = scanned.get("events") if type(scanned) is dict else None
    if type(events) is not list:
        return
    for index, event in enumerate(events):
        if type(event) is _DuplicateName:
            shown = event.name if len(event.name) <= 40 else event.name[:40] + "..."
            raise _error(InvalidRequest, index, None, f"the field {shown!r} is given more than once",
                         "duplicate_field")


def _string(event, index, field, required, max_chars=None, max_bytes=None):
    value = event.get(field)
    if value is None:
        if required:
            raise _error(InvalidRequest, index, field, "is required", "missing_field")
        return None
    if type(value) is not str:
        raise _error(MalformedRequest, index, field, f"must be a string, got {type(value).__name__}",
                     "wrong_type")
    if required and not value:
        raise _error(InvalidRequest, index, field, "must not be empty", "invalid_value")
    if max_chars is not None and len(value) > max_chars:
        raise _error(InvalidRequest, index, field, f"has {len(value)} characters; at most {max_chars}",
                     "invalid_value")
    if max_bytes is not None and len(value) * 4 > max_bytes and len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        raise _error(InvalidRequest, index, field, f"is longer than {max_bytes} bytes in UTF-8", "invalid_value")
    return value


def _reward(event, index):
    value = event.get("reward")
    if value is None:
        raise _error(InvalidRequest, index, "reward", "is required", "missing_field")
    if type(value) not in (int, float):         # bool is not a number here
        raise _error(MalformedRequest, index, "reward", f"must be a number, got {type(value).__name__}",
                     "wrong_type")
    reward = float(value)
    if not (math.isfinite(reward) and 0.0 <= reward <= 1.0):
        raise _error(InvalidRequest, index, "reward", f"must be a number in [0, 1], got {value!r}",
                     "invalid_value")
    return reward


def parse_events(doc, models, max_events):
    """The events of a decoded body ``doc``; ``models``: the configured
    models, name -> ``mab.config.ModelConfig``. Raises ``RequestError``
    subclasses whose ``details`` name the bad event's index and field."""
    if type(doc) is not dict:
        raise _error(MalformedRequest, None, None, "must be a JSON object", "wrong_type")
    unknown = doc.keys() - BODY_FIELDS
    if unknown:
        raise _error(InvalidRequest, None, None, f"unknown field(s): {', '.join(sorted(unknown))} (allowed: events)",
                     "unknown_field")
    events = doc.get("events")
    if events is None:
        raise _error(InvalidRequest, None, "events", "is required", "missing_field")
    if type(events) is not list:
        raise _error(MalformedRequest, None, "events", "must be an array of objects", "wrong_type")
    if not events:
        raise _error(InvalidRequest, None, "events", "must not be empty", "invalid_value")
    if len(events) > max_events:
        error = TooManyItems(f"events has {len(events)} entries; the limit is {max_events}", code="too_many_events")
        error.details = {"field": "events"}
        raise error
    parsed = []
    for index, event in enumerate(events):
        if type(event) is not dict:
            raise _error(MalformedRequest, index, None, f"must be an object, got {type(event).__name__}",
                         "wrong_type")
        unknown = event.keys() - EVENT_FIELDS
        if unknown:
            raise _error(InvalidRequest, index, None,
                         f"unknown field(s): {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(EVENT_FIELDS))})",
                         "unknown_field")
        decision_id = _string(event, index, "decision_id", True, max_chars=MAX_DECISION_ID)
        item_id = _string(event, index, "item_id", True, max_bytes=MAX_ID_BYTES)
        reward = _reward(event, index)
        model_name = _string(event, index, "model", False) or "default"
        user_id = _string(event, index, "user_id", False, max_bytes=MAX_ID_BYTES)
        model = models.get(model_name)
        if model is None:
            raise _error(UnknownModel, index, "model",
                         f"no model named {model_name!r} (models: {', '.join(sorted(models))})", "unknown_model")
        if model.entity_id.needs_user and user_id is None:
            raise _error(InvalidRequest, index, "user_id",
                         f"model {model_name!r} needs user_id (its entity ids are {model.entity_id.text!r})",
                         "user_id_required")
        parsed.append(Event(decision_id, item_id, reward, model_name, user_id))
    return parsed


def read_feedback_request(body, models, max_events):
    """The events in a POST /feedback body (bytes): see the module docstring.

    Raises ``MalformedRequest`` (``malformed_json``) for a body that is not
    JSON as /predict reads it, ``InvalidRequest`` (``duplicate_field``) for
    an object naming a member twice, then what ``parse_events`` raises.
    """
    doc = load_json(body)
    if type(doc) is dict:
        _check_nested_names(body, doc)
    return parse_events(doc, models, max_events)
