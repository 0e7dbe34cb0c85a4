#!/usr/bin/env python3
"""The end-to-end benchmark: ``mab bench`` (the code is in ``mab.bench``).

Kept so that ``.venv/bin/python scripts/bench.py ...`` works as before; it
takes the same options (``--help``). The names other scripts and the tests
use are re-exported from the package.
"""

import sys

from mab.bench.load import WRK_SCRIPT, ensure_wrk, read_ids, run_wrk, write_bodies, zipf_weights  # noqa: F401
from mab.bench.systems import CLK_TCK, cpu_ticks, make_mab, make_vertex, python, session_pids  # noqa: F401
from mab.cli.bench import main
from mab.testing.processes import free_port, terminate  # noqa: F401

if __name__ == "__main__":
    sys.exit(main(prog="scripts/bench.py"))
