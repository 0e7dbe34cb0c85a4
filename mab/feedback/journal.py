"""The node's journal of reward events: durable, append-only, checksummed.

A directory::

    journal.json                          {"format": 1, "journal_id": "<32 hex>"}
    events-00000000000000000001.jsonl     segments, named by their first sequence number
    events-00000000000000052113.jsonl
    .lock                                 the node's lock (flock), see ``Journal.lock``

Each event is one line of JSON (JSON Lines), so DuckDB, Polars, BigQuery
and ``jq`` read a segment as it is::

    {"seq":7,"time":"2024-05-06T12:53:20.250000Z","decision_id":"...","item_id":"...",
     "reward":1.0,"model":"default","user_id":null,"batch":6,"n":2,"crc":2769118325}

``seq`` numbers events from 1 without gaps across segments; ``time`` is
when the node accepted the event (RFC 3339, UTC, microseconds; never
earlier than the event before it); the events of one POST /feedback are a
batch: ``batch`` is the batch's first sequence number and ``n`` its size.
``crc`` is the CRC-32 (ISO-HDLC, zlib's) of the line's bytes before
``,"crc":``. A batch is written with one ``write`` call, under the node's
lock.

Crashes: a line is whole (ends with its line feed and its checksum holds)
or torn. A batch counts only when all its ``n`` lines are whole; a torn or
incomplete batch at the end of the last segment is what a writer killed
mid-write leaves (its client got no answer), and is cut off
(``truncate``) before anything is appended after it. Anything else that
does not read (a bad line followed by good ones, a segment that ends
mid-batch and is followed by another) is corruption: ``JournalCorrupt``,
naming the file and offset, for a person to look at.

Durability (``fsync``): "batch" calls ``fdatasync`` before the request is
answered; "interval" leaves it to a thread that syncs every
``fsync_interval_ms``; "never" leaves it to the kernel. Every policy
survives the process being killed (the data is in the page cache); only
"batch" survives the machine losing power between the answer and the sync.
"""

import datetime
import fcntl
import os
import re
import threading
import uuid
import zlib
from dataclasses import dataclass

import orjson

FORMAT = 1
ID_FILE = "journal.json"
LOCK_FILE = ".lock"
SEGMENT_PATTERN = re.compile(r"events-(\d{20})\.jsonl")
CRC_MARK = b',"crc":'
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


class JournalCorrupt(Exception):
    """The journal holds bytes that are neither whole batches nor a torn tail."""


@dataclass(frozen=True, slots=True)
class Record:
    """One journaled event, as read back."""

    seq: int
    time_us: int            # microseconds since the Unix epoch
    decision_id: str
    item_id: str
    reward: float
    model: str
    user_id: str | None
    batch: int
    n: int

    @property
    def time(self):
        """Unix seconds (float64)."""
        return self.time_us / 1_000_000


def segment_name(first_seq):
    return f"events-{first_seq:020d}.jsonl"


def format_time(time_us):
    """RFC 3339 UTC with microseconds: 2024-05-06T12:53:20.250000Z."""
    seconds, micros = divmod(time_us, 1_000_000)
    moment = EPOCH + datetime.timedelta(seconds=seconds, microseconds=micros)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


TIME_PATTERN = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{6})Z")
EPOCH_ORDINAL = EPOCH.toordinal()


def parse_time(text):
    """Microseconds since the epoch from ``format_time``'s text; ValueError
    for any other text. (``strptime`` took most of a replay's time.)"""
    match = TIME_PATTERN.fullmatch(text)
    if match is None:
        raise ValueError(f"not a journal time: {text!r}")
    year, month, day, hour, minute, second, micros = map(int, match.groups())
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"not a journal time: {text!r}")
    days = datetime.date(year, month, day).toordinal() - EPOCH_ORDINAL
    return ((days * 24 + hour) * 60 + minute) * 60_000_000 + second * 1_000_000 + micros


def encode_line(seq, time_us, event, batch, n, time_text=None):
    """One event's line (bytes, ending in a line feed), checksummed.
    ``time_text``: ``format_time(time_us)`` if the caller has it already."""
    body = orjson.dumps({
        "seq": seq, "time": time_text or format_time(time_us), "decision_id": event.decision_id, "item_id": event.item_id,
        "reward": event.reward, "model": event.model, "user_id": event.user_id, "batch": batch, "n": n,
    })
    head = body[:-1]
    return head + CRC_MARK + str(zlib.crc32(head)).encode() + b"}\n"


def decode_line(line):
    """The Record of a whole line (with its line feed), or None if it is torn
    or not one of ours."""
    if not line.endswith(b"}\n"):
        return None
    mark = line.rfind(CRC_MARK)
    if mark < 0:
        return None
    digits = line[mark + len(CRC_MARK):-2]
    if not digits.isdigit() or zlib.crc32(line[:mark]) != int(digits):
        return None
    try:
        doc = orjson.loads(line)
        return Record(doc["seq"], parse_time(doc["time"]), doc["decision_id"], doc["item_id"], float(doc["reward"]),
                      doc["model"], doc["user_id"], doc["batch"], doc["n"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Position:
    """A place in the journal: a segment (its first sequence number) and a byte offset in it."""

    segment: int
    offset: int


class Journal:
    """One process's handle on the journal directory ``directory``.

    Appending and reading the end happen under ``lock()``, which also
    serialises every change to the node's shared state (mab.feedback.node):
    a ``threading.Lock`` for this process's threads and an exclusive
    ``flock`` on ``.lock`` for the other processes. The kernel releases an
    ``flock`` when its holder dies, so a killed worker never blocks the
    others. Raises ``OSError`` if the directory cannot be created or read.
    """

    def __init__(self, directory, *, fsync="batch", fsync_interval=0.1, segment_bytes=64 << 20):
        self.directory = directory
        self.fsync = fsync
        self.fsync_interval = fsync_interval
        self.segment_bytes = segment_bytes
        os.makedirs(directory, exist_ok=True)
        self.journal_id = self._journal_id()
        self._thread_lock = threading.Lock()
        self._lock_fd = None
        self._lock_pid = None
        self._fd = None                 # the segment appended to, and which
        self._fd_segment = None
        self._unsynced = False
        self._sync_thread = None
        self._closing = threading.Event()

    def _journal_id(self):
        path = os.path.join(self.directory, ID_FILE)
        try:
            with open(path, "rb") as f:
                doc = orjson.loads(f.read())
        except FileNotFoundError:
            doc = {"format": FORMAT, "journal_id": uuid.uuid4().hex}
            temporary = f"{path}.{os.getpid()}.tmp"
            with open(temporary, "wb") as f:
                f.write(orjson.dumps(doc))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(temporary, path)        # atomic, and fails if another process got there first
            except FileExistsError:
                pass
            finally:
                os.unlink(temporary)
            with open(path, "rb") as f:
                doc = orjson.loads(f.read())
        if doc.get("format") != FORMAT or not re.fullmatch(r"[0-9a-f]{32}", str(doc.get("journal_id"))):
            raise JournalCorrupt(f"{path}: not a journal of format {FORMAT}: {doc!r}")
        return doc["journal_id"]

    # -- the lock ----------------------------------------------------------------

    def lock(self):
        """A context manager holding the node's lock (see the class docstring)."""
        return _Locked(self)

    def _acquire(self):
        self._thread_lock.acquire()
        try:
            if self._lock_fd is None or self._lock_pid != os.getpid():
                # A forked child must not share its parent's open file
                # description: an flock on it would be the parent's too.
                self._lock_fd = os.open(os.path.join(self.directory, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
                self._lock_pid = os.getpid()
                self._fd = self._fd_segment = None
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def _release(self):
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    # -- segments -------------------------------------------------------------------

    def segments(self):
        """First sequence numbers of the segments, in order."""
        found = []
        for name in os.listdir(self.directory):
            match = SEGMENT_PATTERN.fullmatch(name)
            if match:
                found.append(int(match.group(1)))
        return sorted(found)

    def path(self, segment):
        return os.path.join(self.directory, segment_name(segment))

    def start(self):
        """Where reading the whole journal starts."""
        segments = self.segments()
        return Position(segments[0] if segments else 1, 0)

    def read(self, position):
        """The whole batches from ``position`` on, in order: yields
        ``(records, end)`` per batch, where ``end`` is the Position after it.
        Returns (as the generator's value) the Position where reading
        stopped: the end of the journal, or the start of a torn tail (see
        ``truncate``). Raises ``JournalCorrupt``."""
        segments = [s for s in self.segments() if s >= position.segment]
        if not segments:
            if position.offset:
                raise JournalCorrupt(f"{self.path(position.segment)}: the segment is gone, but the node's "
                                     f"state reads on from offset {position.offset}")
            return position
        if segments[0] != position.segment:
            if position.offset:
                raise JournalCorrupt(f"{self.path(position.segment)}: the segment is gone, but the node's "
                                     f"state reads on from offset {position.offset}")
            position = Position(segments[0], 0)
        expected = None
        end = position
        for k, segment in enumerate(segments):
            path = self.path(segment)
            if expected is not None and segment != expected:
                raise JournalCorrupt(f"{path}: starts at event {segment}, but the segment before it "
                                     f"ends at event {expected - 1}")
            offset = position.offset if segment == position.segment else 0
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
            pos = 0
            while pos < len(data):
                batch, used = self._batch(data, pos)
                if batch is None:
                    if k == len(segments) - 1 and self._only_torn(data, pos):
                        return Position(segment, offset + pos)
                    raise JournalCorrupt(
                        f"{path}: unreadable bytes at offset {offset + pos} that are not a torn tail (a batch "
                        "whose lines are not whole, followed by more data). Move the segment away and restore "
                        "it from a backup, or cut it at that offset if the events after it may be lost")
                first = batch[0].seq
                if offset + pos == 0 and first != segment:
                    raise JournalCorrupt(f"{path}: starts with event {first}, not with {segment} as its name says")
                if expected is not None and first != expected:
                    raise JournalCorrupt(f"{path}, offset {offset + pos}: event {first} follows event "
                                         f"{expected - 1}; sequence numbers have no gaps")
                expected = first + len(batch)
                pos += used
                end = Position(segment, offset + pos)
                yield batch, end
            end = Position(segment, offset + len(data))
        return end

    @staticmethod
    def _batch(data, start):
        """(records, bytes used) of the whole batch at ``data[start:]``, or (None, 0)."""
        records = []
        pos = start
        while True:
            end = data.find(b"\n", pos)
            if end < 0:
                return None, 0
            record = decode_line(data[pos:end + 1])
            if record is None:
                return None, 0
            if records:
                previous = records[-1]
                if record.batch != previous.batch or record.n != previous.n or record.seq != previous.seq + 1:
                    return None, 0
            elif record.seq != record.batch or record.n < 1:
                return None, 0
            records.append(record)
            pos = end + 1
            if len(records) == record.n:
                return records, pos - start

    @staticmethod
    def _only_torn(data, pos):
        """Whether ``data[pos:]`` is what a write cut short leaves: the first
        whole lines of one batch, then at most a line without its line feed."""
        previous = None
        while pos < len(data):
            end = data.find(b"\n", pos)
            if end < 0:
                return True         # the last line, cut short
            record = decode_line(data[pos:end + 1])
            if record is None:
                return False        # a whole line that does not read
            if previous is None:
                if record.seq != record.batch:
                    return False
            elif record.batch != previous.batch or record.seq != previous.seq + 1:
                return False
            if record.seq - record.batch + 1 >= record.n:
                return False        # the batch is whole: the trouble is elsewhere
            previous = record
            pos = end + 1
        return True

    def truncate(self, position):
        """Cut the journal at ``position`` (the start of a torn tail). Under the lock."""
        with open(self.path(position.segment), "r+b") as f:
            f.truncate(position.offset)
            if self.fsync != "never":
                os.fsync(f.fileno())

    # -- appending --------------------------------------------------------------------

    def append(self, data, end, first_seq):
        """Append ``data`` (whole lines of one batch whose first event is
        ``first_seq``) at ``end``, the Position of the journal's end, under the
        lock; returns the Position after it. A segment at or over
        ``segment_bytes`` is closed first and a new one started. Syncs as
        the policy says. Raises ``OSError``."""
        if end.offset >= self.segment_bytes:
            end = Position(first_seq, 0)
        if self._fd_segment != end.segment:
            self._open_segment(end.segment, create=end.offset == 0)
        size = os.fstat(self._fd).st_size
        if size != end.offset:
            raise JournalCorrupt(f"{self.path(end.segment)} has {size} bytes; the node's state says {end.offset}")
        written = os.write(self._fd, data)
        while written < len(data):             # a short write to a regular file: a full disk, say
            written += os.write(self._fd, data[written:])
        if self.fsync == "batch":
            os.fdatasync(self._fd)
        elif self.fsync == "interval":
            self._unsynced = True
        return Position(end.segment, end.offset + len(data))

    def _open_segment(self, segment, create):
        if self._fd is not None:
            if self._unsynced:
                os.fdatasync(self._fd)
                self._unsynced = False
            os.close(self._fd)
            self._fd = self._fd_segment = None
        flags = os.O_WRONLY | os.O_APPEND | (os.O_CREAT if create else 0)
        self._fd = os.open(self.path(segment), flags, 0o644)
        self._fd_segment = segment
        if create and self.fsync != "never":
            directory = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(directory)             # the new segment's name is durable too
            finally:
                os.close(directory)

    def start_syncing(self):
        """With fsync = "interval": start this process's thread that syncs
        what it appended, every ``fsync_interval`` seconds."""
        if self.fsync != "interval" or self._sync_thread is not None:
            return
        self._sync_thread = threading.Thread(target=self._sync_forever, name="mab-journal-sync", daemon=True)
        self._sync_thread.start()

    def _sync_forever(self):
        while not self._closing.wait(self.fsync_interval):
            self.sync()

    def sync(self):
        """Sync what this process appended and has not synced yet. The
        sync runs on a duplicate descriptor, outside the lock: appends go on
        meanwhile (a rotation may close the original)."""
        with self._thread_lock:
            if not self._unsynced or self._fd is None:
                return
            fd = os.dup(self._fd)
            self._unsynced = False
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def close(self):
        self._closing.set()
        if self._sync_thread is not None:
            self._sync_thread.join(1.0)
            self._sync_thread = None
        with self._thread_lock:
            if self._fd is not None:
                if self._unsynced:
                    os.fdatasync(self._fd)
                os.close(self._fd)
            if self._lock_fd is not None and self._lock_pid == os.getpid():
                os.close(self._lock_fd)
            self._fd = self._fd_segment = self._lock_fd = None


class _Locked:
    def __init__(self, journal):
        self.journal = journal

    def __enter__(self):
        self.journal._acquire()
        return self.journal

    def __exit__(self, *exc):
        self.journal._release()
        return False
