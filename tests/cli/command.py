"""Running the ``mab`` command for tests, as a user would: a process of its own."""

import os
import subprocess
import sys

from tests.serving import ROOT

#: The console script pip installed beside this interpreter.
MAB = os.path.join(os.path.dirname(sys.executable), "mab")


def environment(**overrides):
    """This environment without mab's variables (so the outer shell's
    MAB_DATA or MAB_CONFIG cannot leak in), plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAB_", "GUNICORN_")) and k != "WEB_CONCURRENCY"}
    env.pop("PYTHONPATH", None)
    env.update(overrides)
    return env


def run_mab(*args, cwd=None, env=None, input=None, timeout=120):
    """``python -m mab ARGS`` to completion: a CompletedProcess with text
    stdout and stderr. ``cwd`` defaults to the checkout's root."""
    return subprocess.run(
        [sys.executable, "-m", "mab", *map(str, args)],
        cwd=cwd or ROOT, env=environment(**(env or {})), input=input,
        capture_output=True, text=True, timeout=timeout,
    )
