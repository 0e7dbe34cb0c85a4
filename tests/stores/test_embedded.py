import mmap
import multiprocessing
import os
import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mab.errors import ConfigError, DataError
from mab.stores import _table, csvfile, embedded
from mab.stores.embedded import CACHE_FORMAT, Settings, Store, cache_path, compile_csv, prepare


def open_store(path, cache_dir):
    store = Store(Settings(name="test", path=str(path)), cache_dir=str(cache_dir))
    store.load()
    return store


def write(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_fetch_in_request_order_with_missing(items_csv, tmp_path):
    store = open_store(items_csv, tmp_path / "cache")
    batch = store.fetch(["item-2", "nope", "item-1", "item-2"], "", "", ("successes", "failures"))
    np.testing.assert_array_equal(batch.columns[0], [10, 0, 90, 10])
    np.testing.assert_array_equal(batch.columns[1], [90, 0, 10, 90])
    assert batch.missing == 1 and batch.failed == 0
    assert store.describe()["items"] == 5
    assert store.describe()["features"] == ["successes", "failures"]


def test_feature_order_is_the_callers(items_csv, tmp_path):
    store = open_store(items_csv, tmp_path / "cache")
    batch = store.fetch(["item-1"], "", "", ("failures", "successes"))
    assert [c[0] for c in batch.columns] == [10, 90]


def test_prefix_and_suffix(user_items_csv, tmp_path):
    store = open_store(user_items_csv, tmp_path / "cache")
    batch = store.fetch(["item-1", "item-2", "item-3"], "u-1:", "", ("clicks", "skips"))
    np.testing.assert_array_equal(batch.columns[0], [0, 1000, 0])
    assert batch.missing == 1


def test_columns_are_fresh_arrays(items_csv, tmp_path):
    store = open_store(items_csv, tmp_path / "cache")
    first = store.fetch(["item-1"], "", "", ("successes", "failures"))
    first.columns[0][:] = -1.0       # the model adds its priors in place
    again = store.fetch(["item-1"], "", "", ("successes", "failures"))
    assert again.columns[0][0] == 90


def test_check_features(items_csv, tmp_path):
    store = open_store(items_csv, tmp_path / "cache")
    store.check_features(("successes", "failures"))
    with pytest.raises(ConfigError, match="no feature.*'clicks'"):
        store.check_features(("clicks", "failures"))


def test_data_errors_name_the_file_and_the_line(tmp_path):
    # The rules themselves are tested in tests/stores/test_csv.py.
    path = write(tmp_path, "id,s,f\na,1,2\nb,-3,4\n")
    with pytest.raises(DataError, match=r"line 3, column 's': '-3' is not a count") as raised:
        open_store(path, tmp_path / "cache")
    assert str(raised.value).startswith(f"{path}: ")


def test_header_only(tmp_path):
    store = open_store(write(tmp_path, "id,s,f\n"), tmp_path / "cache")
    batch = store.fetch(["a"], "", "", ("s", "f"))
    assert batch.missing == 1 and batch.columns[0][0] == 0
    assert store.describe()["items"] == 0


def test_unicode_quoted_and_long_ids(tmp_path):
    store = open_store(write(tmp_path, 'id,s,f\nçafé-☕,1,2\n"x,""y""",3,4\n'), tmp_path / "cache")
    batch = store.fetch(["çafé-☕", "x" * 10_000, 'x,"y"'], "", "", ("s", "f"))
    np.testing.assert_array_equal(batch.columns[0], [1, 0, 3])
    assert batch.missing == 1


def test_a_file_that_changes_while_it_is_read_is_refused(tmp_path):
    path = write(tmp_path, "id,s,f\na,1,2\n")
    key = os.stat(path)
    write(tmp_path, "id,s,f\na,1,2\nb,3,4\n")      # a writer appended after the key was taken
    with pytest.raises(DataError, match="the file changed while it was read"):
        compile_csv(str(path), expected=key)
    assert compile_csv(str(path), expected=os.stat(path))[1]["records"].shape[0] == 3


def test_the_reader_version_is_part_of_the_cache_key(tmp_path, monkeypatch):
    # A copy compiled before the reader became strict (say, 0 rows from a
    # CR-only file) must never be served again.
    path = str(write(tmp_path, "id,s\na,1\n"))
    before = cache_path(path, str(tmp_path))
    monkeypatch.setattr(embedded, "CACHE_FORMAT", CACHE_FORMAT + 1)
    assert cache_path(path, str(tmp_path)) != before


@pytest.fixture
def unpin():
    yield
    embedded.pin({})


def test_a_pinned_copy_is_served_after_the_file_changes(tmp_path, unpin):
    path = write(tmp_path, "id,s,f\na,1,2\n")
    target, _ = prepare(str(path), str(tmp_path / "cache"))
    embedded.pin({str(path): target})
    write(tmp_path, "id,s,f\na,1,2\nb,3,4\n")
    store = open_store(path, tmp_path / "cache")
    assert store.compiled_path == target and store.describe()["items"] == 1
    embedded.pin({})
    store = open_store(path, tmp_path / "cache")
    assert store.compiled_path != target and store.describe()["items"] == 2


def test_a_pinned_copy_is_never_removed_as_stale(tmp_path, unpin):
    path = write(tmp_path, "id,s,f\na,1,2\n")
    cache = str(tmp_path / "cache")
    first, _ = prepare(str(path), cache)
    embedded.pin({str(path): first})
    os.utime(path, ns=(1, 1))
    second, built = prepare(str(path), cache)
    assert built and os.path.isdir(first), "pinned: kept"
    embedded.pin({str(path): second})
    os.utime(path, ns=(2, 2))
    third, built = prepare(str(path), cache)
    assert built and not os.path.exists(first), "no longer pinned: removed"
    assert os.path.isdir(second)


def test_a_pinned_copy_that_vanished(tmp_path, unpin):
    path = write(tmp_path, "id,s,f\na,1,2\n")
    target, _ = prepare(str(path), str(tmp_path / "cache"))
    embedded.pin({str(path): target})
    for name in os.listdir(target):
        os.remove(os.path.join(target, name))
    with pytest.raises(DataError, match="its compiled copy .* cannot be read"):
        open_store(path, tmp_path / "cache")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="No such file"):
        open_store(tmp_path / "absent.csv", tmp_path / "cache")


def test_cache_is_built_once_and_follows_the_file(items_csv, tmp_path):
    cache = tmp_path / "cache"
    first, built = prepare(str(items_csv), str(cache))
    assert built
    assert prepare(str(items_csv), str(cache)) == (first, False)
    os.utime(items_csv, ns=(1, 1))          # the file changed (mtime)
    second, built = prepare(str(items_csv), str(cache))
    assert built and second != first
    assert not os.path.exists(first), "the stale copy is removed"
    assert sorted(os.listdir(cache)) == sorted([os.path.basename(second), os.path.basename(second) + ".lock",
                                                os.path.basename(first) + ".lock"])


def _prepare_in_child(args):
    path, cache = args
    return prepare(path, cache)


def test_concurrent_processes_build_once(items_csv, tmp_path):
    cache = str(tmp_path / "cache")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.map(_prepare_in_child, [(str(items_csv), cache)] * 4)
    assert len({path for path, _ in results}) == 1
    assert sum(built for _, built in results) == 1
    assert not [e for e in os.listdir(cache) if e.startswith(".building-")]


def test_arrays_are_read_only_file_maps(items_csv, tmp_path):
    store = open_store(items_csv, tmp_path / "cache")
    assert set(store._arrays) == {"blob", "records", "slots"}
    for name, array in store._arrays.items():
        assert not array.flags.writeable, name
        base = array
        while getattr(base, "base", None) is not None and not isinstance(base, mmap.mmap):
            base = base.base
        assert isinstance(base, mmap.mmap), f"{name} is a view of a file mapping, not a copy"


def test_non_string_ids_are_rejected(items_csv, tmp_path):
    store = open_store(items_csv, tmp_path / "cache")
    with pytest.raises(TypeError, match="item 1 is int"):
        store.fetch(["item-1", 7], "", "", ("successes", "failures"))


# Ids the reader accepts (tests/stores/test_csv.py tests the others): no
# control characters, no byte order mark, no whitespace at either end.
ids = st.text(
    alphabet=st.characters(blacklist_characters=",\"\ufeff", blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40,
).filter(lambda s: s.strip() == s)


@settings(max_examples=60, deadline=None)
@given(stored=st.lists(ids, min_size=0, max_size=300, unique=True), probes=st.lists(ids, max_size=100))
def test_index_agrees_with_a_dict(stored, probes):
    stored = list({unicodedata.normalize("NFC", s): s for s in stored}.values())     # no two in one form
    body = "".join(f"{s},{i},{2 * i}\n" for i, s in enumerate(stored))
    data = ("id,s,f\n" + body).encode()
    columns, blob, offsets, values, lines, _ = csvfile.read_csv(data)
    index = _table.IdIndex(_table.build_slots(blob, offsets, lines), blob, _table.build_records(offsets, values))
    expected = {s: i for i, s in enumerate(stored)}
    queries = probes + stored
    rows, missing = index.find(queries)
    want = [expected.get(q, len(stored)) for q in queries]
    assert rows.tolist() == want
    assert missing == sum(q not in expected for q in queries)
    features = index.gather(rows, (1, 0))
    np.testing.assert_array_equal(features[0], [2 * r if r < len(stored) else 0 for r in want])
    np.testing.assert_array_equal(features[1], [r if r < len(stored) else 0 for r in want])


def test_slot_count_keeps_load_factor_below_two_thirds():
    for n in (0, 1, 5, 100, 12345, 10**6):
        size = _table.slot_count(n)
        assert size & (size - 1) == 0 and size >= 1.5 * n


def test_gather_matches_numpy_indexing():
    rng = np.random.default_rng(0)
    values = rng.random((3, 1001))
    values[:, -1] = 0.0
    offsets = np.arange(1001, dtype=np.int64)       # 1,000 one-byte ids
    blob = np.frombuffer(bytes(range(256)) * 4, dtype=np.uint8)[:1000].copy()
    records = _table.build_records(offsets, values)
    index = _table.IdIndex(np.zeros(8, dtype=np.uint64), blob, records)
    rows = rng.integers(0, 1001, 5000)
    np.testing.assert_array_equal(index.gather(rows, (2, 0)), values[[2, 0]][:, rows])
    with pytest.raises(IndexError):
        index.gather(np.array([1001]), (0,))
    with pytest.raises(IndexError):
        index.gather(rows, (3,))
    with pytest.raises(ValueError):
        index.gather(rows.astype(np.int32), (0,))


def test_records_layout():
    records = _table.build_records(np.array([0, 3, 5]), np.array([[1.0, 2.0, 0.0], [3.0, 4.0, 0.0]]))
    assert records.dtype.itemsize == 32, "two features: one record per half cache line"
    assert records["offset"].tolist() == [0, 3, 0] and records["length"].tolist() == [3, 2, 0]
    assert records["features"].tolist() == [[1.0, 3.0], [2.0, 4.0], [0.0, 0.0]]
