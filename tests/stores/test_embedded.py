import mmap
import multiprocessing
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mab.errors import ConfigError, DataError
from mab.stores import _table
from mab.stores.embedded import Settings, Store, prepare


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


def test_tolerates_crlf_blank_lines_bom_and_no_final_newline(tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbfid,s,f\r\na,1,2\r\n\r\n\nb,3.5,4e2")
    store = open_store(path, tmp_path / "cache")
    batch = store.fetch(["b", "a"], "", "", ("s", "f"))
    np.testing.assert_array_equal(batch.columns[0], [3.5, 1])
    np.testing.assert_array_equal(batch.columns[1], [400, 2])


def test_empty_body(tmp_path):
    store = open_store(write(tmp_path, "id,s,f\n"), tmp_path / "cache")
    batch = store.fetch(["a"], "", "", ("s", "f"))
    assert batch.missing == 1 and batch.columns[0][0] == 0


def test_unicode_and_long_ids(tmp_path):
    store = open_store(write(tmp_path, "id,s,f\nçafé-☕,1,2\nx,3,4\n"), tmp_path / "cache")
    batch = store.fetch(["çafé-☕", "x" * 10_000, "x"], "", "", ("s", "f"))
    np.testing.assert_array_equal(batch.columns[0], [1, 0, 3])
    assert batch.missing == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("a,1,2\nb,-3,4\n", r"line 3, column 's': -3\.0 is not a count"),
        ("a,1,nan\n", r"line 2, column 'f': nan is not a count"),
        ("a,inf,1\n", r"line 2, column 's': inf is not a count"),
        ("a,1,2\nb,x,4\n", r"line 3, column 's': 'x' is not a number"),
        ("a,1,2 \n", r"line 2, column 'f': '2 ' is not a number"),
        ("a,1\n", r"line 2: expected 3 fields, found 2"),
        ("a,1,2,3\n", r"line 2: expected 3 fields, found more"),
        ("a\n", r"line 2: expected 3 fields, found 1"),
        (",1,2\n", r"line 2: empty 'id'"),
        ("a,,2\n", r"line 2, column 's': empty value"),
        ('"a,b",1,2\n', r"line 2: quoted fields are not supported"),
        ("a,1,2\n\nb,1,2\na,5,5\n", r"line 5: duplicate id 'a' \(first on line 2\)"),
    ],
)
def test_data_errors_name_the_row(tmp_path, body, message):
    path = write(tmp_path, "id,s,f\n" + body)
    with pytest.raises(DataError, match=message) as raised:
        open_store(path, tmp_path / "cache")
    assert str(path) in str(raised.value)


@pytest.mark.parametrize("header", ["id\n", "id,s,s\n", "id,,f\n", ""])
def test_bad_headers(tmp_path, header):
    with pytest.raises(DataError, match="header"):
        open_store(write(tmp_path, header + "a,1,2\n" if header else ""), tmp_path / "cache")


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


ids = st.text(alphabet=st.characters(blacklist_characters=",\r\n\"", blacklist_categories=("Cs",)), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(stored=st.lists(ids, min_size=0, max_size=300, unique=True), probes=st.lists(ids, max_size=100))
def test_index_agrees_with_a_dict(stored, probes):
    stored = [s for s in stored if s.strip() == s and not s.startswith("\ufeff")]
    body = "".join(f"{s},{i},{2 * i}\n" for i, s in enumerate(stored))
    data = ("id,s,f\n" + body).encode()
    blob, offsets, values, lines = _table.parse_csv(data, 7, ["id", "s", "f"])
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
