"""``mab evaluate``: what a candidate setting would have earned on logged traffic.

The work is ``mab.evaluation.evaluate``; this module parses the options,
reports progress on stderr and prints the table or the JSON.
"""

import sys
import time

DESCRIPTION = """\
Estimate, from a decision log and its rewards, the reward per decision and
at each of the first k positions that a candidate model setting (another
prior, another half-life) would have earned on the same traffic: IPS and
self-normalised IPS with confidence intervals, the logging policy's
propensities computed by Monte Carlo with the service's sampler.

  mab evaluate decisions/ rewards.jsonl --model-config candidate.toml

LOG is a Parquet file, a directory of them (every worker's files) or a glob;
REWARDS is a Parquet or JSON Lines file (decision_id, item_id, reward in
[0, 1]), a directory or a glob. The candidate is the [models.NAME] table of a
mab configuration file. See docs/evaluation.md for the estimators, their
assumptions and the overlap rule."""


def add_parser(subparsers):
    from argparse import RawDescriptionHelpFormatter

    parser = subparsers.add_parser(
        "evaluate", help="estimate a candidate setting's reward from a decision log",
        description=DESCRIPTION, formatter_class=RawDescriptionHelpFormatter,
    )
    parser.add_argument("log", metavar="LOG", help="decision log: Parquet file, directory or glob")
    parser.add_argument("rewards", metavar="REWARDS", help="rewards: Parquet or JSON Lines file, directory or glob")
    parser.add_argument("--model-config", required=True, metavar="CANDIDATE.toml",
                        help="a mab configuration file holding the candidate model's table")
    parser.add_argument("--model", metavar="NAME",
                        help="the model to evaluate: its table in the file and its decisions in the log "
                             "(default: the file's only model; the log's decisions of that name, else its only model)")
    parser.add_argument("--positions", type=int, metavar="K",
                        help="evaluate the first K positions (default: the longest ranking in the log)")
    parser.add_argument("--target-se", type=float, default=0.71, metavar="E",
                        help="relative standard error of each inverse propensity: ceil(1/E^2) hits per "
                             "position (default 0.71: 2 hits)")
    parser.add_argument("--min-propensity", type=float, default=0.005, metavar="P",
                        help="logged positions whose logging propensity is below about P get weight 0 "
                             "(default 0.005; it sets the most draws, hits / P)")
    parser.add_argument("--min-draws", type=int, default=16, metavar="N",
                        help="fewest rankings drawn per decision and policy (default 16)")
    parser.add_argument("--max-unsupported", type=float, default=0.05, metavar="S",
                        help="leave out decisions where the candidate puts more than S of its slots on items "
                             "out of the logging policy's reach (default 0.05)")
    parser.add_argument("--confidence", type=float, default=0.95, metavar="C",
                        help="confidence of the intervals (default 0.95)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo draws (default 0)")
    parser.add_argument("--threads", type=int, metavar="N", help="threads (default: every core available)")
    parser.add_argument("--batch-rows", type=int, default=20_000, metavar="N",
                        help="decisions per batch (default 20,000; memory grows with it)")
    parser.add_argument("--memory-limit", metavar="SIZE",
                        help="DuckDB's memory limit, e.g. 4GB (default 2GB; beyond it DuckDB spills to $TMPDIR)")
    parser.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    parser.add_argument("--output", metavar="FILE", help="also write the JSON report to FILE")
    parser.add_argument("--weights-out", metavar="FILE.parquet",
                        help="write each logged (decision, position)'s importance weight to this Parquet file "
                             "(the input of the fleet-scale SQL in docs/evaluation.md)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.set_defaults(handler=evaluate_command)
    return parser


class Progress:
    """Decisions done and elapsed time on ``stream``: redrawn in place on a
    terminal every 0.5 s, else a line every 5 s."""

    def __init__(self, stream, label="evaluated"):
        self.stream = stream
        self.label = label
        self.tty = stream.isatty()
        self.interval = 0.5 if self.tty else 5.0
        self.started = time.monotonic()
        self.last = self.started
        self.drawn = False

    def __call__(self, done, total):
        now = time.monotonic()
        if now - self.last < self.interval and done < total:
            return
        self.last = now
        line = f"{self.label} {done:,} of {total:,} decisions ({100 * done / max(total, 1):.0f}%), " \
               f"{now - self.started:.0f} s"
        if self.tty:
            self.stream.write("\r" + line + "\033[K")
            self.drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self):
        if self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _fail(message):
    print(f"mab evaluate: {message}", file=sys.stderr)
    return 1


def evaluate_command(args):
    from mab.errors import ConfigError
    from mab.evaluation.candidate import load_candidate
    from mab.evaluation.evaluate import evaluate
    from mab.evaluation.propensity import DrawSettings
    from mab.evaluation.readers import InputError
    from mab.evaluation.report import as_json, format_table

    if args.threads is not None and args.threads < 1:
        return _fail(f"--threads must be >= 1, got {args.threads}")
    if args.batch_rows < 1:
        return _fail(f"--batch-rows must be >= 1, got {args.batch_rows}")
    try:
        candidate = load_candidate(args.model_config, args.model)
        draws = DrawSettings(target_se=args.target_se, min_draws=args.min_draws,
                             min_propensity=args.min_propensity)
    except (ConfigError, ValueError) as exc:
        return _fail(str(exc))
    progress = None if args.quiet else Progress(sys.stderr)
    try:
        report = evaluate([args.log], [args.rewards], candidate, model=args.model, positions=args.positions,
                          draws=draws, seed=args.seed, confidence=args.confidence,
                          max_unsupported=args.max_unsupported, n_threads=args.threads,
                          batch_rows=args.batch_rows, progress=progress, weights_out=args.weights_out,
                          memory_limit=args.memory_limit)
    except (InputError, ValueError) as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{args.weights_out}: {exc.strerror or exc}")
    finally:
        if progress is not None:
            progress.close()
    text = as_json(report)
    if args.output:
        try:
            with open(args.output, "w") as f:
                f.write(text + "\n")
        except OSError as exc:
            return _fail(f"{args.output}: {exc.strerror}")
    print(text if args.json else format_table(report))
    return 0
