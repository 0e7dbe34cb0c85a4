"""The node: dedup shared by processes and rebuilt on restart, the journal
before the answer, overlays equal to the journal's sums after kill -9."""

import collections
import multiprocessing
import os
import random
import signal
import time

import pytest

from mab.errors import Unavailable
from mab.feedback import FeedbackNode, OverlayFull
from mab.feedback.events import Event
from mab.feedback.journal import Journal, encode_line
from mab.stores import create_store

ITEMS = [f"item-{i}" for i in range(1, 6)]


@pytest.fixture
def config(make_config, items_csv):
    def build(**feedback):
        settings = {"dedup_entries": 1000, "overlay_max_entries": 100, "overlay_key_bytes": 4096, **feedback}
        return make_config({"models": {"default": {"online_updates": True}}, "feedback": settings},
                           MAB_DATA=str(items_csv))
    return build


def open_node(config, fresh=False, clock=time.time):
    store = create_store(config.stores["default"], config.cache_dir)
    store.load()
    node = FeedbackNode(config, clock=clock)
    node.open({"default": store}, fresh=fresh)
    return node, store


def journaled(config):
    """Every event in the journal: {(decision_id, item_id): count}, and the sums per item."""
    journal = Journal(config.feedback.journal)
    keys = collections.Counter()
    sums = collections.defaultdict(lambda: [0.0, 0.0])
    for batch, _ in journal.read(journal.start()):
        for record in batch:
            keys[(record.decision_id, record.item_id)] += 1
            sums[record.item_id][0] += record.reward
            sums[record.item_id][1] += 1.0 - record.reward
    journal.close()
    return keys, sums


def overlay_sums(node, store, items):
    import numpy as np

    overlay = node.overlays["default"]
    rows = store.find_rows(list(items))
    s, f = np.zeros(len(items)), np.zeros(len(items))
    overlay.add_to(s, f, rows, list(items), "", "", 0.0)
    return {item: [a, b] for item, a, b in zip(items, s.tolist(), f.tolist())}


def test_duplicates_within_a_batch_and_across_batches(config):
    node, store = open_node(config())
    first = node.submit([Event("d1", "item-1", 1.0), Event("d1", "item-2", 0.5), Event("d1", "item-1", 0.0)])
    assert (first.accepted, first.duplicates, first.first_seq, first.last_seq) == (2, [2], 1, 2)
    again = node.submit([Event("d1", "item-2", 1.0), Event("d2", "item-2", 1.0)])
    assert (again.accepted, again.duplicates) == (1, [0])
    assert overlay_sums(node, store, ["item-1", "item-2"]) == {"item-1": [1.0, 0.0], "item-2": [1.5, 0.5]}
    node.close()


def test_dedup_is_shared_by_two_handles_and_survives_a_restart(config):
    cfg = config()
    one, store_one = open_node(cfg)
    two, store_two = open_node(cfg)
    assert one.submit([Event("d", "item-1", 1.0)]).accepted == 1
    assert two.submit([Event("d", "item-1", 1.0)]).duplicates == [0]
    # What one took in, two's predictions see (its overlay is the same file).
    assert overlay_sums(two, store_two, ["item-1"]) == {"item-1": [1.0, 0.0]}
    one.close()
    two.close()
    # A restart rebuilds everything from the journal: the key is still known.
    three, store_three = open_node(cfg, fresh=True)
    assert three.submit([Event("d", "item-1", 1.0)]).duplicates == [0]
    assert overlay_sums(three, store_three, ["item-1"]) == {"item-1": [1.0, 0.0]}
    three.close()


def test_the_window_by_time(config):
    now = [1000.0]
    node, _ = open_node(config(dedup_seconds=60.0), clock=lambda: now[0])
    assert node.submit([Event("d", "item-1", 1.0)]).accepted == 1
    now[0] += 60.0
    assert node.submit([Event("d", "item-1", 1.0)]).duplicates == [0]
    now[0] += 0.5
    assert node.submit([Event("d", "item-1", 1.0)]).accepted == 1
    node.close()


def test_the_window_by_entries(config):
    node, _ = open_node(config(dedup_entries=3, dedup_seconds=0.0))
    node.submit([Event("key", "item-1", 1.0)])
    for i in range(3):          # the window holds at least 3: key is still there
        node.submit([Event(f"other-{i}", "item-1", 1.0)])
    assert node.submit([Event("key", "item-1", 1.0)]).duplicates == [0]
    for i in range(3, 9):       # and at most 6
        node.submit([Event(f"other-{i}", "item-1", 1.0)])
    assert node.submit([Event("key", "item-1", 1.0)]).accepted == 1
    node.close()


def test_journal_times_never_go_back(config):
    now = [2000.0]
    node, _ = open_node(config(), clock=lambda: now[0])
    node.submit([Event("a", "item-1", 1.0)])
    now[0] = 1000.0             # the wall clock stepped back
    node.submit([Event("b", "item-1", 1.0)])
    node.close()
    journal = Journal(config().feedback.journal)
    times = [r.time for batch, _ in journal.read(journal.start()) for r in batch]
    assert times == [2000.0, 2000.0]


def test_a_full_overlay_refuses_the_batch_before_journaling_it(config):
    node, store = open_node(config(overlay_max_entries=2))
    node.submit([Event("a", "item-1", 1.0), Event("a", "brand-new", 1.0)])
    with pytest.raises(OverlayFull) as caught:
        node.submit([Event("b", "item-1", 1.0), Event("b", "item-2", 1.0)])
    assert isinstance(caught.value, Unavailable) and "mab data compile --events" in caught.value.message
    assert node.state.last_seq == 2
    assert node.submit([Event("c", "item-1", 0.5), Event("c", "brand-new", 0.5)]).accepted == 2
    assert overlay_sums(node, store, ["item-1", "brand-new", "item-2"]) == {
        "item-1": [1.5, 0.5], "brand-new": [1.5, 0.5], "item-2": [0.0, 0.0]}
    node.close()


def test_events_journaled_by_a_writer_that_died_before_applying_them(config):
    """A writer killed after its journal write, before the shared state:
    the next writer (or a prediction) applies its batch, once."""
    cfg = config()
    node, store = open_node(cfg)
    node.submit([Event("a", "item-1", 1.0)])
    with node.journal.lock():
        path = node.journal.path(1)
        with open(path, "ab") as f:
            f.write(b"".join(encode_line(2 + j, int(time.time() * 1e6), e, 2, 2) for j, e in
                             enumerate([Event("b", "item-2", 1.0), Event("b", "item-3", 0.25)])))
    # A prediction catches up: node.state still says 1, the journal 3.
    assert node.state.last_seq == 1
    other, other_store = open_node(cfg)
    assert overlay_sums(other, other_store, ["item-2", "item-3"]) == {"item-2": [1.0, 0.0], "item-3": [0.25, 0.75]}
    assert node.submit([Event("b", "item-2", 1.0), Event("c", "item-2", 1.0)]).duplicates == [0]
    assert overlay_sums(node, store, ["item-1", "item-2", "item-3"]) == {
        "item-1": [1.0, 0.0], "item-2": [2.0, 0.0], "item-3": [0.25, 0.75]}
    node.close()
    other.close()


def test_a_torn_batch_is_cut_and_its_events_never_counted(config):
    cfg = config()
    node, store = open_node(cfg)
    node.submit([Event("a", "item-1", 1.0)])
    torn = b"".join(encode_line(2 + j, 5_000_000, Event("t", "item-2", 1.0), 2, 3) for j in range(2))
    with open(node.journal.path(1), "ab") as f:
        f.write(torn + b'{"seq":4,"ti')
    result = node.submit([Event("t", "item-2", 1.0)])       # the torn batch's key was never taken in
    assert (result.accepted, result.first_seq) == (1, 2)
    assert overlay_sums(node, store, ["item-2"]) == {"item-2": [1.0, 0.0]}
    keys, _ = journaled(cfg)
    assert keys == {("a", "item-1"): 1, ("t", "item-2"): 1}
    node.close()


def _writer(config, prefix, rounds, seed, results):
    rng = random.Random(seed)
    node, _ = open_node(config)
    accepted = 0
    for r in range(rounds):
        # Keys collide across processes (a client retrying on another worker).
        events = [Event(f"d{rng.randrange(200)}", rng.choice(ITEMS), rng.randrange(5) / 4) for _ in range(rng.randint(1, 4))]
        accepted += node.submit(events).accepted
    node.close()
    results.put(accepted)


def test_processes_writing_at_once_take_each_key_once(config):
    cfg = config()
    node, store = open_node(cfg, fresh=True)
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    writers = [context.Process(target=_writer, args=(cfg, f"p{i}", 150, i, results)) for i in range(3)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
        assert writer.exitcode == 0
    accepted = sum(results.get(timeout=10) for _ in writers)
    keys, sums = journaled(cfg)
    assert set(keys.values()) == {1}
    assert sum(keys.values()) == accepted
    assert overlay_sums(node, store, ITEMS) == {item: sums.get(item, [0.0, 0.0]) for item in ITEMS}
    node.close()


def _endless_writer(config, seed):
    rng = random.Random(seed)
    node, _ = open_node(config)
    while True:
        events = [Event(f"d{rng.getrandbits(64):x}", rng.choice(ITEMS + ["new-a", "new-b"]), rng.randrange(5) / 4)
                  for _ in range(rng.randint(1, 20))]
        node.submit(events)


def test_kill_9_mid_write_loses_nothing_journaled_and_doubles_nothing(config):
    """Writers killed at random moments (mid-journal-write, mid-overlay,
    mid-dedup): afterwards every overlay entry equals the sum of the
    journal's events for it, whoever catches up (a live handle, then a
    restart that rebuilds from the journal)."""
    cfg = config(overlay_max_entries=50, fsync="never")
    node, store = open_node(cfg, fresh=True)
    context = multiprocessing.get_context("fork")
    rng = random.Random(11)
    for round_ in range(8):
        writers = [context.Process(target=_endless_writer, args=(cfg, 100 * round_ + k)) for k in range(2)]
        for writer in writers:
            writer.start()
        time.sleep(0.2 + rng.random() * 0.3)
        for writer in writers:
            os.kill(writer.pid, signal.SIGKILL)
        for writer in writers:
            writer.join(30)
    items = ITEMS + ["new-a", "new-b"]
    node.catch_up()
    keys, sums = journaled(cfg)
    assert sum(keys.values()) > 100 and set(keys.values()) == {1}
    expected = {item: sums.get(item, [0.0, 0.0]) for item in items}
    assert overlay_sums(node, store, items) == expected
    node.close()
    restarted, store = open_node(cfg, fresh=True)
    assert overlay_sums(restarted, store, items) == expected
    restarted.close()
