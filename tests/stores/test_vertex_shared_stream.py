"""mab.stores._vertex.shared_stream with a fake gRPC call: what ends a
stream, and what only retries a fetch on it."""

import queue
import threading
import time

from mab.stores._vertex.shared_stream import SharedStream, StreamEnded

FAILED = object()


class FakeCall:
    """A response iterator fed by the test; records the requests sent."""

    def __init__(self, requests):
        self.answers = queue.SimpleQueue()
        self.sent = []
        self.cancelled = threading.Event()
        threading.Thread(target=lambda: self.sent.extend(requests), daemon=True).start()

    def __iter__(self):
        while True:
            answer = self.answers.get()
            if answer is None or self.cancelled.is_set():
                return
            yield answer

    def cancel(self):
        self.cancelled.set()
        self.answers.put(None)


def make_stream():
    calls = []

    def open_call(requests):
        calls.append(FakeCall(requests))
        return calls[-1]

    def read_answer(response, features):
        # An answer is a list of keys, or (keys, failed keys).
        keys, failed = response if type(response) is tuple else (response, [])
        return list(keys), [(features, key) for key in keys], list(keys), list(failed)

    stream = SharedStream(open_call, read_answer, lambda key, features, entry: (features, entry), FAILED,
                          lambda exc: exc, RuntimeError, "test-stream")
    return stream, calls[0]


def test_answers_reach_every_fetch_waiting_for_the_key():
    stream, call = make_stream()
    results = {}

    def fetch(name, keys, features):
        results[name] = stream.fetch(keys, features, [], timeout=5)

    threads = [threading.Thread(target=fetch, args=("a", ["k1", "k2"], "f")),
               threading.Thread(target=fetch, args=("b", ["k2"], "g"))]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    call.answers.put(["k2"])
    call.answers.put(["k1", "k3"])
    for thread in threads:
        thread.join(5)
    assert results["a"] == ({"k2": ("f", "k2"), "k1": ("f", "k1")}, None)
    assert results["b"] == ({"k2": ("g", "k2")}, None), "decoded for each fetch's features"
    stream.close()


def test_a_timeout_while_others_are_answered_keeps_the_stream():
    stream, call = make_stream()
    stop = threading.Event()

    def others():
        while not stop.is_set():
            call.answers.put(["other"])
            time.sleep(0.005)

    feeder = threading.Thread(target=others)
    feeder.start()
    try:
        time.sleep(0.02)
        outcomes, error = stream.fetch(["slow"], "f", [], timeout=0.1)
    finally:
        stop.set()
        feeder.join(5)
    assert outcomes == {} and isinstance(error, StreamEnded) and error.transient
    assert stream.error is None, "a stream that answers others is slow, not hung"
    assert not stream._waiting.get("slow"), "the fetch no longer waits for its key"
    stream.close()


def test_a_timeout_with_nothing_arriving_ends_the_stream():
    stream, call = make_stream()
    outcomes, error = stream.fetch(["k"], "f", [], timeout=0.05)
    assert outcomes == {} and "hung" in str(error) and error.transient
    assert stream.error is error and call.cancelled.is_set()
    assert stream.fetch(["k"], "f", [], timeout=1) == ({}, error), "an ended stream answers nothing"


def test_a_broken_stream_wakes_every_fetch_with_its_error():
    stream, call = make_stream()
    results = []
    threads = [threading.Thread(target=lambda: results.append(stream.fetch(["k"], "f", [], timeout=5)))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    call.answers.put(RuntimeError)   # not iterable as keys: reading fails
    for thread in threads:
        thread.join(5)
    assert len(results) == 3
    assert all(outcomes == {} and isinstance(error, StreamEnded) for outcomes, error in results)
    assert "reading the stream failed" in str(stream.error)


def test_close_is_final_and_not_transient():
    stream, call = make_stream()
    stream.close()
    outcomes, error = stream.fetch(["k"], "f", [], timeout=1)
    assert outcomes == {} and error.transient is False


def test_a_message_for_one_fetch_hands_out_each_key_once():
    # The common case (every key of a message awaited by one fetch alone)
    # and its exceptions: a key answered twice in one message, failed keys,
    # and keys nobody waits for (anymore).
    stream, call = make_stream()
    results = {}

    def fetch(name, keys, features):
        results[name] = stream.fetch(keys, features, [], timeout=5)

    thread = threading.Thread(target=fetch, args=("a", ["k1", "k2", "k3", "k4", "k5"], "f"))
    thread.start()
    time.sleep(0.1)
    call.answers.put(["k1", "k2"])                   # one fetch, each key once
    call.answers.put(["k3", "k3", "unknown"])         # twice, and one nobody asked for
    call.answers.put((["k4"], ["k5"]))                # k5 answered with an error
    thread.join(5)
    assert results["a"] == ({"k1": ("f", "k1"), "k2": ("f", "k2"), "k3": ("f", "k3"), "k4": ("f", "k4"),
                             "k5": FAILED}, None)
    assert stream._waiting == {}
    stream.close()
