"""``mab data``: demo data, and the embedded store's CSV files checked,
compiled ahead of time, and inspected.

The embedded store compiles a CSV file into memory-mappable arrays in a
cache directory (``mab.stores.embedded``); the gunicorn master does it at
start. ``mab data compile`` does the same ahead of time, so a pipeline can
pay for it before it points the service at a new file.
"""

import datetime
import json
import os
import sys
import time

from mab.cli.progress import run_with_progress


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "data", help="demo data; check, compile and inspect the embedded store's CSV files",
        description="Demo data, and the embedded store's CSV files: validate (read and check, "
        "write nothing), compile (into the cache directory, as the gunicorn master does at start) "
        "and inspect (rows, features, id lengths, value ranges, where the compiled copy is).",
    )
    commands = parser.add_subparsers(dest="data_command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo", help="write a deterministic demo CSV",
        description="Write a deterministic demo CSV for the embedded store: item-000000, ... with "
        "successes uniform in 0..1000 and failures in 0..100,000, from numpy's PCG64 seeded with "
        "--seed (the same arguments always write the same bytes; the layout the Go peer reads).",
    )
    demo.add_argument("--items", type=int, default=100_000, help="number of items (default 100,000)")
    demo.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    demo.add_argument("--out", default="data/items.csv", help="output path (default data/items.csv)")
    demo.set_defaults(handler=demo_command, parser=demo)

    cache_dir_help = (
        "the cache directory (default: the service's: MAB_CACHE_DIR, else cache_dir of the MAB_CONFIG "
        "file, else $TMPDIR/mab-cache-$UID)"
    )
    compile_ = commands.add_parser(
        "compile", help="compile a CSV into the cache directory ahead of time",
        description="Compile a CSV file into the embedded store's cache directory, as the gunicorn "
        "master does at start, and print where and how long it took. A file already compiled (same "
        "path, size and modification time) is not compiled again. Exit status 1 if the file cannot "
        "be read or is invalid (the message names the line).",
    )
    compile_.add_argument("csv", metavar="CSV", help="the CSV file")
    compile_.add_argument("--cache-dir", metavar="DIR", help=cache_dir_help)
    compile_.add_argument(
        "--events", metavar="JOURNAL",
        help="first fold the rewards of this journal directory (POST /feedback) into a new CSV, with an "
             "events file beside it saying up to which event it holds them, and compile that; the models "
             "of the configuration (MAB_CONFIG or --config) that read CSV say which columns the events add "
             "to. Serve the new file (point the store at it, then reload or restart): each online model's "
             "overlay then starts from it (docs/feedback.md)",
    )
    compile_.add_argument("--out", metavar="NEW_CSV",
                          help="with --events: the new CSV (default: beside CSV, named by the last event folded)")
    compile_.add_argument("--config", metavar="FILE", help="with --events: the TOML configuration (default: $MAB_CONFIG)")
    compile_.set_defaults(handler=compile_command)

    validate = commands.add_parser(
        "validate", help="check a CSV without writing anything",
        description="Read and check a CSV file exactly as the embedded store does, writing nothing. "
        "Exit status 0 if the service would serve it, 1 otherwise, with a message naming the line.",
    )
    validate.add_argument("csv", metavar="CSV", help="the CSV file")
    validate.set_defaults(handler=validate_command)

    inspect = commands.add_parser(
        "inspect", help="rows, features, id lengths, value ranges and the compiled copy of a CSV",
        description="Describe a CSV file, or a compiled copy of one (a directory in the cache): "
        "rows, features, id length statistics, each feature's range, the file's identity (size, "
        "modification time, inode) and the cache key and location of its compiled copy. A CSV "
        "file not compiled yet is read in memory; nothing is written.",
    )
    inspect.add_argument("path", metavar="CSV-OR-CACHE", help="a CSV file, or a compiled copy's directory")
    inspect.add_argument("--cache-dir", metavar="DIR", help=cache_dir_help)
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")
    inspect.set_defaults(handler=inspect_command)
    return parser


# -- the cache directory -------------------------------------------------------


def service_cache_dir(explicit=None, environ=None):
    """The cache directory: ``explicit`` if given, else the one the service
    would use with this environment (``mab.config.load_config``'s
    ``cache_dir``), else ``MAB_CACHE_DIR`` or the default. An absolute path.
    A configuration that does not load is reported on stderr, not fatal: a
    pipeline may compile without one."""
    from mab.config import default_cache_dir, load_config
    from mab.errors import MabError

    if explicit:
        return os.path.abspath(explicit)
    environ = os.environ if environ is None else environ
    try:
        return load_config(environ).cache_dir
    except MabError as exc:
        if environ.get("MAB_CONFIG"):
            print(f"mab: note: {exc.message}; ignoring its cache_dir", file=sys.stderr)
    return os.path.abspath(environ.get("MAB_CACHE_DIR") or default_cache_dir())


# -- work done in a child process (see mab.cli.progress) -----------------------


def _compile(csv, cache_dir):
    from mab.stores.embedded import prepare

    started = time.perf_counter()
    target, built = prepare(csv, cache_dir)
    with open(os.path.join(target, "meta.json")) as f:
        meta = json.load(f)
    return {"path": target, "built": built, "seconds": time.perf_counter() - started, **meta}


def _validate(csv):
    from mab.stores.embedded import compile_csv

    started = time.perf_counter()
    columns, arrays = compile_csv(csv)
    return {"columns": columns, "rows": int(len(arrays["records"]) - 1), "seconds": time.perf_counter() - started}


def _describe_csv(csv):
    from mab.stores.embedded import compile_csv

    columns, arrays = compile_csv(csv)
    return table_summary(columns, arrays["records"])


# -- summaries -------------------------------------------------------------------


def table_summary(columns, records):
    """Rows, features, id lengths and value ranges of a compiled table.

    ``columns``: the header's names (id column first); ``records``: the
    store's record array (``mab.stores._table.record_dtype``), one per row
    plus the all-zero last record, which is not counted. Id lengths are in
    UTF-8 bytes. Returns a JSON-ready dict; statistics of an empty table
    are None.
    """
    import numpy as np

    n = len(records) - 1
    lengths = np.asarray(records["length"][:n])
    features = np.asarray(records["features"][:n])
    summary = {
        "rows": n,
        "id_column": columns[0],
        "features": list(columns[1:]),
        "id_bytes": None,
        "values": {},
    }
    if n:
        summary["id_bytes"] = {"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())}
    for j, name in enumerate(columns[1:]):
        column = features[:, j]
        summary["values"][name] = None if not n else {
            "min": float(column.min()),
            "max": float(column.max()),
            "mean": float(column.mean()),
            "zeros": int(np.count_nonzero(column == 0)),
            "all_integers": bool(np.all(column == np.floor(column))),
        }
    return summary


def file_identity(path):
    """What the cache key of ``path`` is made of, and more: a JSON-ready dict
    (absolute path, size in bytes, modification time in ns and as ISO 8601
    UTC, inode and device). Raises OSError."""
    stat = os.stat(path)
    return {
        "path": os.path.abspath(path),
        "bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "modified": datetime.datetime.fromtimestamp(stat.st_mtime_ns / 1e9, datetime.timezone.utc).isoformat(),
        "inode": stat.st_ino,
        "device": stat.st_dev,
    }


def cache_key(csv, cache_dir):
    """The compiled copy of ``csv`` in ``cache_dir``: where it is (or would
    be), whether it exists, and what its key is made of."""
    from mab.stores import _table
    from mab.stores.embedded import CACHE_FORMAT, cache_path

    stat = os.stat(csv)
    target = cache_path(csv, cache_dir)
    return {
        "directory": target,
        "compiled": os.path.exists(os.path.join(target, "meta.json")),
        "key": {"path": os.path.abspath(csv), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                "cache_format": CACHE_FORMAT, "hash_version": _table.HASH_VERSION},
    }


def describe(path, cache_dir):
    """Everything ``mab data inspect`` says about ``path`` (a CSV file or a
    compiled copy's directory), as a JSON-ready dict. Raises DataError for
    an invalid CSV, OSError for a file that cannot be read."""
    import numpy as np

    from mab.stores.embedded import cache_path

    if os.path.isdir(path):
        with open(os.path.join(path, "meta.json")) as f:
            meta = json.load(f)
        records = np.load(os.path.join(path, "records.npy"), mmap_mode="r")
        source = meta["source"]
        try:
            state = "current" if cache_path(source, os.path.dirname(os.path.abspath(path))) == os.path.abspath(path) \
                else "stale: the source file changed after it was compiled"
            identity = file_identity(source)
        except OSError as exc:
            state, identity = f"the source file is gone ({exc.strerror})", None
        return {
            "compiled_copy": {"directory": os.path.abspath(path), "state": state,
                              "build_seconds": meta.get("build_seconds")},
            "source": identity or {"path": source},
            **table_summary(meta["columns"], records),
        }
    identity = file_identity(path)
    cache = cache_key(path, cache_dir)
    if cache["compiled"]:
        described = describe(cache["directory"], cache_dir)
        described["cache"] = cache
        return described
    summary = run_with_progress(f"reading {path} ({_size(identity['bytes'])})", _describe_csv, path)
    return {"source": identity, "cache": cache, **summary}


# -- the commands --------------------------------------------------------------------


def _size(n_bytes):
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:,.0f} {unit}" if unit == "bytes" else f"{n_bytes:,.1f} {unit}"
        n_bytes /= 1024


def _fail(message):
    print(f"mab: {message}", file=sys.stderr)
    return 1


def demo_command(args):
    from mab.demo import write_items

    if args.items < 0:
        args.parser.error("--items must be >= 0")
    try:
        write_items(args.out, args.items, args.seed)
    except OSError as exc:
        return _fail(f"{args.out}: {exc.strerror}")
    print(f"wrote {args.items:,} items to {args.out}", file=sys.stderr)
    return 0


def _fold(csv, journal, environ, out):
    from mab.config import load_config
    from mab.feedback.fold import fold

    started = time.perf_counter()
    summary = fold(csv, journal, load_config(environ), out)
    return {**summary, "seconds": time.perf_counter() - started}


def compile_command(args):
    from mab.errors import MabError

    if args.events is None and (args.out or args.config):
        return _fail("--out and --config go with --events")
    environ = dict(os.environ)
    if args.config:
        environ["MAB_CONFIG"] = args.config
    if args.events is not None:
        from mab.feedback.journal import JournalCorrupt

        try:
            folded = run_with_progress(f"folding {args.events} into {args.csv}", _fold, args.csv, args.events,
                                       environ, args.out)
        except OSError as exc:
            return _fail(f"{exc.filename or args.csv}: {exc.strerror}")
        except MabError as exc:
            return _fail(exc.message)
        except JournalCorrupt as exc:
            return _fail(f"the journal: {exc}")
        print(f"folded {folded['events']:,} events of models {', '.join(folded['models'])} through event "
              f"{folded['through_seq']} into {folded['out']} ({folded['rows_updated']:,} rows updated, "
              f"{folded['rows_added']:,} added; {folded['events_file']} says so) in {folded['seconds']:.2f} s")
        args.csv = folded["out"]
    cache_dir = service_cache_dir(args.cache_dir, environ)
    try:
        size = _size(os.stat(args.csv).st_size)
        done = run_with_progress(f"compiling {args.csv} ({size})", _compile, args.csv, cache_dir)
    except OSError as exc:
        return _fail(f"{args.csv}: {exc.strerror}")
    except MabError as exc:
        return _fail(exc.message)
    features = ", ".join(done["columns"][1:])
    if done["built"]:
        print(f"compiled {args.csv} ({done['rows']:,} rows; features {features}) into {done['path']} "
              f"in {done['seconds']:.2f} s")
    else:
        print(f"{args.csv} ({done['rows']:,} rows; features {features}) is already compiled, "
              f"in {done['path']}: nothing to do")
    return 0


def validate_command(args):
    from mab.errors import MabError

    try:
        size = _size(os.stat(args.csv).st_size)
        checked = run_with_progress(f"checking {args.csv} ({size})", _validate, args.csv)
    except OSError as exc:
        return _fail(f"{args.csv}: {exc.strerror}")
    except MabError as exc:
        return _fail(exc.message)
    print(f"{args.csv}: valid: {checked['rows']:,} rows; id column {checked['columns'][0]!r}; "
          f"features {', '.join(checked['columns'][1:])} (checked in {checked['seconds']:.2f} s)")
    return 0


def inspect_command(args):
    from mab.errors import MabError

    cache_dir = service_cache_dir(args.cache_dir)
    try:
        described = describe(args.path, cache_dir)
    except OSError as exc:
        return _fail(f"{exc.filename or args.path}: {exc.strerror}")
    except (KeyError, ValueError) as exc:
        return _fail(f"{args.path}: not a compiled copy of a CSV file ({exc})")
    except MabError as exc:
        return _fail(exc.message)
    if args.json:
        print(json.dumps(described, indent=2))
    else:
        print(format_description(described))
    return 0


def _number(value):
    return f"{value:,.0f}" if float(value).is_integer() and abs(value) < 1e15 else f"{value:.6g}"


def format_description(d):
    """``describe``'s dict as aligned text lines."""
    lines = []

    def add(key, value):
        lines.append(f"{key + ':':<18}{value}")

    source = d["source"]
    add("source", source["path"])
    if "bytes" in source:
        add("file", f"{_size(source['bytes'])} ({source['bytes']:,} bytes), modified {source['modified']} "
                    f"(mtime_ns {source['mtime_ns']}), inode {source['inode']} on device {source['device']}")
    if "cache" in d:
        cache = d["cache"]
        key = cache["key"]
        add("cache key", f"the path, size and mtime_ns above, cache format {key['cache_format']}, "
                         f"hash version {key['hash_version']}")
        add("compiled copy", f"{cache['directory']}" + ("" if cache["compiled"] else " (not compiled yet)"))
    if "compiled_copy" in d:
        copy = d["compiled_copy"]
        if "cache" not in d:
            add("compiled copy", copy["directory"])
        add("state", copy["state"] + (f", built in {copy['build_seconds']} s" if copy.get("build_seconds") else ""))
    add("rows", f"{d['rows']:,}")
    add("id column", repr(d["id_column"]))
    ids = d["id_bytes"]
    add("id length", "-" if ids is None else f"{ids['min']}..{ids['max']} bytes, mean {ids['mean']:.1f}")
    add("features", ", ".join(d["features"]))
    for name, stats in d["values"].items():
        add(f"  {name}", "-" if stats is None else
            f"{_number(stats['min'])}..{_number(stats['max'])}, mean {stats['mean']:.6g}, "
            f"{stats['zeros']:,} zeros" + ("" if stats["all_integers"] else ", not all integers"))
    return "\n".join(lines)
