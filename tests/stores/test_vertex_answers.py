"""mab.stores._vertex._answers, the compiled loops of the streaming reads,
against plain Python that follows the same rules: registering the keys a
fetch awaits, handing a message's answers to every fetch that awaits them,
and reading two counts from PROTO_STRUCT entries."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mab.stores._vertex._answers import Fetch, deliver, register, struct_counts
from tests.vertex import struct_entry

FEATURES = ("successes", "failures")
OTHER_FEATURES = ("successes", "failures", "extra")
FAILED = object()


def decode_again(key, features, entry):
    return ("again", key, features, entry)


def reference(fetches, messages):
    """What each fetch should hold after ``messages``, one key at a time:
    a key's first answer after the fetch registered reaches every fetch that
    awaits it, decoded for that fetch's features."""
    outcomes = [{} for _ in fetches]
    waiting = {}
    for i, (keys, _) in enumerate(fetches):
        for key in keys:
            waiting.setdefault(key, []).append(i)
    for keys, outcome_of, entry_of in messages:
        for key in keys:
            for i in waiting.pop(key, ()):
                features = fetches[i][1]
                entry = entry_of(key)
                outcome = outcome_of(key)
                if features is not FEATURES and entry is not None:
                    outcome = decode_again(key, features, entry)
                outcomes[i][key] = outcome
    return outcomes, set(waiting)


keys_strategy = st.lists(st.sampled_from([f"k{i}" for i in range(12)]), unique=True, max_size=8)


@settings(max_examples=300, deadline=None)
@given(
    fetches=st.lists(st.tuples(keys_strategy, st.sampled_from([FEATURES, OTHER_FEATURES])), min_size=1, max_size=5),
    messages=st.lists(st.tuples(st.lists(st.sampled_from([f"k{i}" for i in range(14)]), max_size=10),
                                st.booleans()), max_size=6),
)
def test_every_fetch_gets_each_of_its_keys_once_decoded_for_its_features(fetches, messages):
    # Keys awaited by several fetches, with the same or other features;
    # keys twice in a message or in two messages; keys nobody awaits; and
    # failed keys (no entry: their outcome holds for every fetch).
    waiting = {}
    made = []
    for keys, features in fetches:
        fetch = Fetch(len(keys), features)
        register(waiting, list(keys), fetch)
        made.append(fetch)
    sent = []
    for keys, failed in messages:
        if failed:
            sent.append((keys, lambda key: FAILED, lambda key: None))
        else:
            sent.append((keys, lambda key: ("decoded", key), lambda key: ("entry", key)))
        _, outcome_of, entry_of = sent[-1]
        deliver(waiting, list(keys), [outcome_of(k) for k in keys], [entry_of(k) for k in keys],
                FEATURES, decode_again)
    want, still_waiting = reference(fetches, sent)
    assert set(waiting) == still_waiting
    for fetch, (keys, _), expected in zip(made, fetches, want):
        assert fetch.outcomes == expected
        assert fetch.left == len(keys) - len(expected)
        assert fetch.done.is_set() == (fetch.left == 0 and len(keys) > 0)


def test_a_key_awaited_by_two_fetches_is_listed_and_given_to_both():
    waiting = {}
    first, second = Fetch(1, FEATURES), Fetch(2, FEATURES)
    register(waiting, ["a"], first)
    register(waiting, ["a", "b"], second)
    assert waiting == {"a": [first, second], "b": second}
    deliver(waiting, ["a"], [(1.0, 2.0)], ["entry"], FEATURES, decode_again)
    assert first.done.is_set() and not second.done.is_set()
    assert first.outcomes == second.outcomes == {"a": (1.0, 2.0)}
    assert waiting == {"b": second}


def test_lists_of_other_lengths_are_refused():
    with pytest.raises(ValueError, match="2 keys, 1 outcomes"):
        deliver({}, ["a", "b"], [1], [None, None], FEATURES, decode_again)


def plainly_counts(values):
    """The reference: both features numbers, finite and >= 0."""
    pair = []
    for name in FEATURES:
        value = values.get(name, "absent")
        if isinstance(value, bool) or not isinstance(value, float) or not (value >= 0 and math.isfinite(value)):
            return None
        pair.append(value)
    return tuple(pair)


value_strategy = st.one_of(
    st.just("absent"), st.none(), st.booleans(), st.sampled_from(["", "3"]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1.0, 5e-324, 1e308]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(value_strategy, value_strategy, st.booleans()), max_size=20))
def test_struct_counts_reads_plain_counts_and_leaves_the_rest_to_the_careful_path(rows):
    entries, expected = [], []
    for i, (successes, failures, extra) in enumerate(rows):
        values = {name: value for name, value in zip(FEATURES, (successes, failures)) if value != "absent"}
        if extra:
            values["other"] = "x"
        entries.append(struct_entry(f"id-{i}", **values))
        expected.append(plainly_counts(values))
    keys, outcomes, listed, careful = struct_counts(iter(entries), *FEATURES)
    assert keys == [f"id-{i}" for i in range(len(rows))]
    assert listed == entries
    assert outcomes == expected
    assert careful == [i for i, outcome in enumerate(expected) if outcome is None]
