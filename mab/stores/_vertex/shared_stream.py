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

import queue
import threading
import time

from mab.stores._vertex._answers import Fetch, deliver, register

# What ends the request iterator that gRPC's consumer thread reads.
_END = object()


class StreamEnded(Exception):
    """The shared stream stopped answering (the message says why); a fetch
    on a new stream may succeed unless ``transient`` is false."""

    def __init__(self, message, transient=True):
        super().__init__(message)
        self.transient = transient


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
    Python call per entry costs as much as reading it. Registering a
    fetch's keys and handing out a message's answers are compiled loops
    (``_answers``), the same whether one fetch or several await a key.
    """

    def __init__(self, open_call, read_answer, decode, failed, as_error, rpc_error, name):
        self._read_answer = read_answer
        self._decode = decode
        self._failed = failed
        self._as_error = as_error
        self._rpc_error = rpc_error
        self._outgoing = queue.SimpleQueue()
        self._waiting = {}            # key -> the Fetch waiting for it, or a list of them
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
        fetch = Fetch(len(keys), features)
        self._features = features
        with self._lock:
            if self.error is not None:
                return {}, self.error
            register(self._waiting, keys, fetch)
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
        deliver(self._waiting, keys, outcomes, entries, features, self._decode)

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
