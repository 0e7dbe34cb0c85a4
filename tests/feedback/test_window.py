"""The node's state and dedup window (mab/feedback/_window.pyx)."""

import mmap

import pytest

from mab.feedback import _window


def test_dedup_window_remembers_between_n_and_2n_keys():
    entries = 4
    _, total = _window.dedup_layout(entries)
    buffer = mmap.mmap(-1, total)
    _window.init_dedup(buffer, entries)
    window = _window.DedupWindow(buffer)
    keys = [(2 * k + 1, k) for k in range(20)]
    for i, key in enumerate(keys[:4]):
        window.insert(*key, 1000 + i)
    assert [window.time_of(*key) for key in keys[:5]] == [1000, 1001, 1002, 1003, -1]
    window.insert(*keys[4], 2000)        # the fifth starts a new generation: the first four stay
    assert all(window.time_of(*key) >= 0 for key in keys[:5])
    for key in keys[5:8]:
        window.insert(*key, 3000)
    window.insert(*keys[8], 4000)        # the ninth: the first generation goes
    assert [window.time_of(*key) >= 0 for key in keys[:9]] == [False] * 4 + [True] * 5
    window.insert(*keys[4], 5000)        # seen again: its time moves
    assert window.time_of(*keys[4]) == 5000
    window.clear()
    assert window.time_of(*keys[8]) == -1
    with pytest.raises(ValueError):
        window.insert(0, 0, 1)


def test_node_state_publishes_progress():
    buffer = mmap.mmap(-1, _window.HEADER_BYTES)
    _window.init_node(buffer, 7, 9, 1)
    state = _window.NodeState(buffer)
    assert state.journal == (7, 9) and state.last_seq == 0 and state.position == (1, 0) and not state.dirty
    state.publish(12, 5, 4096, 123)
    assert (state.last_seq, state.position, state.last_time_us) == (12, (5, 4096), 123)
    with pytest.raises(ValueError):
        _window.DedupWindow(buffer)        # not a dedup window
