"""``mab standin``: the local stand-in of Vertex AI Feature Store's online
serving (``mab.testing.vertex_standin``), for trying the Vertex backends
without a Google account.

Its options are defined here, without importing the stand-in (which loads
the Google client libraries, seconds of start-up), so that ``mab --help``
stays fast; ``python -m mab.testing.vertex_standin`` uses the same ones.
"""

DESCRIPTION = (
    "Serve a CSV of features through local stand-ins of Vertex AI Feature Store's "
    "online-serving gRPC services (legacy Featurestore and Feature Online Store), and print the "
    "mab store settings that use it (save them to a file, run mab with MAB_CONFIG=<that file>). "
    "Stop it with Ctrl-C or SIGTERM."
)


def add_arguments(parser):
    """The stand-in's options, on ``parser``."""
    parser.add_argument("--data", required=True, help="CSV file: an id column, then feature columns")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: any free port)")
    parser.add_argument(
        "--backend", choices=("vertex-legacy", "vertex"), default="vertex-legacy",
        help="which mab backend the printed settings use (both APIs are always served)",
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every call")
    parser.add_argument("--fail-first", type=int, default=0, metavar="N", help="the first N calls fail with UNAVAILABLE")
    parser.add_argument("--hang", action="store_true", help="never answer (clients see their deadline)")
    parser.add_argument(
        "--max-ids", type=int, default=None, metavar="N",
        help="most entity ids per call (default: 100, the real service's limit)",
    )
    parser.add_argument(
        "--keys-per-message", type=int, default=0, metavar="N",
        help="streaming fetch: keys per response message (default 0: all keys of a request message in one)",
    )
    parser.add_argument("--shuffle", action="store_true", help="streaming fetch: answer keys out of order")


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "standin", help="a local stand-in of Vertex AI Feature Store's online serving",
        description=DESCRIPTION,
    )
    add_arguments(parser)
    parser.set_defaults(handler=run, parser=parser)
    return parser


def run(args):
    from mab.testing import vertex_standin

    return vertex_standin.run(args, args.parser)
