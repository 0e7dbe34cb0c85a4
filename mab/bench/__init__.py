"""The end-to-end HTTP benchmark behind ``mab bench`` (and ``scripts/bench.py``).

- ``systems``: the systems under test (mab under gunicorn in its variants,
  the Vertex stand-in, the Go peer, an external URL), started pinned to
  cores and stopped by PID, with their CPU time read from /proc;
- ``load``: the request bodies and wrk, one step of load at a time;
- ``report``: medians over rounds, the Markdown table, the chart;
- ``run``: the run itself, systems taking turns step by step.

``mab bench --help`` (``mab.cli.bench``) describes the options.
"""
