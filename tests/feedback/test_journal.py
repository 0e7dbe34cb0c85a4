"""The journal: lines checksummed, batches whole or torn, torn tails cut, corruption refused."""

import os

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mab.feedback.events import Event
from mab.feedback.journal import (
    Journal,
    JournalCorrupt,
    Position,
    decode_line,
    encode_line,
    format_time,
    parse_time,
    segment_name,
)

T0 = 1_715_000_000_250_000      # 2024-05-06T12:53:20.25Z, in microseconds


def batch(first, events, time_us=T0):
    return b"".join(encode_line(first + j, time_us, event, first, len(events)) for j, event in enumerate(events))


def events(n, prefix="d"):
    return [Event(f"{prefix}{i}", f"item-{i % 3}", (i % 5) / 4, "default", None if i % 2 else f"u{i}") for i in range(n)]


def append(journal, data, first):
    with journal.lock():
        end = journal.append(data, _end(journal), first)
    return end


def _end(journal):
    segments = journal.segments()
    if not segments:
        return Position(1, 0)
    return Position(segments[-1], os.path.getsize(journal.path(segments[-1])))


def read_all(journal):
    reader = journal.read(journal.start())
    batches = []
    while True:
        try:
            batches.append(next(reader))
        except StopIteration as stop:
            return batches, stop.value


def test_a_line_is_json_with_its_checksum(tmp_path):
    event = Event("d-1", "item-ü", 0.25, "default", None)
    line = encode_line(7, T0, event, 6, 2)
    doc = orjson.loads(line)
    assert doc == {"seq": 7, "time": "2024-05-06T12:53:20.250000Z", "decision_id": "d-1", "item_id": "item-ü",
                   "reward": 0.25, "model": "default", "user_id": None, "batch": 6, "n": 2, "crc": doc["crc"]}
    record = decode_line(line)
    assert (record.seq, record.time_us, record.item_id, record.reward, record.batch, record.n) == (7, T0, "item-ü", 0.25, 6, 2)
    assert record.time == 1_715_000_000.25


def test_any_change_or_cut_of_a_line_is_detected():
    line = encode_line(1, T0, Event("d", "i", 1.0), 1, 1)
    for cut in range(len(line)):
        assert decode_line(line[:cut]) is None
    for i in range(len(line) - 1):
        changed = bytearray(line)
        changed[i] ^= 0x01
        assert decode_line(bytes(changed)) is None, i


@given(st.integers(min_value=0, max_value=2**53))
@settings(max_examples=200, deadline=None)
def test_times_read_back_exactly(time_us):
    assert parse_time(format_time(time_us)) == time_us


def test_append_and_read_back(tmp_path):
    journal = Journal(str(tmp_path / "j"))
    first = events(3)
    end = append(journal, batch(1, first), 1)
    second = events(2, prefix="e")
    end2 = append(journal, batch(4, second), 4)
    batches, stop = read_all(journal)
    assert [[r.seq for r in b] for b, _ in batches] == [[1, 2, 3], [4, 5]]
    assert [b[0].decision_id for b, _ in batches] == ["d0", "e0"]
    assert [position for _, position in batches] == [end, end2]
    assert stop == end2
    # Reading from the end of the first batch gives the second only.
    reader = journal.read(end)
    assert [[r.seq for r in b] for b, _ in reader] == [[4, 5]]
    journal.close()


def test_the_journal_id_is_kept(tmp_path):
    first = Journal(str(tmp_path / "j"))
    again = Journal(str(tmp_path / "j"))
    assert first.journal_id == again.journal_id
    assert len(first.journal_id) == 32


def test_segments_rotate_and_are_read_in_order(tmp_path):
    journal = Journal(str(tmp_path / "j"), segment_bytes=600)
    seq = 1
    for k in range(6):
        data = batch(seq, events(2, prefix=f"b{k}-"))
        end = append(journal, data, seq)
        seq += 2
    assert len(journal.segments()) > 1
    assert journal.segments()[0] == 1
    batches, stop = read_all(journal)
    assert [r.seq for b, _ in batches for r in b] == list(range(1, 13))
    assert stop == end
    journal.close()


def test_every_cut_of_the_last_batch_is_a_torn_tail(tmp_path):
    """Whatever byte a killed writer stopped at, the earlier batches read
    and the torn one does not; truncating there leaves a journal that
    takes appends again."""
    directory = tmp_path / "j"
    journal = Journal(str(directory))
    good = append(journal, batch(1, events(2)), 1)
    last = batch(3, events(3, prefix="x"))
    path = journal.path(1)
    whole = open(path, "rb").read()
    journal.close()
    for cut in range(1, len(last)):
        with open(path, "wb") as f:
            f.write(whole + last[:cut])
        journal = Journal(str(directory))
        batches, stop = read_all(journal)
        assert [r.seq for b, _ in batches for r in b] == [1, 2], cut
        assert stop == good, cut
        journal.truncate(stop)
        assert os.path.getsize(path) == good.offset
        append(journal, last, 3)
        batches, _ = read_all(journal)
        assert [r.seq for b, _ in batches for r in b] == [1, 2, 3, 4, 5]
        journal.close()


def test_damage_before_good_data_is_corruption(tmp_path):
    journal = Journal(str(tmp_path / "j"))
    append(journal, batch(1, events(2)), 1)
    append(journal, batch(3, events(2, prefix="y")), 3)
    path = journal.path(1)
    data = bytearray(open(path, "rb").read())
    data[10] ^= 0x20                   # inside the first line
    open(path, "wb").write(bytes(data))
    with pytest.raises(JournalCorrupt, match="not a torn tail"):
        read_all(journal)


def test_a_gap_in_sequence_numbers_is_corruption(tmp_path):
    journal = Journal(str(tmp_path / "j"))
    append(journal, batch(1, events(2)), 1)
    with open(journal.path(1), "ab") as f:
        f.write(batch(5, events(1)))
    with pytest.raises(JournalCorrupt, match="no gaps"):
        read_all(journal)


def test_a_segment_must_start_with_its_name(tmp_path):
    journal = Journal(str(tmp_path / "j"))
    with open(os.path.join(journal.directory, segment_name(1)), "wb") as f:
        f.write(batch(2, events(1)))
    with pytest.raises(JournalCorrupt, match="not with 1"):
        read_all(journal)


def test_append_refuses_a_journal_that_grew_behind_its_back(tmp_path):
    journal = Journal(str(tmp_path / "j"))
    end = append(journal, batch(1, events(1)), 1)
    with open(journal.path(1), "ab") as f:
        f.write(b"{")
    with journal.lock(), pytest.raises(JournalCorrupt, match="the node's state says"):
        journal.append(batch(2, events(1)), end, 2)


def test_fsync_policies_append_the_same_bytes(tmp_path):
    contents = []
    for policy in ("batch", "interval", "never"):
        journal = Journal(str(tmp_path / policy), fsync=policy, fsync_interval=0.01)
        journal.start_syncing()
        append(journal, batch(1, events(4), time_us=T0), 1)
        journal.sync()
        contents.append(open(journal.path(1), "rb").read())
        journal.close()
    assert contents[0] == contents[1] == contents[2]
