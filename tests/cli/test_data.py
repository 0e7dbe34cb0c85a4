"""mab data: demo, validate, compile and inspect, run as a user runs them."""

import csv
import json
import os
import sys
import subprocess

import pytest

from mab.demo import write_items
from mab.stores.embedded import cache_path, prepare
from tests.cli.command import run_mab
from tests.serving import ROOT

# Ids of different lengths (3..14 bytes, one non-ASCII), counts that are not
# all integers, a zero.
SMALL_CSV = """item_id,successes,failures
abc,3,10
item-0000001,0,2.5
\u00e9t\u00e9-42,7,1e3
long-id-000042,12,0
"""

BAD_CSV = """item_id,successes,failures
a,1,2
b,-1,3
"""


@pytest.fixture
def small_csv(tmp_path):
    path = tmp_path / "small.csv"
    path.write_text(SMALL_CSV, encoding="utf-8")
    return path


@pytest.fixture
def bad_csv(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(BAD_CSV)
    return path


def expected_summary(path):
    """What inspect must say, computed here with the csv module."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    lengths = [len(row[0].encode()) for row in body]
    values = {}
    for j, name in enumerate(header[1:], 1):
        column = [float(row[j]) for row in body]
        values[name] = {"min": min(column), "max": max(column), "mean": pytest.approx(sum(column) / len(column)),
                        "zeros": column.count(0.0), "all_integers": all(v == int(v) for v in column)}
    return {"rows": len(body), "id_column": header[0], "features": header[1:],
            "id_bytes": {"min": min(lengths), "mean": pytest.approx(sum(lengths) / len(lengths)), "max": max(lengths)},
            "values": values}


# -- demo ------------------------------------------------------------------------------


def test_demo_writes_the_same_bytes_as_the_library_and_the_script(tmp_path):
    run = run_mab("data", "demo", "--items", "1500", "--seed", "7", "--out", tmp_path / "a" / "items.csv")
    assert run.returncode == 0, run.stderr
    assert "wrote 1,500 items" in run.stderr
    write_items(str(tmp_path / "b.csv"), 1500, seed=7)
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_demo_data.py"), "--items", "1500",
                    "--seed", "7", "--out", str(tmp_path / "c.csv")], check=True, capture_output=True)
    written = (tmp_path / "a" / "items.csv").read_bytes()
    assert written == (tmp_path / "b.csv").read_bytes() == (tmp_path / "c.csv").read_bytes()
    lines = written.decode().splitlines()
    assert lines[0] == "item_id,successes,failures" and len(lines) == 1501
    assert lines[1].startswith("item-000000,") and lines[-1].startswith("item-001499,")


def test_demo_default_path_is_relative_to_the_current_directory(tmp_path):
    run = run_mab("data", "demo", "--items", "3", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert len((tmp_path / "data" / "items.csv").read_text().splitlines()) == 4


def test_demo_refuses_negative_items(tmp_path):
    run = run_mab("data", "demo", "--items", "-1", "--out", tmp_path / "x.csv")
    assert run.returncode == 2 and "--items must be >= 0" in run.stderr
    assert not (tmp_path / "x.csv").exists()


# -- validate --------------------------------------------------------------------------


def test_validate_accepts_a_good_file_and_writes_nothing(tmp_path, small_csv):
    cache = tmp_path / "cache"
    before = set(os.listdir(tmp_path))
    run = run_mab("data", "validate", small_csv, env={"MAB_CACHE_DIR": str(cache)})
    assert run.returncode == 0, run.stderr
    assert "valid: 4 rows; id column 'item_id'; features successes, failures" in run.stdout
    assert set(os.listdir(tmp_path)) == before and not cache.exists()


def test_validate_names_the_bad_line(bad_csv):
    run = run_mab("data", "validate", bad_csv)
    assert run.returncode == 1
    assert run.stdout == ""
    assert f"mab: {bad_csv}: line 3, column 'successes'" in run.stderr


def test_validate_a_missing_file(tmp_path):
    run = run_mab("data", "validate", tmp_path / "absent.csv")
    assert run.returncode == 1 and "absent.csv: No such file or directory" in run.stderr


# -- compile ---------------------------------------------------------------------------


def test_compile_into_the_services_cache_directory(tmp_path, small_csv):
    cache = tmp_path / "cache"
    run = run_mab("data", "compile", small_csv, env={"MAB_CACHE_DIR": str(cache)})
    assert run.returncode == 0, run.stderr
    target = cache_path(str(small_csv), str(cache))
    assert run.stdout.startswith(f"compiled {small_csv} (4 rows; features successes, failures) into {target} in ")
    # Exactly the copy the service looks for: it finds it and builds nothing.
    assert prepare(str(small_csv), str(cache)) == (target, False)
    again = run_mab("data", "compile", small_csv, env={"MAB_CACHE_DIR": str(cache)})
    assert again.returncode == 0 and "is already compiled" in again.stdout and target in again.stdout


def test_compile_takes_the_cache_directory_of_the_configuration(tmp_path, small_csv):
    config = tmp_path / "mab.toml"
    cache = tmp_path / "from-config"
    config.write_text(f'cache_dir = "{cache}"\n[stores.default]\npath = "{small_csv}"\n')
    run = run_mab("data", "compile", small_csv, env={"MAB_CONFIG": str(config)})
    assert run.returncode == 0, run.stderr
    assert os.path.isdir(cache_path(str(small_csv), str(cache)))
    explicit = run_mab("data", "compile", small_csv, "--cache-dir", tmp_path / "explicit",
                       env={"MAB_CONFIG": str(config)})
    assert explicit.returncode == 0 and os.path.isdir(cache_path(str(small_csv), str(tmp_path / "explicit")))


def test_compile_refuses_a_bad_file_and_leaves_no_copy(tmp_path, bad_csv):
    cache = tmp_path / "cache"
    run = run_mab("data", "compile", bad_csv, "--cache-dir", cache)
    assert run.returncode == 1
    assert f"mab: {bad_csv}: line 3, column 'successes'" in run.stderr
    assert not os.path.exists(cache_path(str(bad_csv), str(cache)))


def test_compile_reports_progress_while_it_works(tmp_path):
    """Elapsed time on stderr while the child compiles (interval shortened:
    a file this test can afford compiles in well under the 5 s default)."""
    csv_path = tmp_path / "items.csv"
    write_items(str(csv_path), 300_000)
    script = (
        "import sys, mab.cli.progress as p; p.LOG_INTERVAL = 0.01; "
        "from mab.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    run = subprocess.run([sys.executable, "-c", script, "data", "compile", str(csv_path), "--cache-dir",
                          str(tmp_path / "cache")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"compiling {csv_path} (" in run.stderr and " s\n" in run.stderr
    assert run.stdout.startswith(f"compiled {csv_path} (300,000 rows")


# -- inspect ---------------------------------------------------------------------------


def test_inspect_a_csv_not_compiled_yet(tmp_path, small_csv):
    cache = tmp_path / "cache"
    run = run_mab("data", "inspect", "--json", small_csv, env={"MAB_CACHE_DIR": str(cache)})
    assert run.returncode == 0, run.stderr
    described = json.loads(run.stdout)
    assert {k: described[k] for k in expected_summary(small_csv)} == expected_summary(small_csv)
    stat = os.stat(small_csv)
    assert described["source"] == {
        "path": str(small_csv), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
        "modified": described["source"]["modified"], "inode": stat.st_ino, "device": stat.st_dev,
    }
    assert described["cache"]["directory"] == cache_path(str(small_csv), str(cache))
    assert described["cache"]["compiled"] is False and not cache.exists()     # nothing written
    assert described["cache"]["key"]["bytes"] == stat.st_size


def test_inspect_a_compiled_csv_and_its_copy(tmp_path, small_csv):
    cache = tmp_path / "cache"
    assert run_mab("data", "compile", small_csv, "--cache-dir", cache).returncode == 0
    target = cache_path(str(small_csv), str(cache))
    by_csv = json.loads(run_mab("data", "inspect", "--json", small_csv, "--cache-dir", cache).stdout)
    by_copy = json.loads(run_mab("data", "inspect", "--json", target).stdout)
    for described in (by_csv, by_copy):
        assert {k: described[k] for k in expected_summary(small_csv)} == expected_summary(small_csv)
        assert described["compiled_copy"]["directory"] == target
        assert described["compiled_copy"]["state"] == "current"
        assert described["source"]["path"] == str(small_csv)
    assert by_csv["cache"]["compiled"] is True
    text = run_mab("data", "inspect", target).stdout
    for line in ("rows:             4", "id length:        3..14 bytes", "state:            current",
                 "failures:       0..1,000, mean 253.125, 1 zeros, not all integers"):
        assert line in text, (line, text)


def test_inspect_says_a_copy_is_stale_after_the_file_changed(tmp_path, small_csv):
    cache = tmp_path / "cache"
    assert run_mab("data", "compile", small_csv, "--cache-dir", cache).returncode == 0
    target = cache_path(str(small_csv), str(cache))
    small_csv.write_text(SMALL_CSV + "one-more,1,1\n", encoding="utf-8")
    described = json.loads(run_mab("data", "inspect", "--json", target).stdout)
    assert described["compiled_copy"]["state"].startswith("stale") and described["rows"] == 4
    now = json.loads(run_mab("data", "inspect", "--json", small_csv, "--cache-dir", cache).stdout)
    assert now["rows"] == 5 and now["cache"]["compiled"] is False


def test_inspect_a_bad_file_or_not_a_copy(tmp_path, bad_csv):
    run = run_mab("data", "inspect", bad_csv, "--cache-dir", tmp_path / "cache")
    assert run.returncode == 1 and "line 3, column 'successes'" in run.stderr
    (tmp_path / "empty-dir").mkdir()
    run = run_mab("data", "inspect", tmp_path / "empty-dir")
    assert run.returncode == 1 and "meta.json: No such file or directory" in run.stderr


def test_compile_events_folds_the_journal_into_a_new_csv(make_config, items_csv, tmp_path):
    from mab.feedback import FeedbackNode
    from mab.feedback.events import Event
    from mab.stores.embedded import compile_csv, read_events_file

    journal = tmp_path / "journal"
    config = make_config({"feedback": {"journal": str(journal), "dedup_entries": 100}}, MAB_DATA=str(items_csv))
    node = FeedbackNode(config)
    node.submit([Event("a", "item-2", 1.0), Event("a", "new", 0.25)])
    node.close()
    toml = tmp_path / "mab.toml"
    toml.write_text(f'cache_dir = "{tmp_path / "cache"}"\n[stores.default]\npath = "{items_csv}"\n'
                    f'[feedback]\njournal = "{journal}"\n')
    result = run_mab("data", "compile", items_csv, "--events", journal, "--config", toml, "--out", tmp_path / "next.csv")
    assert result.returncode == 0, result.stderr
    assert "folded 2 events of models default through event 2 into" in result.stdout
    assert f"into {tmp_path / 'cache'}" in result.stdout      # the configuration's cache directory
    assert open(tmp_path / "next.csv").read().splitlines()[2:] == [
        "item-2,11,90", "item-3,0,0", "item-4,500,500", "item-5,1,1000", "new,0.25,0.75"]
    assert read_events_file(str(tmp_path / "next.csv"))["through_seq"] == 2
    assert compile_csv(str(tmp_path / "next.csv"))[1]["records"]["features"][1].tolist() == [11, 90]
    bad = run_mab("data", "compile", items_csv, "--out", tmp_path / "x.csv")
    assert bad.returncode == 1 and "go with --events" in bad.stderr
    unread = run_mab("data", "compile", tmp_path / "next.csv", "--events", journal, "--config", toml)
    assert unread.returncode == 1 and "no model of the configuration" in unread.stderr
