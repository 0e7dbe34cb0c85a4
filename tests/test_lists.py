import numpy as np
import pytest

from mab import _lists


class Text(str):
    """A str subclass: JSON never produces one, and the check wants exact str."""


def test_first_non_str():
    assert _lists.first_non_str([]) == -1
    assert _lists.first_non_str(["a", "b"]) == -1
    assert _lists.first_non_str(["a", 1, "c"]) == 1
    assert _lists.first_non_str(["a", "b", None]) == 2
    assert _lists.first_non_str([Text("a")]) == 0


def test_take():
    items = ["a", "b", "c", "d"]
    assert _lists.take(items, np.array([3, 0, 0, 2])) == ["d", "a", "a", "c"]
    assert _lists.take(items, np.array([], dtype=np.int64)) == []
    with pytest.raises(IndexError):
        _lists.take(items, np.array([4]))
    with pytest.raises(IndexError):
        _lists.take(items, np.array([-1]))
    with pytest.raises(ValueError):
        _lists.take(items, np.array([1.0]))


def test_take_keeps_references_alive():
    items = [f"item-{i}" for i in range(1000)]
    taken = _lists.take(items, np.arange(999, -1, -1))
    del items
    assert taken[0] == "item-999" and taken[-1] == "item-0"
