"""Folding a journal's events into the next snapshot (``mab data compile --events``).

The embedded store serves a CSV snapshot; online updates add the journal's
later events on top (an overlay per model). Folding writes a new CSV whose
counts include the events, and beside it an events file
(``NEW.csv.events.json``, see ``mab.stores.embedded.read_events_file``)
saying which journal's events it holds, up to which sequence number. Once
the service serves the new file (the store's path points at it, then a
reload, HUP, or a restart), each online model's overlay starts empty over
it and takes in only the later events. A CSV that already has an events
file is folded from where it stopped; one from another journal is refused.

Which columns an event adds to: its model's ``successes`` and ``failures``
(``reward`` and ``1 - reward``), for the entity its model's ``entity_id``
template makes of its item (and user), for every model of the
configuration whose store is this CSV. A new entity becomes a new row.

Time and decay: with an ``updated_at`` column, a row that gets events moves
to the time ``T`` of its latest one; every count column read by a model
with a half-life ``h`` (the events' and the row's) is decayed to ``T``:
``c * 2**(-(T - t) / h)`` for a count of time ``t``. So the new file
serves the same posterior as the old file plus the overlay (up to the
rounding of float64 sums). Without an ``updated_at`` column nothing decays
(a model with a half-life cannot read such a file anyway).
"""

import hashlib
import os
import sys

import numpy as np

from mab.errors import ConfigError, DataError
from mab.feedback.journal import Journal
from mab.stores import embedded
from mab.stores.csvfile import TIMESTAMP_COLUMN


def models_of(config, csv_path):
    """The models whose store serves ``csv_path`` (by absolute path)."""
    path = os.path.abspath(csv_path)
    stores = {name for name, settings in config.stores.items()
              if settings.backend == "embedded" and os.path.abspath(settings.path) == path}
    return [model for model in config.models.values() if model.store in stores]


def _number(value):
    """A count or time as the strict reader reads it back exactly (a count
    decayed below the smallest normal float64, which it refuses, is 0)."""
    if value < sys.float_info.min:
        return "0"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _field(text):
    """One CSV field (RFC 4180 section 2): quoted when it holds a comma or a quote."""
    if "," in text or '"' in text:
        return '"' + text.replace('"', '""') + '"'
    return text


def fold(csv_path, journal_dir, config, out_path=None):
    """Write ``csv_path`` with the journal's events folded in (see the module
    docstring) to ``out_path`` (default: beside it, named by the last
    sequence number), with its events file. Returns a summary dict: out,
    events_file, through_seq, events, rows_updated, rows_added, models.

    Raises ``ConfigError`` when no model of ``config`` reads the CSV, or two
    models with different half-lives read one column; ``DataError`` for an
    invalid CSV or an events file of another journal; ``JournalCorrupt``,
    ``OSError``.
    """
    if out_path is not None and os.path.abspath(out_path) == os.path.abspath(csv_path):
        raise DataError(f"{out_path}: write the folded snapshot to a new file, not over the one it is read from")
    models = models_of(config, csv_path)
    if not models:
        raise ConfigError(f"no model of the configuration ({config.source}) reads {csv_path}: the models say "
                          "which columns an event adds to (their successes and failures)")
    columns, arrays = embedded.compile_csv(csv_path)
    features = columns[1:]
    position = {name: k for k, name in enumerate(features)}
    for model in models:
        for name in (model.successes, model.failures):
            if name not in position:
                raise ConfigError(f"model {model.name!r} reads column {name!r}, which {csv_path} does not have")
    half_life = {}          # column -> the half-life its counts decay with (None: no decay)
    for model in models:
        for name in (model.successes, model.failures):
            if half_life.setdefault(name, model.half_life_seconds) != model.half_life_seconds:
                raise ConfigError(f"column {name!r} of {csv_path} is read by models with different half-lives")
    time_column = position.get(TIMESTAMP_COLUMN)
    journal = Journal(journal_dir, fsync="never")
    earlier = embedded.read_events_file(csv_path)
    base = 0
    if earlier is not None:
        if earlier["journal_id"] != journal.journal_id:
            raise DataError(f"{csv_path} holds the events of journal {earlier['journal_id']}, not of "
                            f"{journal_dir} ({journal.journal_id})")
        base = earlier["through_seq"]

    blob, records = arrays["blob"], arrays["records"]
    n = len(records) - 1
    values = np.array(records["features"][:n], dtype=np.float64)       # (n, k), a copy to change
    index = embedded._table.IdIndex(arrays["slots"], blob, records)
    by_model = {model.name: model for model in models}
    touched = {}            # row -> list of (column, amount, time)
    added = {}              # new entity id -> list of (column, amount, time)
    through = base
    folded = 0
    # A torn tail (a batch the service is writing right now) ends the
    # reading: it is folded next time.
    for batch, _ in journal.read(journal.start()):
        for record in batch:
            through = max(through, record.seq)
            if record.seq <= base or record.model not in by_model:
                continue
            model = by_model[record.model]
            if model.entity_id.needs_user and record.user_id is None:
                continue
            prefix, suffix = model.entity_id.parts(record.user_id)
            row = int(index.find([record.item_id], prefix.encode(), suffix.encode())[0][0])
            changes = touched.setdefault(row, []) if row < n else added.setdefault(prefix + record.item_id + suffix, [])
            changes.append((position[model.successes], record.reward, record.time))
            changes.append((position[model.failures], 1.0 - record.reward, record.time))
            folded += 1

    decaying = [(position[name], h) for name, h in half_life.items() if h is not None]
    # Columns of other models (not folding) decay with theirs when a row's time moves.
    for model in config.models.values():
        if model not in models and model.store in {m.store for m in models} and model.half_life_seconds:
            for name in (model.successes, model.failures):
                if name in position and all(name != column for column in half_life):
                    decaying.append((position[name], model.half_life_seconds))

    def apply(row_values, changes, row_time):
        latest = max(t for _, _, t in changes)
        target = max(row_time, latest) if time_column is not None else None
        if target is not None:
            for column, h in decaying:
                row_values[column] *= 2.0 ** (-(target - row_time) / h)
            row_values[time_column] = target
        for column, amount, t in changes:
            h = half_life.get(features[column])
            if h is not None and target is not None:
                amount *= 2.0 ** (-(target - t) / h)
            row_values[column] += amount

    for row, changes in touched.items():
        row_time = values[row, time_column] if time_column is not None else 0.0
        apply(values[row], changes, row_time)
    new_rows = []
    for entity, changes in added.items():
        row_values = np.zeros(len(features))
        apply(row_values, changes, 0.0)
        new_rows.append((entity, row_values))

    if out_path is None:
        stem, ext = os.path.splitext(csv_path)
        out_path = f"{stem.split('.through-')[0]}.through-{through}{ext or '.csv'}"
    if os.path.abspath(out_path) == os.path.abspath(csv_path):
        raise DataError(f"{out_path}: write the folded snapshot to a new file, not over the one it is read from")
    digest = hashlib.sha256()
    temporary = f"{out_path}.{os.getpid()}.tmp"
    offsets = records["offset"]
    lengths = records["length"]
    with open(temporary, "wb") as f:
        def write(text):
            data = text.encode()
            digest.update(data)
            f.write(data)

        write(",".join(map(_field, columns)) + "\n")
        lines = []
        for row in range(n):
            start = int(offsets[row])
            entity = bytes(blob[start:start + int(lengths[row])]).decode()
            lines.append(_field(entity) + "," + ",".join(map(_number, values[row].tolist())) + "\n")
            if len(lines) >= 65536:
                write("".join(lines))
                lines = []
        for entity, row_values in new_rows:
            lines.append(_field(entity) + "," + ",".join(map(_number, row_values.tolist())) + "\n")
        write("".join(lines))
        f.flush()
        os.fsync(f.fileno())
    # The events file first, then the CSV: in between, the events file
    # names a content the CSV does not have yet, which the store refuses
    # (never serving the new events file over the old counts, or the other way).
    events_file = out_path + embedded.EVENTS_SUFFIX
    with open(events_file + ".tmp", "w") as f:
        f.write(f'{{"journal_id": "{journal.journal_id}", "through_seq": {through}, '
                f'"csv_sha256": "{digest.hexdigest()}"}}\n')
        f.flush()
        os.fsync(f.fileno())
    os.rename(events_file + ".tmp", events_file)
    os.rename(temporary, out_path)
    journal.close()
    return {
        "out": out_path, "events_file": events_file, "through_seq": through, "events": folded,
        "rows_updated": len(touched), "rows_added": len(new_rows), "models": [m.name for m in models],
    }

