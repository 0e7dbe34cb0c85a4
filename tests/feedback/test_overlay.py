"""The overlay : entries of rows and new keys, decay, crash recovery, sharing."""

import math
import mmap
import multiprocessing
import time

import numpy as np
import pytest

from mab.feedback import _overlay

# Header words of an overlay , for simulating a writer killed mid-update.
H_REDO_VALID, H_REDO_ENTRY, H_REDO_S, H_REDO_F, H_REDO_T, H_REDO_SEQ = 14, 15, 16, 17, 18, 19


def new_overlay(n_rows=10, max_entries=16, key_bytes=256, half_life=0.0, base_seq=0):
    layout = _overlay.overlay_layout(n_rows, max_entries, key_bytes)
    buffer = mmap.mmap(-1, layout["total"])
    _overlay.init_overlay(buffer, n_rows, max_entries, key_bytes, half_life, base_seq, 1, 0)
    return buffer, _overlay.Overlay(buffer)


def add(overlay, rows, ids, now=0.0, prefix=b"", suffix=b""):
    s, f = np.zeros(len(rows)), np.zeros(len(rows))
    assert overlay.add(s, f, np.asarray(rows, dtype=np.int64), ids, prefix, suffix, now) == -1
    return s, f


def test_a_fresh_overlay_adds_nothing():
    _, overlay = new_overlay()
    s, f = add(overlay, [0, 3, 10], ["a", "b", "new"])
    assert s.tolist() == [0, 0, 0] and f.tolist() == [0, 0, 0]
    assert overlay.applied_seq == 0


def test_rewards_of_rows_and_of_new_keys():
    _, overlay = new_overlay()
    row3 = overlay.entry_for_row(3)
    new = overlay.entry_for_key(b"u:new")
    assert overlay.entry_for_row(3) == row3 and overlay.entry_for_key(b"u:new") == new != row3
    overlay.apply(row3, 1.0, 100.0, 1, 1, 0)
    overlay.apply(row3, 0.25, 101.0, 2, 1, 0)
    overlay.apply(new, 0.5, 102.0, 3, 1, 500)
    assert overlay.applied_seq == 3 and overlay.position == (1, 500)
    # Row 10 is "not in the snapshot" (n_rows): looked up by prefix + id + suffix.
    s, f = add(overlay, [3, 10, 10, 4], ["x", "new", "other", "y"], prefix=b"u:")
    assert s.tolist() == [1.25, 0.5, 0, 0]
    assert f.tolist() == [0.75, 0.5, 0, 0]
    assert overlay.counters() == {"entries": 2, "new_keys": 1, "updates": 3, "key_bytes": 5, "overflowed": 0}


def test_ids_from_a_request_body_are_looked_up_in_place():
    from mab._wire import IdSpans

    _, overlay = new_overlay()
    overlay.apply(overlay.entry_for_key(b"brand-new"), 1.0, 0.0, 1, 1, 0)
    body = b'["brand-new", "other"]'
    spans = IdSpans(body, [2, 15], [9, 5])
    s, _ = add(overlay, [10, 10], spans)
    assert s.tolist() == [1.0, 0.0]


def test_decay_is_exact_at_whole_half_lives():
    """An event at te counts reward * 2**(-(now - te) / h) at now."""
    h = 100.0
    _, overlay = new_overlay(half_life=h)
    entry = overlay.entry_for_row(0)
    overlay.apply(entry, 1.0, 1000.0, 1, 1, 0)          # s = 1 at 1000
    overlay.apply(entry, 0.5, 1200.0, 2, 1, 0)          # s = 1 * 2**-2 + 0.5, f = 0 + 0.5, at 1200
    assert overlay.values(entry) == (0.75, 0.5, 1200.0)
    # A time before the entry's (a clock behind another worker's) counts as no age.
    for now, factor in ((1200.0, 1.0), (1300.0, 0.5), (1500.0, 0.125), (1100.0, 1.0)):
        s, f = add(overlay, [0], ["a"], now=now)
        assert (s[0], f[0]) == (0.75 * factor, 0.5 * factor), now
    s, _ = add(overlay, [0], ["a"], now=1250.0)
    assert s[0] == pytest.approx(0.75 * 2**-0.5, rel=1e-15)


def test_an_event_older_than_the_entry_is_decayed_to_it():
    _, overlay = new_overlay(half_life=10.0)
    entry = overlay.entry_for_row(1)
    overlay.apply(entry, 1.0, 50.0, 1, 1, 0)
    overlay.apply(entry, 1.0, 30.0, 2, 1, 0)            # 20 s older: counts 2**-2
    assert overlay.values(entry) == (1.25, 0.0, 50.0)


def test_events_at_or_below_applied_seq_are_refused():
    _, overlay = new_overlay(base_seq=5)
    entry = overlay.entry_for_row(0)
    with pytest.raises(ValueError):
        overlay.apply(entry, 1.0, 0.0, 5, 1, 0)
    overlay.apply(entry, 1.0, 0.0, 6, 1, 0)
    with pytest.raises(ValueError):
        overlay.advance(5, 1, 0)


def test_full_overlay_says_so():
    _, overlay = new_overlay(max_entries=2, key_bytes=8)
    assert overlay.entry_for_row(0) >= 0
    assert overlay.entry_for_key(b"123456789") == -1      # longer than the key bytes
    assert overlay.entry_for_key(b"1234") >= 0
    assert overlay.entry_for_row(1) == -1
    assert overlay.entry_for_key(b"abcd") == -1


def test_a_writer_killed_mid_update_is_completed_by_the_next():
    """The redo record makes an entry's update all or nothing: a reader
    that finds the entry held reports where, and recover() finishes it."""
    buffer, overlay = new_overlay()
    entry = overlay.entry_for_row(2)
    overlay.apply(entry, 1.0, 0.0, 1, 1, 0)
    words = np.frombuffer(buffer, dtype=np.uint64)
    doubles = np.frombuffer(buffer, dtype=np.float64)
    entries = _overlay.overlay_layout(10, 16, 256)["entries"] // 8
    # A writer of event 2 (reward 0.5) wrote its redo record, took the
    # entry's lock and wrote s, then was killed.
    words[H_REDO_ENTRY] = entry
    doubles[H_REDO_S], doubles[H_REDO_F], doubles[H_REDO_T] = 1.5, 0.5, 0.0
    words[H_REDO_SEQ] = 2
    words[H_REDO_VALID] = 1
    words[entries + 4 * entry] += 1            # the entry's sequence lock: odd
    doubles[entries + 4 * entry + 1] = 1.5
    s, f = np.zeros(2), np.zeros(2)
    rows = np.array([0, 2], dtype=np.int64)
    assert overlay.add(s, f, rows, ["a", "b"], b"", b"", 0.0) == 1
    assert s.tolist() == [0.0, 0.0]
    assert overlay.recover() is True
    assert overlay.add(s, f, rows, ["a", "b"], b"", b"", 0.0, 1) == -1
    assert (s.tolist(), f.tolist()) == ([0.0, 1.5], [0.0, 0.5])
    assert overlay.applied_seq == 2
    assert overlay.recover() is False


def _reader(path, wanted, results):
    with open(path, "r+b") as f:
        buffer = mmap.mmap(f.fileno(), 0)
    overlay = _overlay.Overlay(buffer)
    torn = 0
    seen = []
    rows = np.array([0], dtype=np.int64)
    deadline = time.monotonic() + 120
    while len(seen) < wanted and time.monotonic() < deadline:
        s, f = np.zeros(1), np.zeros(1)
        overlay.add(s, f, rows, ["a"], b"", b"", 0.0)
        # The writer keeps s == f, both a multiple of 0.5.
        if s[0] != f[0] or not float(2 * s[0]).is_integer():
            torn += 1
        if not seen or seen[-1] != s[0]:
            seen.append(s[0])
    results.put((torn, len(seen), seen == sorted(seen)))


def test_a_reader_in_another_process_sees_the_updates_live_and_whole(tmp_path):
    """The mapping is shared: another process sees each update as it is
    made, in order, never half of one. (The sequence lock itself is held to
    its protocol by the test of a writer killed mid-update: a race this
    short is rarely caught in the act.)"""
    path = tmp_path / "overlay.bin"
    layout = _overlay.overlay_layout(10, 16, 256)
    with open(path, "wb") as f:
        f.truncate(layout["total"])
    with open(path, "r+b") as f:
        buffer = mmap.mmap(f.fileno(), 0)
    _overlay.init_overlay(buffer, 10, 16, 256, 0.0, 0, 1, 0)
    overlay = _overlay.Overlay(buffer)
    entry = overlay.entry_for_row(0)
    overlay.apply(entry, 0.5, 0.0, 1, 1, 0)
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    reader = context.Process(target=_reader, args=(str(path), 50, results))
    reader.start()
    seq = 2
    while reader.is_alive():            # until the reader has seen 50 values (or its deadline)
        overlay.apply(entry, 0.5, 0.0, seq, 1, 0)
        seq += 1
        if seq % 64 == 0:
            time.sleep(0)
    reader.join(30)
    torn, distinct, ordered = results.get(timeout=10)
    assert (torn, distinct, ordered) == (0, 50, True)
    assert overlay.values(entry)[0] == (seq - 1) * 0.5


def test_layouts_are_page_aligned_and_sized():
    layout = _overlay.overlay_layout(1_000_003, 1000, 5000)
    assert layout["slots"] == 2048
    offsets = [layout[k] for k in ("bitmap", "row_slots", "entries", "key_slots", "key_records", "blob", "total")]
    assert offsets == sorted(offsets) and all(o % 4096 == 0 for o in offsets)
    assert layout["row_slots"] - layout["bitmap"] >= math.ceil(1_000_003 / 8)
