"""One long-lived gRPC stream per worker, shared by its request threads.

For the bidirectional ``StreamingFetchFeatureValues`` of Vertex AI Feature
Store (see ``mab.stores.vertex`` for why the store shares one stream rather
than opening one per request). Request threads put their request messages on
a queue that gRPC's request-consumer thread sends from; one reader thread
takes every answer, decodes each entry once, and hands its outcome to every
fetch waiting for that key. A fetch waits on its own event, which the reader
sets when the fetch's last key is answered.

When the stream ends (the service closed it, or it broke), every fetch on
it is woken with the reason; the store opens a new stream for the keys still
outstanding. A fetch that waits past its timeout ends the stream only if
nothing at all arrived on it meanwhile (it is hung); a stream that answers
others is only slow, and the fetch asks again for its keys on it, so that
one slow answer does not make every request in flight start over.
"""

import itertools
import queue
import threading
import time

# What ends the request iterator that gRPC's consumer thread reads.
_END = object()


class StreamEnded(Exception):
    """The shared stream stopped answering (the message says why); a fetch
    on a new stream may succeed unless ``transient`` is false."""

    def __init__(self, message, transient=True):
        super().__init__(message)
        self.transient = transient


class _Fetch:
    """One request's keys, waiting on the shared stream."""

    __slots__ = ("features", "outcomes", "left", "done")

    def __init__(self, n_keys, features):
        self.features = features
        self.outcomes = {}
        self.left = n_keys
        self.done = threading.Event()


class SharedStream:
    """A stream opened by ``open_call(request_iterator)`` (returning gRPC's
    response iterator, which has ``cancel()``). ``read_answer(response,
    features)`` reads one response message and returns ``(keys, outcomes,
    entries, failed_keys)``: three lists side by side of the keys it
    answers, their outcomes decoded for the tuple of feature names
    ``features`` (those of the latest fetch, in practice the only ones) and
    their raw entries, and the keys answered with an error; ``decode(key,
    features, entry)`` gives an entry's outcome (values, MISSING or FAILED)
    for another tuple of features. ``as_error`` turns a ``rpc_error``
    (gRPC's) into the store's error. Thread-safe.

    A whole message is decoded in one pass, outside the lock, before its
    keys are handed out: hundreds of entries arrive per request, and a
    Python call per entry costs as much as reading it. When every key of a
    message was awaited by one fetch alone (the usual case), the handout is
    a few C-level calls rather than a loop over the keys.
    """

    def __init__(self, open_call, read_answer, decode, failed, as_error, rpc_error, name):
        self._read_answer = read_answer
        self._decode = decode
        self._failed = failed
        self._as_error = as_error
        self._rpc_error = rpc_error
        self._outgoing = queue.SimpleQueue()
        self._waiting = {}            # key -> the _Fetch waiting for it, or a list of them
        self._lock = threading.Lock()
        self.error = None             # why the stream ended; None while it serves
        self.answered_at = time.monotonic()   # when the last answer arrived
        self._features = ()           # the features of the latest fetch
        self._call = open_call(iter(self._outgoing.get, _END))
        self._reader = threading.Thread(target=self._read, name=name, daemon=True)
        self._reader.start()

    def fetch(self, keys, features, messages, timeout):
        """Send ``messages`` (asking for ``keys``, distinct) and wait at most
        ``timeout`` seconds for their answers. Returns ``(outcomes, error)``:
        the outcome of each key answered, and why the others were not (the
        stream's error) or None. A fetch that times out ends the stream: a
        stream that answers nobody in time is taken for hung."""
        fetch = _Fetch(len(keys), features)
        self._features = features
        with self._lock:
            if self.error is not None:
                return {}, self.error
            waiting = self._waiting
            # Usually no other fetch waits for these keys: then one C-level
            # update registers them all (a key's value is the fetch waiting
            # for it, or a list of them when several do).
            earlier = {key: waiting[key] for key in waiting.keys() & keys}
            waiting.update(dict.fromkeys(keys, fetch))
            for key, waiters in earlier.items():
                waiting[key] = (waiters if type(waiters) is list else [waiters]) + [fetch]
        sent_at = time.monotonic()
        for message in messages:
            self._outgoing.put(message)
        timed_out = not fetch.done.wait(timeout)
        if timed_out and self.answered_at < sent_at:
            self.end(StreamEnded(f"no answer within {timeout * 1000:.0f} ms: the stream was taken for hung"))
        with self._lock:
            if not fetch.left:
                return fetch.outcomes, None
            waiting = self._waiting
            for key in keys:
                waiters = waiting.get(key)
                if waiters is fetch:
                    del waiting[key]
                elif type(waiters) is list and fetch in waiters:
                    waiters.remove(fetch)
                    if not waiters:
                        del waiting[key]
            return fetch.outcomes, self.error or StreamEnded(
                f"some keys unanswered within {timeout * 1000:.0f} ms on a stream that answers others"
            )

    def _deliver(self, keys, outcomes, entries, failed_keys, features):
        """Hand each answer to the fetches waiting for its key (called with the lock held)."""
        if failed_keys:
            keys = keys + failed_keys
            outcomes = outcomes + [self._failed] * len(failed_keys)
            entries = entries + [None] * len(failed_keys)
        waiters = list(map(self._waiting.pop, keys, itertools.repeat(None)))
        if not waiters:
            return
        fetch = waiters[0]
        # Usually one fetch, with these features, waited for every key here,
        # each once: its outcomes are these.
        if type(fetch) is _Fetch and fetch.features is features and waiters.count(fetch) == len(waiters):
            fetch.outcomes.update(zip(keys, outcomes))
            fetch.left -= len(keys)
            if not fetch.left:
                fetch.done.set()
            return
        for key, outcome, entry, waiting in zip(keys, outcomes, entries, waiters):
            if waiting is None:
                continue   # answered already (another fetch asked for it too, or it came twice), or given up
            for fetch in waiting if type(waiting) is list else (waiting,):
                if fetch.features is features or entry is None:
                    fetch.outcomes[key] = outcome
                else:
                    fetch.outcomes[key] = self._decode(key, fetch.features, entry)
                fetch.left -= 1
                if not fetch.left:
                    fetch.done.set()

    def _read(self):
        try:
            for response in self._call:
                features = self._features
                keys, outcomes, entries, failed_keys = self._read_answer(response, features)
                with self._lock:
                    self.answered_at = time.monotonic()
                    self._deliver(keys, outcomes, entries, failed_keys, features)
            error = StreamEnded("the service ended the stream")
        except self._rpc_error as exc:
            error = self._as_error(exc)
        except Exception as exc:   # a bug in decoding: end the stream rather than hang its fetches
            error = StreamEnded(f"reading the stream failed: {exc!r}")
        self.end(error)

    def end(self, error):
        """End the stream (idempotent); every waiting fetch wakes with ``error``."""
        with self._lock:
            if self.error is not None:
                return
            self.error = error
            waiting, self._waiting = self._waiting, {}
        self._outgoing.put(_END)
        self._call.cancel()
        for waiters in waiting.values():
            for fetch in waiters if type(waiters) is list else (waiters,):
                fetch.done.set()

    def close(self, timeout=1.0):
        self.end(StreamEnded("the store is closing", transient=False))
        if self._reader is not threading.current_thread():
            self._reader.join(timeout)
