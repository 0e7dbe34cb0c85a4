"""``mab predict``: one request to a running server, from the shell.

It uses the standard library's HTTP client (urllib): one request, no
dependency worth adding.
"""

import json
import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8000"


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "predict", help="ask a running server for one prediction",
        description="Send one POST /predict to a running mab server and print the ranked items as "
        "a table (or, with --json, the answer as it came). Exit status 1 if the server answers "
        "with an error (its code and message are printed) or cannot be reached.",
    )
    parser.add_argument("items", nargs="+", metavar="ITEM",
                        help="item ids to rank; '-' reads more ids from standard input, one a line")
    parser.add_argument("--model", help="the model to use (default: the server's, 'default')")
    parser.add_argument("--user", metavar="USER", help="user_id, for models whose entity ids need one")
    parser.add_argument("--top-k", type=int, metavar="K", help="return the best K items only")
    parser.add_argument("--seed", type=int, metavar="S", help="seed (an unsigned 64-bit integer) to replay an answer")
    parser.add_argument(
        "--url", default=os.environ.get("MAB_URL", DEFAULT_URL),
        help=f"the server (default: $MAB_URL, else {DEFAULT_URL})",
    )
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="give up after this long (default 10)")
    parser.add_argument("--json", action="store_true", help="print the server's JSON answer as it came")
    parser.set_defaults(handler=predict_command)
    return parser


def request_document(args, stdin=None):
    """The /predict body for these options: a dict."""
    item_ids = []
    for item in args.items:
        if item == "-":
            item_ids.extend(line.strip() for line in (stdin or sys.stdin) if line.strip())
        else:
            item_ids.append(item)
    document = {"item_ids": item_ids}
    for key, value in (("model", args.model), ("user_id", args.user), ("top_k", args.top_k), ("seed", args.seed)):
        if value is not None:
            document[key] = value
    return document


def format_answer(answer, served_by=None):
    """A /predict answer as a header line and a ranked table."""
    missing = answer.get("missing", 0)
    header = [f"model {answer.get('model')!r}", f"seed {answer.get('seed')}",
              f"{missing} missing (scored from the prior)"]
    if answer.get("degraded"):
        header.append(f"DEGRADED: {answer.get('degraded_items', 0)} items' features could not be fetched")
    if served_by:
        header.append(f"served by {served_by}")
    if answer.get("decision_id"):
        header.append(f"decision {answer['decision_id']}")
    ids = answer.get("item_ids", [])
    scores = answer.get("scores", [])
    width = max([len("item")] + [len(str(i)) for i in ids])
    lines = [", ".join(header), f"{'rank':>4}  {'item':<{width}}  score"]
    lines += [f"{rank:>4}  {item:<{width}}  {score:.6g}" for rank, (item, score) in enumerate(zip(ids, scores), 1)]
    return "\n".join(lines)


def _error_message(status, reason, body):
    try:
        error = json.loads(body)["error"]
        return f"{status} {reason}: {error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        text = body.decode("utf-8", "replace").strip()
        return f"{status} {reason}" + (f": {text[:500]}" if text else "")


def predict_command(args):
    url = args.url.rstrip("/") + "/predict"
    if not url.startswith(("http://", "https://")):
        print(f"mab: --url must start with http:// or https://, got {args.url!r}", file=sys.stderr)
        return 2
    body = json.dumps(request_document(args)).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            raw = response.read()
            served_by = response.headers.get("X-Served-By")
    except urllib.error.HTTPError as exc:
        message = _error_message(exc.code, exc.reason, exc.read())
        retry = exc.headers.get("Retry-After")
        print(f"mab: {url}: {message}" + (f" (retry after {retry} s)" if retry else ""), file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        reason = getattr(exc.reason, "strerror", None) or str(exc.reason)
        print(f"mab: cannot reach {args.url}: {reason} (is the server running? `mab serve` starts one)",
              file=sys.stderr)
        return 1
    except (TimeoutError, OSError) as exc:
        print(f"mab: {url}: {exc.strerror or str(exc) or 'timed out'} (timeout {args.timeout:g} s)", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(raw.decode() + ("" if raw.endswith(b"\n") else "\n"))
    else:
        print(format_answer(json.loads(raw), served_by))
    return 0
