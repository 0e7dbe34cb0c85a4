"""The ``mab`` command: one entry point for serving, data, configuration,
predictions, benchmarks and the Vertex stand-in.

Each subcommand lives in its own module (``serve``, ``data``, ``config``,
``predict``, ``bench``, ``standin``, ``evaluate``, ``simulate``), which adds its parser and names its
handler. Handlers import what they need when they run, so ``mab --help`` and
``mab predict`` start in a fraction of a second (the stand-in alone loads the
Google client libraries, seconds of start-up).

Exit status: 0 on success, 1 when the command failed (the message says why),
2 for a usage error (argparse's convention).
"""

import argparse
import os
import sys

import mab
from mab.cli import bench, config, data, evaluate, predict, serve, simulate, standin

COMMANDS = (serve, data, config, predict, bench, standin, evaluate, simulate)


def build_parser():
    """The ``mab`` argument parser, with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="mab",
        description="mab: a Thompson-sampling bandit prediction service. "
        "Run `mab COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"mab {mab.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv=None):
    """Run the command ``argv`` (default ``sys.argv[1:]``) names; returns its exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "passes_extra_args", False):
        return args.handler(args, extra)      # mab serve: the rest is gunicorn's
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("mab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`mab config check | head`). Python flushes
        # stdout again at exit: point it at /dev/null so that does not fail
        # too (the recipe of the signal module's documentation).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
