"""The compiled /predict body parser agrees with orjson wherever it answers."""

import json

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mab._wire import FIELDS, IdSpans, parse_predict_body


def expected_fields(body):
    """What the general path reads from a body: the five fields, null as None."""
    doc = orjson.loads(body)
    return tuple(doc.get(name) for name in FIELDS)


def as_plain(fields):
    ids = fields[0]
    return (None if ids is None else list(ids),) + tuple(fields[1:])


@pytest.mark.parametrize(
    "body",
    [
        b'{"item_ids": ["a", "b"]}',
        b' \t\r\n{ "item_ids" :[ "x" , "" ,"y z"] , "user_id":"u-1","top_k":3,"model":"m","seed":0 }\n',
        b'{"seed": 18446744073709551615, "item_ids": []}',
        b'{"top_k": -5, "seed": -0}',
        b'{"item_ids": null, "user_id": null, "top_k": null, "model": null, "seed": null}',
        b"{}",
    ],
)
def test_simple_bodies_are_read_like_orjson(body):
    fields = parse_predict_body(body)
    assert fields is not None
    assert as_plain(fields) == expected_fields(body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"item_ids": ["a\\nb"]}',               # an escape
        b'{"item_ids": ["caf\xc3\xa9"]}',          # non-ASCII
        b'{"item_ids": ["a"], "colour": 1}',       # an unknown field
        b'{"item_ids": ["a"], "item_ids": ["b"]}',  # a repeated field
        b'{"top_k": 1.0}', b'{"top_k": 1e2}', b'{"top_k": 01}',
        b'{"seed": 18446744073709551616}',
        b'{"item_ids": "a"}', b'{"item_ids": [1]}', b'{"user_id": 5}',
        b'[]', b'', b'{', b'{"item_ids": ["a"]} x', b'{"item_ids": ["a",]}', b'{"item_ids": ["a"],}',
        b'{"item_ids": ["a"]', b'{"item_ids" ["a"]}', b'{item_ids: ["a"]}',
    ],
)
def test_anything_else_goes_to_the_general_path(body):
    assert parse_predict_body(body) is None


simple_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters='"\\'), max_size=12)
any_text = st.text(max_size=8)
values = {
    "item_ids": st.one_of(st.none(), st.lists(st.one_of(simple_text, any_text), max_size=6), any_text, st.integers()),
    "user_id": st.one_of(st.none(), simple_text, any_text, st.integers()),
    "top_k": st.one_of(st.none(), st.integers(-10**20, 10**20), st.floats(allow_nan=False, allow_infinity=False), simple_text),
    "model": st.one_of(st.none(), simple_text, st.booleans()),
    "seed": st.one_of(st.none(), st.integers(-10**21, 2**65), st.floats(allow_nan=False, allow_infinity=False)),
    "other": st.integers(),
}
documents = st.dictionaries(st.sampled_from(sorted(values)), st.none(), max_size=6).flatmap(
    lambda keys: st.fixed_dictionaries({k: values[k] for k in keys})
)
spacing = st.sampled_from(["", " ", "\n\t ", "  \r\n"])


@settings(max_examples=400, deadline=None)
@given(documents, spacing, st.booleans())
def test_agrees_with_orjson_on_generated_documents(doc, space, ascii_only):
    body = json.dumps(doc, ensure_ascii=ascii_only, separators=("," + space, ":" + space)).encode()
    body = space.encode() + body + space.encode()
    fields = parse_predict_body(body)
    if fields is not None:
        assert as_plain(fields) == expected_fields(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60))
def test_never_accepts_what_orjson_rejects(body):
    if parse_predict_body(body) is not None:
        orjson.loads(body)     # must not raise


@settings(max_examples=200, deadline=None)
@given(st.lists(simple_text, max_size=30), st.data())
def test_json_array_writes_what_orjson_would(ids, data):
    body = orjson.dumps({"item_ids": ids})
    spans = parse_predict_body(body)[0]
    assert list(spans) == ids and len(spans) == len(ids)
    order = np.array(data.draw(st.lists(st.integers(0, max(len(ids) - 1, 0)), max_size=40)) if ids else [],
                     dtype=np.int64)
    assert spans.json_array(order) == orjson.dumps([ids[i] for i in order])


@settings(max_examples=200, deadline=None)
@given(st.lists(simple_text, max_size=30))
def test_concatenated_is_the_ids_end_to_end(ids):
    spans = parse_predict_body(orjson.dumps({"item_ids": ids}))[0]
    data, lengths = spans.concatenated()
    assert data == "".join(ids).encode() and lengths.dtype == np.int64
    assert lengths.tolist() == [len(i) for i in ids]


def test_id_spans_checks_its_spans():
    with pytest.raises(ValueError, match="outside"):
        IdSpans(b"abc", [1], [3])
    spans = IdSpans(b"abcdef", [0, 3], [2, 3])
    assert list(spans) == ["ab", "def"] and spans[-1] == "def"
    assert spans.concatenated()[0] == b"abdef"
    with pytest.raises(IndexError):
        spans.json_array(np.array([2]))


def test_typical_requests_take_the_fast_path():
    # The generated-document test only checks agreement where the fast parser
    # answers; this one makes sure it does answer for the usual requests.
    rng = np.random.default_rng(3)
    for _ in range(300):
        ids = [f"item-{i:06d}" for i in rng.integers(0, 10**6, rng.integers(1, 50))]
        doc = {"item_ids": ids, "user_id": f"u-{rng.integers(100)}", "top_k": int(rng.integers(1, 20)),
               "seed": int(rng.integers(0, 2**63))}
        body = orjson.dumps(doc)
        fields = parse_predict_body(body)
        assert fields is not None and as_plain(fields) == expected_fields(body)
