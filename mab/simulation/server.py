"""Starting the real service for a simulation: data, configuration, gunicorn.

Each setting is a model on a store of its own (an embedded CSV holding every
item with zero counts), so the online updates of one setting never reach
another. The configuration turns on what the simulation needs, with the key
names of the issue-11 contract (docs/decisions.md and docs/feedback.md of
the merged work are the reference; ``service_config`` is the one place to
change if a name differs):

* per model: ``log_fraction = 1.0`` (log every decision), ``online_updates
  = true`` (rewards move the counts at once), ``half_life_seconds`` when the
  setting decays;
* ``[decision_log]``: ``sink = "parquet"`` into ``directory``;
* ``[feedback]``: ``journal``, the durable journal of reward events.

The server is ``mab serve`` (gunicorn with mab's settings) in its own
session on 127.0.0.1 and a free port, stopped by its PID with SIGTERM so
that the decision log's writer flushes its files.
"""

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import tomli_w

from mab.cli.serve import gunicorn_command
from mab.testing.processes import free_port, kill_session, terminate


@dataclass(frozen=True)
class Setting:
    """A model setting to simulate: its name, Beta prior and half-life (None: no decay)."""

    name: str
    prior_alpha: float = 1.0
    prior_beta: float = 1.0
    half_life_seconds: float | None = None

    @classmethod
    def parse(cls, text):
        """``NAME:ALPHA,BETA[,HALF_LIFE]``, e.g. ``ts:1,1`` or ``decay:1,1,600``. Raises ValueError."""
        name, sep, rest = text.partition(":")
        if not sep or not name or not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"a setting is NAME:ALPHA,BETA[,HALF_LIFE] with NAME of letters, digits, - and _; "
                             f"got {text!r}")
        try:
            numbers = [float(x) for x in rest.split(",")]
        except ValueError:
            raise ValueError(f"{text!r}: ALPHA, BETA and HALF_LIFE must be numbers") from None
        if len(numbers) not in (2, 3) or not all(x > 0 for x in numbers):
            raise ValueError(f"{text!r}: give ALPHA,BETA or ALPHA,BETA,HALF_LIFE, all > 0")
        return cls(name, numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else None)

    def model_table(self):
        """The [models.NAME] keys of this setting (prior and decay only)."""
        table = {"prior_alpha": self.prior_alpha, "prior_beta": self.prior_beta}
        if self.half_life_seconds is not None:
            table["half_life_seconds"] = self.half_life_seconds
        return table


def write_store(path, item_ids):
    """An embedded-store CSV holding every item with zero counts."""
    with open(path, "w") as f:
        f.write("item_id,successes,failures\n")
        f.writelines(f"{item},0,0\n" for item in item_ids)


def service_config(settings, data_dir, log_dir, journal):
    """The service's configuration for ``settings``: a dict to write as TOML."""
    stores, models = {}, {}
    for setting in settings:
        stores[setting.name] = {"path": os.path.join(data_dir, f"{setting.name}.csv")}
        models[setting.name] = dict(setting.model_table(), store=setting.name, log_fraction=1.0,
                                    online_updates=True)
    return {
        "cache_dir": os.path.join(data_dir, "cache"),
        "stores": stores,
        "models": models,
        "decision_log": {"sink": "parquet", "directory": log_dir},
        "feedback": {"journal": journal},
    }


class ServedService:
    """The real service for ``settings`` over ``item_ids``, under ``workdir``.

    ``start()`` writes the stores and the configuration, starts ``mab serve``
    and waits until /ready answers 200; ``stop()`` stops it (SIGTERM, the
    decision log flushes) and anything left in its session. ``url``,
    ``log_dir`` (the decision log's Parquet files), ``journal`` and
    ``output()`` (gunicorn's log) are for the caller. Raises RuntimeError
    when the server exits or is not ready within ``ready_timeout``.
    """

    def __init__(self, workdir, settings, item_ids, *, workers=2, ready_timeout=120):
        self.workdir = os.path.abspath(workdir)
        self.settings = list(settings)
        self.item_ids = list(item_ids)
        self.workers = workers
        self.ready_timeout = ready_timeout
        self.data_dir = os.path.join(self.workdir, "data")
        self.log_dir = os.path.join(self.workdir, "decisions")
        self.journal = os.path.join(self.workdir, "feedback.journal")
        self.config_path = os.path.join(self.workdir, "mab.toml")
        self.log_path = os.path.join(self.workdir, "server.log")
        self.port = None
        self.process = None
        self._log = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        os.makedirs(self.data_dir, exist_ok=True)
        os.makedirs(self.log_dir, exist_ok=True)
        for setting in self.settings:
            write_store(os.path.join(self.data_dir, f"{setting.name}.csv"), self.item_ids)
        with open(self.config_path, "wb") as f:
            tomli_w.dump(service_config(self.settings, self.data_dir, self.log_dir, self.journal), f)
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MAB_", "GUNICORN_"))}
        env.update(MAB_CONFIG=self.config_path, WEB_CONCURRENCY=str(self.workers),
                   GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{self.port}")
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(gunicorn_command([], python=sys.executable), env=env, cwd=self.workdir,
                                        stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited with status {self.process.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.url}/ready", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the service was not ready after {self.ready_timeout} s:\n{self.output()}")

    def output(self):
        try:
            with open(self.log_path) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        if self.process is not None:
            terminate(self.process)
            kill_session(self.process.pid)
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
