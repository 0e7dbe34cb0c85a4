"""On a reload, old workers serve until their replacements are ready.

gunicorn's reload (``Arbiter.reload`` in gunicorn 23-27) spawns the new
workers and, in the same call (``manage_workers``), sends the old ones
TERM: the old ones stop taking connections while the new ones are still
importing the application and mapping their stores. Connections and
requests then wait in the listening socket's backlog for as long as that
takes, and the worker's admission control answers the longest waiters 503
(measured: docs/deploy.md, "Data refreshes and rollouts").

gunicorn's hooks cannot hold the TERM back, so the old worker holds back
its own drain instead. The master tells the workers, through a small
directory of files that every worker inherits the path of:

1. ``begin_reload`` (the master's ``on_reload`` hook, before it spawns the
   new workers): workers of age ``<= last_age`` are being replaced by
   ``workers`` new ones.
2. ``announce_ready`` (a new worker's ``post_worker_init`` hook, once its
   application has loaded): one more replacement is ready.
3. ``replacements_pending`` (an old worker that got TERM,
   ``mab.http.worker``): true while fewer than ``workers`` replacements
   are ready and the reload is younger than ``wait_seconds``. Meanwhile
   the old worker serves as before; then it drains.

A TERM that is not part of a reload (the server stopping, a worker
recycled by ``max_requests``) finds no reload naming the worker, and the
drain starts at once. gunicorn ages its workers 1, 2, 3, ... in the order it
spawns them (``Arbiter.worker_age``), so an age tells old from new.
"""

import json
import os
import shutil
import tempfile
import time

RELOAD_FILE = "reload.json"
READY_PREFIX = "ready-"

# Set in the master by ``prepare``; inherited by every worker it forks.
_directory = None


def prepare():
    """In the master, before any worker: a fresh directory for this server's
    handover files. Returns its path."""
    global _directory
    _directory = tempfile.mkdtemp(prefix="mab-handover-")
    return _directory


def cleanup():
    """In the master, as it exits: remove the directory."""
    global _directory
    if _directory is not None:
        shutil.rmtree(_directory, ignore_errors=True)
        _directory = None


def begin_reload(last_age, workers, wait_seconds):
    """In the master, before it spawns the new workers of a reload: workers
    of age ``<= last_age`` wait for ``workers`` replacements, for at most
    ``wait_seconds``. Written beside and renamed, so a worker reads all of
    it or the reload before."""
    if _directory is None:
        return
    for name in os.listdir(_directory):
        if name.startswith(READY_PREFIX) and int(name[len(READY_PREFIX):]) <= last_age:
            os.remove(os.path.join(_directory, name))
    partial = os.path.join(_directory, RELOAD_FILE + ".partial")
    with open(partial, "w") as f:
        json.dump({"last_age": last_age, "workers": workers, "until": time.time() + wait_seconds}, f)
    os.replace(partial, os.path.join(_directory, RELOAD_FILE))


def announce_ready(age):
    """In a new worker, once it can answer: it is ready."""
    if _directory is None:
        return
    with open(os.path.join(_directory, f"{READY_PREFIX}{age}"), "w"):
        pass


def replacements_pending(age):
    """In a worker of age ``age`` that got TERM: whether a reload is
    replacing it and its replacements are not all ready yet (nor has the
    reload's wait run out). False when no reload names it."""
    if _directory is None:
        return False
    try:
        with open(os.path.join(_directory, RELOAD_FILE)) as f:
            reload = json.load(f)
        names = os.listdir(_directory)
    except (OSError, ValueError):
        return False
    if age > reload["last_age"] or time.time() > reload["until"]:
        return False
    ready = sum(1 for name in names
                if name.startswith(READY_PREFIX) and int(name[len(READY_PREFIX):]) > reload["last_age"])
    return ready < reload["workers"]
