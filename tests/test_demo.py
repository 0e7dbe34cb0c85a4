"""mab.demo: deterministic demo data in the embedded store's layout."""

import csv

import pytest

from mab.demo import write_items
from mab.stores.embedded import compile_csv


def read(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_same_arguments_same_bytes_other_seed_other_counts(tmp_path):
    write_items(str(tmp_path / "a.csv"), 2000, seed=3)
    write_items(str(tmp_path / "b.csv"), 2000, seed=3)
    write_items(str(tmp_path / "c.csv"), 2000, seed=4)
    a, c = (tmp_path / "a.csv").read_bytes(), (tmp_path / "c.csv").read_bytes()
    assert a == (tmp_path / "b.csv").read_bytes()
    assert a != c and a.splitlines()[0] == c.splitlines()[0]


def test_layout_ranges_and_the_store_reads_it(tmp_path):
    """Counts are uniform on 0..1000 and 0..100,000: every draw in range, and
    the means within 5 standard errors of the uniform laws' means."""
    n = 20_000
    path = tmp_path / "items.csv"
    write_items(str(path), n)
    rows = read(path)
    assert rows[0] == ["item_id", "successes", "failures"]
    assert [r[0] for r in rows[1:]] == [f"item-{i:06d}" for i in range(n)]
    for column, high in ((1, 1000), (2, 100_000)):
        values = [int(r[column]) for r in rows[1:]]
        assert 0 <= min(values) and max(values) <= high
        sd = ((high + 1) ** 2 - 1) ** 0.5 / 12 ** 0.5         # discrete uniform on 0..high
        assert abs(sum(values) / n - high / 2) < 5 * sd / n ** 0.5
    columns, arrays = compile_csv(str(path))
    assert columns == rows[0] and len(arrays["records"]) == n + 1


def test_no_items_is_a_header_and_no_partial_file_is_left(tmp_path):
    path = tmp_path / "deep" / "er" / "items.csv"
    write_items(str(path), 0)
    assert path.read_text() == "item_id,successes,failures\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["items.csv"]
    with pytest.raises(ValueError):
        write_items(str(tmp_path / "x.csv"), -1)
