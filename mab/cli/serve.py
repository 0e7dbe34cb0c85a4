"""``mab serve``: gunicorn with mab's settings and hooks, from any directory.

It replaces itself (``exec``) with ``python -m gunicorn -c
<mab/gunicorn_conf.py> [ARGS...] mab.wsgi:app``. After the exec the process
is gunicorn's master, with the same PID, so signals (HUP to reload, TERM to
stop, TTIN/TTOU, USR2 to upgrade) reach gunicorn itself and nothing stands
between it and a process manager. That is the simplest way to keep all of
gunicorn's behaviour: gunicorn then runs exactly as ``python -m gunicorn``
does, its command line parsed by gunicorn, and its USR2 re-exec replays that
command line rather than ``mab``'s.
"""

import argparse
import os
import sys
from importlib.util import find_spec

APP = "mab.wsgi:app"

DESCRIPTION = """\
Serve predictions with gunicorn, using mab's gunicorn settings and hooks
(mab/gunicorn_conf.py in the installed package) and the WSGI app mab.wsgi:app,
from any directory. Every other argument goes to gunicorn:

    MAB_DATA=data/items.csv mab serve --bind 0.0.0.0:8080 --workers 4
    mab serve -- --help                  # gunicorn's own options

gunicorn's variables keep their meaning (WEB_CONCURRENCY, GUNICORN_CMD_ARGS),
and so do mab's: MAB_DATA (the CSV of the embedded store `default`),
MAB_CONFIG (a TOML configuration), MAB_CACHE_DIR, MAB_WORKER_CLASS,
MAB_TIMEOUT, ... (see the README). The process becomes gunicorn's master
(same PID): send it HUP to reload, TERM to stop."""


def config_path():
    """Path of the packaged gunicorn configuration file, ``mab/gunicorn_conf.py``.

    Found without importing it: the file computes its settings when it runs,
    and gunicorn runs it afresh at start and on each reload."""
    return find_spec("mab.gunicorn_conf").origin


def gunicorn_command(gunicorn_args, *, app=APP, python=None):
    """The argv that serves ``app`` with mab's gunicorn settings: a list of
    str, ``[python, "-m", "gunicorn", "-c", config_path(), *gunicorn_args, app]``.

    A ``-c``/``--config`` among ``gunicorn_args`` comes later and so wins
    (gunicorn keeps the last)."""
    return [python or sys.executable, "-m", "gunicorn", "-c", config_path(), *gunicorn_args, app]


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "serve", help="serve predictions with gunicorn and mab's settings",
        description=DESCRIPTION, usage="%(prog)s [GUNICORN ARGS ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # gunicorn's options must reach gunicorn whole, never be taken for
        # abbreviations of ours.
        allow_abbrev=False,
    )
    parser.set_defaults(handler=run, passes_extra_args=True)
    return parser


def run(args, extra):
    """Exec gunicorn; returns only if the exec fails (OSError propagates)."""
    if extra[:1] == ["--"]:
        extra = extra[1:]
    command = gunicorn_command(extra)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
