"""A streaming read's answers, read and handed out: the per-key loops of
``mab.stores.vertex`` and ``mab.stores._vertex.shared_stream``, compiled.

Every key of every request passes through three loops: the request's keys
are registered as awaited, each answer entry is decoded, and each answer is
handed to the fetches waiting for its key. With 400 keys a request and 16
requests in flight on one core, the bytecode of those loops (not the upb
field reads and dict operations they make, which stay the same) cost a
tenth of the server's CPU per request, and the handout fell back to a loop
of Python bytecode per key whenever another request in flight awaited one
of a message's keys too, which uniform ids over 100,000 items make common.
Compiled, each loop is the same Python-object operations without the
interpreter, whatever the mix of waiters (docs/benchmarks.md, "Fourth
pass").

Everything here runs with the GIL held and operates on Python objects: the
upb messages of ``google-cloud-aiplatform``'s own classes (nothing is
decoded by hand), dicts and lists.
"""

import threading

from libc.math cimport INFINITY
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject


cdef class Fetch:
    """One request's keys, waiting on a shared stream.

    ``features``: the tuple of feature names its outcomes are decoded for;
    ``outcomes``: key (str) -> outcome, filled as answers arrive; ``left``:
    how many of its keys are still unanswered; ``done``: a
    ``threading.Event``, set when ``left`` reaches 0 (or when the stream
    ends).
    """

    cdef readonly object features
    cdef readonly dict outcomes
    cdef public Py_ssize_t left
    cdef readonly object done

    def __init__(self, Py_ssize_t n_keys, features):
        self.features = features
        self.outcomes = {}
        self.left = n_keys
        self.done = threading.Event()


def register(dict waiting, list keys, Fetch fetch):
    """Record in ``waiting`` (key -> the Fetch waiting for it, or a list of
    them when several do) that ``fetch`` waits for each of ``keys``
    (distinct str). Call with the stream's lock held."""
    cdef object key
    cdef PyObject *earlier
    for key in keys:
        earlier = PyDict_GetItem(waiting, key)
        if earlier is NULL:
            waiting[key] = fetch
        elif type(<object>earlier) is list:
            (<list>earlier).append(fetch)
        else:
            waiting[key] = [<object>earlier, fetch]


def deliver(dict waiting, list keys, list outcomes, list entries, features, decode):
    """Hand each answer to the fetches waiting for its key, and wake each
    fetch whose last key it was. Call with the stream's lock held.

    ``keys[i]`` (str) was answered with ``outcomes[i]``, decoded for the
    tuple ``features`` from the raw entry ``entries[i]`` (None for a key
    that failed: its outcome holds for every fetch). A fetch that asked for
    other features gets ``decode(key, its features, entries[i])``. A key
    nobody waits for (answered already, or given up) is dropped; so is a
    key's second answer. Raises ValueError when the three lists differ in
    length.
    """
    cdef Py_ssize_t i, n = len(keys)
    cdef object waiters, fetch
    if len(outcomes) != n or len(entries) != n:
        raise ValueError(f"{n} keys, {len(outcomes)} outcomes and {len(entries)} entries")
    for i in range(n):
        key = keys[i]
        waiters = waiting.pop(key, None)
        if waiters is None:
            continue
        if type(waiters) is list:
            for fetch in <list>waiters:
                _give(<Fetch?>fetch, key, outcomes[i], entries[i], features, decode)
        else:
            _give(<Fetch?>waiters, key, outcomes[i], entries[i], features, decode)


cdef int _give(Fetch fetch, object key, object outcome, object entry, object features, object decode) except -1:
    if fetch.features is not features and entry is not None:
        outcome = decode(key, fetch.features, entry)
    fetch.outcomes[key] = outcome
    fetch.left -= 1
    if fetch.left == 0:
        fetch.done.set()
    return 0


def struct_counts(entries, str first, str second):
    """Two counts from each raw ``FetchFeatureValuesResponse`` of
    ``entries`` (an iterable of them) read in PROTO_STRUCT format.

    Returns ``(keys, outcomes, entries, careful)``: lists side by side of
    each entry's ``data_key.key``, its outcome ``(first, second)`` (two
    floats) or None, and the entry; and the positions whose outcome is None
    because the entry is not plainly two counts (a feature absent, a value
    of another kind, null, negative, NaN or infinite): the caller decides
    those, with its messages.

    A positive ``number_value`` can only be a number (``kind`` is a oneof,
    and any other kind reads as 0.0), so only a zero needs ``WhichOneof``.
    """
    cdef list keys = [], outcomes = [], careful = [], listed = list(entries)
    cdef Py_ssize_t i
    cdef double x, y
    cdef object entry, fields, a, b
    for i in range(len(listed)):
        entry = listed[i]
        keys.append(entry.data_key.key)
        fields = entry.proto_struct.fields
        if first in fields and second in fields:
            a = fields[first]
            b = fields[second]
            x = a.number_value
            y = b.number_value
            if ((0 < x < INFINITY or x == 0 and a.WhichOneof("kind") == "number_value")
                    and (0 < y < INFINITY or y == 0 and b.WhichOneof("kind") == "number_value")):
                outcomes.append((x, y))
                continue
        outcomes.append(None)
        careful.append(i)
    return keys, outcomes, listed, careful
