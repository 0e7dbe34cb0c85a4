"""``mab bench``: the end-to-end HTTP benchmark (the code is ``mab.bench``)."""

import argparse
import os

DESCRIPTION = """\
End-to-end HTTP benchmark of the mab service, side by side with its peers.

It starts every system under test itself, each pinned with taskset to the
server cores, waits until each is ready, then drives load with wrk (a C load
generator, installed from Debian's packages if missing) pinned to the other
cores. Systems take turns: every round runs each concurrency step against
each system in turn, so the drift of a shared, noisy machine hits all of
them alike; the report gives medians over rounds and the ratio of each
system to the first. Everything it starts it stops by PID, also on Ctrl-C.
It prints a line per step to stderr as it goes.

For each step it reports requests/s, predictions/s, p50/p90/p99/max latency,
errors, the server's CPU utilisation and its CPU time per request (read from
/proc: the steadiest figure on a shared machine), in total and per worker.

    mab bench                        # mab vs the Go peers, 400 ids
    mab bench --systems mab,mab-sync --connections 16,64
    mab bench --ids 10000 --duration 5

Systems (--systems, comma-separated):
    mab          this service as `mab serve` runs it (mab/gunicorn_conf.py's
                 defaults: mab.worker.HttptoolsWorker, requests inline)
    mab-baseline the same with numpy's Generator.beta and per-id dict lookups
                 instead of the compiled sampler and index (mab.baseline)
    mab-sync     mab with gunicorn's sync worker
    mab-gthread  mab with gunicorn's gthread worker (4 threads)
    mab-nometrics  mab with its metrics off (MAB_METRICS=0), to measure what they cost
    mab-decisionlog  mab logging every decision to Parquet files (log_fraction = 1,
                 mab.decisions), to measure what the decision log costs; the files
                 are removed when it stops, after their count and size are printed
    mab-vertex-legacy, mab-vertex, mab-vertex-fetch
                 mab on the Vertex AI backends, served by the local stand-in
                 (mab standin, pinned to the load cores, with
                 --standin-latency-ms added to every call and
                 --standin-keys-per-message keys in each streamed answer);
                 mab-vertex reads with StreamingFetchFeatureValues (its
                 default), mab-vertex-fetch with one FetchFeatureValues per key
    mab-vertex-legacy-cache, mab-vertex-cache
                 the same with the per-worker feature cache on: 600 s TTL,
                 refreshed in the background after --cache-refresh-after
                 seconds (default 5, so refreshes run during the steps)
    go           the Go peer (--go-peer) with its pure-Go sampler (the stronger peer)
    go-cgo       the Go peer with its C++ sampler called through cgo
    url=URL      an already running server (no CPU figures)
    SYSTEM@VAR=VALUE+VAR=VALUE
                 SYSTEM with these environment variables set for its server,
                 e.g. mab-vertex@MAB_WORKER_THREADS=4 beside mab-vertex

Ids are drawn uniformly (each request's ids distinct) or, with --zipf S,
from a Zipf law of exponent S over the items (so most ids repeat across
requests, as popular items do); --bodies sets how many different request
bodies wrk rotates through."""


def checkout_root(module_file=__file__):
    """The root of the checkout this mab runs from (an editable install or a
    source tree), or None for an installed package. ``module_file``: the
    path of this module, mab/cli/bench.py."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(module_file))))
    markers = ("pyproject.toml", os.path.join("scripts", "serve"), os.path.join("mab", "gunicorn_conf.py"))
    return root if all(os.path.exists(os.path.join(root, m)) for m in markers) else None


def default_go_peer():
    """../shared/peers/go-peer beside a checkout; None outside one."""
    root = checkout_root()
    return os.path.normpath(os.path.join(root, "..", "shared", "peers", "go-peer")) if root else None


def default_results_dir():
    """bench-results/ at the root of a checkout, else in the current directory."""
    return os.path.join(checkout_root() or os.getcwd(), "bench-results")


def add_arguments(parser):
    """The benchmark's options, on ``parser`` (``mab bench``'s, or scripts/bench.py's)."""
    go_peer = default_go_peer()
    have_go = bool(go_peer and os.path.isdir(go_peer))
    parser.add_argument(
        "--systems", default="mab,go,go-cgo" if have_go else "mab",
        help="comma-separated; the first is the reference (default: mab,go,go-cgo where the Go peer's "
             "directory exists, else mab; here: %(default)s)",
    )
    parser.add_argument("--connections", default="32", help="comma-separated concurrency steps (default 32)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per step (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of load before measuring each system")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported (default 3)")
    parser.add_argument("--paced", default="", metavar="FRACTIONS",
                        help="also offer these fractions of each system's peak rate (e.g. 0.5,0.8) each round, "
                             "pacing each of --paced-connections connections")
    parser.add_argument("--paced-connections", type=int, default=64)
    parser.add_argument("--ids", type=int, default=400, help="item_ids per request (default 400)")
    parser.add_argument("--items", type=int, default=100_000, help="items in the generated data set")
    parser.add_argument("--data", help="CSV to serve (default: generated, --items items)")
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: one per server core)")
    parser.add_argument("--server-cores", default="0", help="taskset list for the servers (default 0)")
    parser.add_argument("--load-cores", default="1", help="taskset list for wrk (default 1)")
    parser.add_argument(
        "--go-peer", default=go_peer, metavar="DIR",
        help="the Go peer's directory, for the go and go-cgo systems (default, only when mab runs from a "
             f"checkout: ../shared/peers/go-peer beside it; here: {go_peer or 'none, not a checkout'})",
    )
    parser.add_argument("--standin-latency-ms", type=float, default=0.0,
                        help="latency the Vertex stand-in adds to every call (default 0)")
    parser.add_argument("--standin-keys-per-message", type=int, default=0, metavar="N",
                        help="keys per streamed answer of the stand-in (default 0: one answer per request message)")
    parser.add_argument("--cache-refresh-after", type=float, default=5.0, metavar="SECONDS",
                        help="cache_refresh_after_seconds of the -cache systems (default 5; their TTL is 600)")
    parser.add_argument("--zipf", type=float, metavar="S",
                        help="draw ids from a Zipf law of exponent S (e.g. 1.1) instead of uniformly")
    parser.add_argument("--bodies", type=int, default=32,
                        help="different request bodies wrk rotates through (default 32)")
    parser.add_argument(
        "--out",
        help="JSON results path (default bench-results/bench-<time>.json, at the root of a checkout, else in "
             "the current directory); the chart goes beside it",
    )
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
    parser.set_defaults(results_dir=default_results_dir())


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "bench", help="the end-to-end HTTP benchmark (wrk against mab and its peers)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)
    return parser


def run(args):
    from mab.bench.run import run as run_benchmark

    run_benchmark(args)
    return 0


def main(argv=None, prog=None):
    """The benchmark as a program of its own (scripts/bench.py)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
