"""The sinks: rotated Parquet files that appear only when complete, and JSON Lines."""

import os
import re

import orjson
import pyarrow.parquet as pq
import pytest

from mab.decisions.arrow import SCHEMA
from mab.decisions.sinks import JsonLinesSink, ParquetSink, SinkError
from tests.decisions.test_arrow import INFOS, make_record, spans


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def visible(directory):
    return sorted(name for name in os.listdir(directory) if not name.startswith("."))


def hidden(directory):
    return sorted(name for name in os.listdir(directory) if name.startswith("."))


def batch(start, n, model="default"):
    return [make_record(i, spans(f"item-{i}", "other"), model=model) for i in range(start, start + n)]


def test_a_file_appears_under_its_name_only_when_closed(tmp_path):
    sink = ParquetSink(tmp_path, rotate_records=0, rotate_seconds=0, compression="zstd")
    assert sink.write(batch(0, 3), INFOS) == {}
    assert sink.write(batch(3, 2, model="decayed"), INFOS) == {}
    assert visible(tmp_path) == []
    assert len(hidden(tmp_path)) == 1 and hidden(tmp_path)[0].endswith(".parquet.tmp")
    assert sink.describe()["records_in_file"] == 5
    assert sink.close() == {"default": 3, "decayed": 2}
    assert hidden(tmp_path) == []
    [name] = visible(tmp_path)
    assert re.fullmatch(rf"decisions-\d{{8}}T\d{{6}}Z-[A-Za-z0-9._-]+-{os.getpid()}-000000\.parquet", name)
    metadata = pq.ParquetFile(tmp_path / name).metadata
    assert metadata.num_rows == 5 and metadata.num_row_groups == 2      # one row group per write
    table = pq.read_table(tmp_path / name)
    # Lists read back with Parquet's element name ("element", not "item").
    assert table.schema.names == SCHEMA.names and table.cast(SCHEMA).schema == SCHEMA
    assert metadata.row_group(0).column(0).compression == "ZSTD"
    assert sink.close() == {}


def test_rotation_by_records(tmp_path):
    sink = ParquetSink(tmp_path, rotate_records=4, rotate_seconds=0)
    assert sink.write(batch(0, 3), INFOS) == {}
    assert sink.write(batch(3, 3), INFOS) == {"default": 6}       # passes the limit by at most a batch
    assert sink.write(batch(6, 4), INFOS) == {"default": 4}
    assert sink.write(batch(10, 1), INFOS) == {}
    assert sink.close() == {"default": 1}
    names = visible(tmp_path)
    assert [n[-14:] for n in names] == ["000000.parquet", "000001.parquet", "000002.parquet"]
    assert [pq.ParquetFile(tmp_path / n).metadata.num_rows for n in names] == [6, 4, 1]
    ids = sum((pq.read_table(tmp_path / n).column("decision_id").to_pylist() for n in names), [])
    assert ids == [f"{i:032x}" for i in range(11)]


def test_rotation_by_age(tmp_path):
    clock = Clock()
    sink = ParquetSink(tmp_path, rotate_records=0, rotate_seconds=60, clock=clock)
    assert sink.rotate_if_due() == {}               # no open file
    sink.write(batch(0, 2), INFOS)
    clock.now += 59.9
    assert sink.rotate_if_due() == {}
    clock.now += 0.1
    assert sink.rotate_if_due() == {"default": 2}
    assert len(visible(tmp_path)) == 1 and hidden(tmp_path) == []


def test_a_failed_write_removes_the_file_and_counts_its_records_lost(tmp_path, monkeypatch):
    sink = ParquetSink(tmp_path, rotate_records=0, rotate_seconds=0)
    sink.write(batch(0, 3), INFOS)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sink._writer, "write_table", fail, raising=False)
    with pytest.raises(SinkError, match="No space left") as caught:
        sink.write(batch(3, 2, model="decayed"), INFOS)
    assert caught.value.lost == {"default": 3, "decayed": 2} and caught.value.committed == {}
    assert os.listdir(tmp_path) == []                 # no partial file, visible or not
    # The sink goes on with a new file.
    sink.write(batch(5, 1), INFOS)
    assert sink.close() == {"default": 1}
    assert visible(tmp_path)[0].endswith("-000001.parquet")


def test_a_batch_that_cannot_be_built_is_lost_alone(tmp_path):
    sink = ParquetSink(tmp_path, rotate_records=0, rotate_seconds=0)
    sink.write(batch(0, 2), INFOS)
    with pytest.raises(SinkError) as caught:
        sink.write(batch(2, 1, model="unknown"), INFOS)      # no ModelInfo for it
    assert caught.value.lost == {"unknown": 1}
    assert sink.close() == {"default": 2}


def test_a_failed_close_loses_the_file(tmp_path, monkeypatch):
    sink = ParquetSink(tmp_path, rotate_records=0, rotate_seconds=0)
    sink.write(batch(0, 2), INFOS)
    monkeypatch.setattr(os, "rename", lambda *a: (_ for _ in ()).throw(OSError(5, "Input/output error")))
    with pytest.raises(SinkError) as caught:
        sink.close()
    assert caught.value.lost == {"default": 2}
    assert os.listdir(tmp_path) == []


def test_an_unwritable_directory_is_refused_at_start(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError):
        ParquetSink(blocker / "decisions")


def test_json_lines_are_written_one_per_record(tmp_path):
    path = tmp_path / "out.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        sink = JsonLinesSink(fd)
        assert sink.write(batch(0, 2) + batch(2, 1, model="decayed"), INFOS) == {"default": 2, "decayed": 1}
    finally:
        os.close(fd)
    lines = path.read_bytes().splitlines()
    assert [orjson.loads(line)["decision_id"] for line in lines] == [f"{i:032x}" for i in range(3)]
    assert sink.describe()["lines"] == 3


def test_json_lines_survive_short_writes(monkeypatch):
    # A pipe takes part of a long line: the rest follows in order.
    read, write = os.pipe()
    real_write = os.write

    def short_write(fd, data):
        return real_write(fd, bytes(data[:7]))

    monkeypatch.setattr(os, "write", short_write)
    try:
        JsonLinesSink(write).write(batch(0, 1), INFOS)
        os.close(write)
        out = b""
        while chunk := os.read(read, 65536):
            out += chunk
    finally:
        os.close(read)
    assert orjson.loads(out)["decision_id"] == f"{0:032x}"


def test_a_failed_json_write_says_what_was_written():
    read, write = os.pipe()
    os.close(read)                                   # EPIPE on the first write
    try:
        with pytest.raises(SinkError) as caught:
            JsonLinesSink(write).write(batch(0, 2), INFOS)
    finally:
        os.close(write)
    assert caught.value.lost == {"default": 2} and caught.value.committed == {}
