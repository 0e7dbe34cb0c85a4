"""What the gunicorn master checks before it forks a worker.

A worker loads its stores (``mab.service.PredictionService.load``): each
store's ``load()``, then every model's ``check()`` against its store. For
the embedded stores the master runs those same calls first, on the same
data, and pins what it checked for the workers it forks
(``mab.stores.embedded.pin``). So a file the workers could not serve stops
the start with one message, instead of passing the master and then failing
in every worker, which never stops on its own and answers every request 503.

Remote stores are only configured here: their clients must be created after
the fork, in each worker.

The configuration is pinned the same way (``checked_config``): a worker
serves the configuration the master checked, not the file as it is when
the worker happens to start. On a reload (HUP) the master checks the
configuration and data again (``reload``): if they pass, the new workers
serve them; if not, the error is logged and kept (``last_reload``, shown
by /ready), and the new workers serve what was checked before. A reload
compiles a changed file in a child process at a lower CPU priority
(``compile_niced``): the old workers serve meanwhile, and on a busy
machine they come first.
"""

import json
import logging
import os
import subprocess
import sys
import time

from mab.errors import DataError, MabError
from mab.model import BetaModel
from mab.stores import create_store, embedded

log = logging.getLogger(__name__)

# The niceness of a reload's compile (``compile_niced``; MAB_COMPILE_NICENESS
# in mab/gunicorn_conf.py): at 10 a process gets about a tenth of the CPU
# share of a worker (at 0) on a contended core, so the compile takes mostly
# the CPU the workers leave idle: on a saturated machine it takes minutes.
COMPILE_NICENESS = 10

# Set in the gunicorn master; every worker it forks inherits them.
_checked_config = None
_last_reload = None


def checked_config():
    """The configuration this process (or the master that forked it) checked
    last with ``start`` or a ``reload`` that passed; None if none."""
    return _checked_config


def last_reload():
    """The last reload's outcome: None if there was none, else a dict with
    ``status`` ("applied" or "refused"), ``at`` (Unix time) and, when
    refused, ``error`` (the message naming the file and line, or the key)
    and ``serving`` ({store: the compiled copy still served})."""
    return None if _last_reload is None else dict(_last_reload)


def start(load_config):
    """The master's check at start: ``load_config()``, then
    ``check_embedded_stores``; pins the configuration. Returns ``{store
    name: compiled copy}``; raises ``MabError``."""
    global _checked_config
    config = load_config()
    checked = check_embedded_stores(config)
    _checked_config = config
    return checked


def reload(load_config, niceness=COMPILE_NICENESS):
    """The master's check on HUP, before it spawns the new workers: as
    ``start``, but a changed file is compiled at ``niceness``
    (``compile_niced``), a ``MabError`` is recorded (``last_reload``) and
    returned, not raised, and what was pinned before stays pinned.
    Returns ``(checked, error)``: ``({store: compiled copy}, None)`` or
    ``(None, message)``."""
    global _checked_config, _last_reload
    try:
        config = load_config()
        compile_niced(config, niceness)
        checked = check_embedded_stores(config)
    except MabError as exc:
        _last_reload = {"status": "refused", "at": time.time(), "error": exc.message,
                        "serving": {path: copy for path, copy in embedded.pinned().items()}}
        return None, exc.message
    _checked_config = config
    _last_reload = {"status": "applied", "at": time.time()}
    return checked, None


def compile_niced(config, niceness=COMPILE_NICENESS):
    """Compile every embedded store's file of ``config`` that has no compiled
    copy yet, each in a child process at ``niceness``
    (``python -c "...compile_child()"``: a new interpreter, not a fork of
    this one). Then ``check_embedded_stores`` finds them compiled. Raises
    ``DataError`` with the message the compile gave (naming the file and
    the line)."""
    for settings in config.stores.values():
        if settings.backend != "embedded":
            continue
        try:
            target = embedded.cache_path(settings.path, config.cache_dir)
        except OSError:
            continue            # a file that is not there: check_embedded_stores says so
        if os.path.exists(os.path.join(target, "meta.json")):
            continue
        child = subprocess.run(
            [sys.executable, "-c", "from mab.preflight import compile_child; compile_child()",
             settings.path, config.cache_dir, str(niceness)],
            capture_output=True, text=True,
        )
        if child.returncode != 0:
            raise DataError(child.stderr.strip() or f"{settings.path}: compiling it failed "
                            f"(exit status {child.returncode})")
        meta = json.loads(child.stdout)
        log.info("compiled %s (%d rows) into %s in %.2fs, at niceness %d", settings.path, meta["rows"],
                 meta["target"], meta["build_seconds"], meta["niceness"])


def compile_child():
    """``compile_niced``'s child: ``sys.argv[1:]`` are the CSV file, the
    cache directory and the niceness to add. Prints the compiled copy's
    meta.json, its path (``target``) and the niceness it ran at as JSON;
    or the error's message on stderr, and exits 1."""
    path, cache_dir, niceness = sys.argv[1], sys.argv[2], int(sys.argv[3])
    niceness = os.nice(niceness)
    try:
        target, _ = embedded.prepare(path, cache_dir)
    except DataError as exc:
        sys.stderr.write(exc.message)
        sys.exit(1)
    except Exception as exc:        # reported whole, as the master's message
        sys.stderr.write(f"{path}: compiling it failed: {exc!r}")
        sys.exit(1)
    with open(os.path.join(target, "meta.json")) as f:
        print(json.dumps({**json.load(f), "target": target, "niceness": niceness}))


def check_embedded_stores(config):
    """Compile (or find compiled), map and check every embedded store of
    ``config`` and every model on it, release them, then pin the checked
    copies for this process and the workers it forks.

    Returns ``{store name: compiled copy}``. Raises ``DataError`` for a file
    that cannot be read exactly (the message names the file and the line),
    ``ConfigError`` for a model whose features the file lacks. Nothing is
    pinned unless every store passes.
    """
    checked = {}
    copies = {}
    for name, settings in config.stores.items():
        if settings.backend != "embedded":
            continue
        store = create_store(settings, config.cache_dir)
        target, built = store.prepare()
        try:
            store.open_compiled(target, built=built)
            for model_config in config.models.values():
                if model_config.store == name:
                    BetaModel(model_config, store).check()
            if store.describe()["items"] == 0:
                log.warning("store %r (%s) has no rows: every item will be scored from its prior", name, settings.path)
        finally:
            store.close()
        checked[name] = target
        copies[settings.path] = target
    embedded.pin(copies)
    return checked
