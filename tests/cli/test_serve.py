"""mab serve: gunicorn with the packaged settings, from any directory."""

import http.client
import os
import signal
import subprocess
import sys
import time

import pytest

from mab.cli.serve import APP, config_path, gunicorn_command
from mab.demo import write_items
from tests.cli.command import environment, run_mab
from tests.serving import ROOT, free_port, terminate


def get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def wait_for(condition, timeout=60, what="the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} did not hold within {timeout}s")


@pytest.fixture
def elsewhere(tmp_path):
    """A directory outside the checkout, with a small CSV in it."""
    directory = tmp_path / "elsewhere"
    directory.mkdir()
    write_items(str(directory / "items.csv"), 500)
    assert not os.path.commonpath([str(directory), ROOT]) == ROOT
    return directory


def test_serves_from_a_directory_outside_the_checkout_and_reloads_on_hup(elsewhere, tmp_path):
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    # A relative MAB_DATA, relative to where mab serve runs; no PYTHONPATH:
    # only the installed package is importable, not the checkout's app.py.
    process = subprocess.Popen(
        [sys.executable, "-m", "mab", "serve", "--bind", f"127.0.0.1:{port}"],
        cwd=elsewhere, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env=environment(MAB_DATA="items.csv", MAB_CACHE_DIR=str(tmp_path / "cache"), WEB_CONCURRENCY="1"),
    )
    try:
        def healthy():
            if process.poll() is not None:
                raise AssertionError(f"mab serve exited with {process.returncode}:\n{(tmp_path / 'serve.log').read_text()}")
            try:
                return get(port, "/health")[0] == 200 and get(port, "/ready")[0] == 200
            except OSError:
                return False

        wait_for(healthy, what="/health and /ready answering 200")
        assert get(port, "/health") == (200, b'{"status":"ok"}')
        # mab serve exec'd gunicorn: the PID we started is gunicorn's master,
        # running the packaged settings, so signals reach gunicorn itself.
        with open(f"/proc/{process.pid}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
        assert b"gunicorn" in cmdline and config_path().encode() in cmdline and APP.encode() in cmdline
        first = wait_for(lambda: children(process.pid), what="a worker")
        os.kill(process.pid, signal.SIGHUP)
        replaced = wait_for(lambda: (c := children(process.pid)) and not c & first and c,
                            what="the worker replaced after HUP")
        assert len(replaced) == 1
        wait_for(healthy, what="/ready after the reload")
    finally:
        terminate(process)
        log.close()
    assert process.returncode == 0, (tmp_path / "serve.log").read_text()
    assert "Handling signal: hup" in (tmp_path / "serve.log").read_text()


def test_a_bad_start_stops_with_the_message(elsewhere, tmp_path):
    run = run_mab("serve", "--bind", f"127.0.0.1:{free_port()}", cwd=elsewhere,
                  env={"MAB_DATA": "absent.csv", "MAB_CACHE_DIR": str(tmp_path / "cache")})
    assert run.returncode != 0
    assert "absent.csv: No such file or directory" in run.stdout + run.stderr


def test_arguments_reach_gunicorn(elsewhere):
    for argv in (["serve", "--version"], ["serve", "--", "--version"]):
        run = run_mab(*argv, cwd=elsewhere)
        assert run.returncode == 0 and "gunicorn" in run.stdout + run.stderr, run


def test_gunicorn_command():
    command = gunicorn_command(["--bind", "x:1", "-c", "mine.py"], python="/py")
    assert command == ["/py", "-m", "gunicorn", "-c", config_path(), "--bind", "x:1", "-c", "mine.py", APP]
    assert config_path() == os.path.join(ROOT, "mab", "gunicorn_conf.py")


def test_the_checkouts_shim_has_the_packaged_settings(tmp_path):
    """gunicorn.conf.py at the root takes every setting and hook of
    mab/gunicorn_conf.py, read by gunicorn's own loader, and reads the
    environment afresh on each load (as on a reload)."""
    script = f"""
import json, os, sys
from gunicorn.config import Config
from gunicorn.app.base import Application

class Loader(Application):
    def init(self, parser, opts, args): pass
    def load(self): pass

def settings(path):
    app = Loader.__new__(Loader)
    app.usage, app.prog, app.cfg, app.callable = None, None, Config(), None
    app.load_config_from_file(path)
    def show(value):
        return f"{{value.__code__.co_filename}}:{{value.__name__}}" if callable(value) else value
    return {{k: show(v.get()) for k, v in app.cfg.settings.items()}}

first = settings({os.path.join(ROOT, "gunicorn.conf.py")!r})
packaged = settings({config_path()!r})
os.environ["MAB_TIMEOUT"] = "77"
again = settings({os.path.join(ROOT, "gunicorn.conf.py")!r})
print(json.dumps([first, packaged, again], default=str))
"""
    import json

    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env=environment(MAB_CACHE_DIR=str(tmp_path)), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    first, packaged, again = json.loads(run.stdout)
    assert first == packaged
    assert first["worker_class"] == "mab.worker.HttptoolsWorker"
    for hook in ("on_starting", "post_fork", "post_worker_init", "worker_exit"):
        assert first[hook] == f"{config_path()}:{hook}"       # not gunicorn's default
    assert first["timeout"] == 30 and again["timeout"] == 77
