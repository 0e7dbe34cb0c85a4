"""``mab simulate``: a synthetic world driving the real service, and a report.

The work is ``mab.simulation``; this module parses the options, starts the
service (or uses one at --url), runs the rounds, evaluates the settings
offline and writes the PNG and JSON report.
"""

import os
import sys

DESCRIPTION = """\
Drive the real service through POST /predict and POST /feedback with a
synthetic world of known click rates (drifting with --drift), one model per
setting, with online updates on and every decision logged. Then estimate
offline, with `mab evaluate`'s estimators on the first setting's logged
decisions, what every setting would have earned there, and compare with the
true values. Writes OUT/report.png (cumulative regret per setting; estimates
against the truth), OUT/report.json, the decision log and the rewards.

  mab simulate --out sim/ --steps 2000 --setting ts:1,1 --setting pessimist:1,30

Without --url the service is started here (mab serve on 127.0.0.1, a free
port) with a configuration written to OUT/service/mab.toml; with --url the
server must already be configured like it (see docs/evaluation.md), and
--log-dir must name its decision log's directory."""


def add_parser(subparsers):
    from argparse import RawDescriptionHelpFormatter

    parser = subparsers.add_parser(
        "simulate", help="simulate traffic with known click rates against the real service",
        description=DESCRIPTION, formatter_class=RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="where the report, log and rewards go")
    parser.add_argument("--setting", action="append", metavar="NAME:ALPHA,BETA[,HALF_LIFE]",
                        help="a model setting; repeat for several; the first is the logging policy of "
                             "the offline check (default: ts:1,1 and pessimist:1,30)")
    parser.add_argument("--steps", type=int, default=2000, help="rounds (default 2000)")
    parser.add_argument("--items", type=int, default=50, help="items in the world (default 50)")
    parser.add_argument("--candidates", type=int, metavar="N",
                        help="items per request, drawn anew each round (default: every item)")
    parser.add_argument("--top-k", type=int, default=5, help="positions shown (default 5)")
    parser.add_argument("--drift", type=float, default=0.0,
                        help="step of the click rates' random walk on the logit scale (default 0: static)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the world, the clicks and every request's draws: "
                             "a run is reproducible from it (default 0)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers of the started service (default 2)")
    parser.add_argument("--url", help="use the service at this URL instead of starting one")
    parser.add_argument("--log-dir", help="with --url: the directory of that service's decision log")
    parser.add_argument("--truth-draws", type=int, default=2000,
                        help="Monte Carlo draws per decision for the true values (default 2000)")
    parser.add_argument("--no-evaluate", action="store_true", help="skip the offline check")
    parser.set_defaults(handler=simulate_command)
    return parser


def _fail(message):
    print(f"mab simulate: {message}", file=sys.stderr)
    return 1


def simulate_command(args):
    import orjson

    from mab.cli.evaluate import Progress
    from mab.evaluation.readers import InputError
    from mab.simulation import report as sim_report
    from mab.simulation.client import HttpService, ServiceError
    from mab.simulation.environment import ClickEnvironment
    from mab.simulation.run import check_estimates, run
    from mab.simulation.server import ServedService, Setting

    try:
        settings = [Setting.parse(s) for s in (args.setting or ["ts:1,1", "pessimist:1,30"])]
        if len({s.name for s in settings}) != len(settings):
            raise ValueError("settings must have distinct names")
        if args.steps < 2:
            raise ValueError(f"--steps must be >= 2, got {args.steps}")
        if args.candidates is not None and not args.top_k <= args.candidates <= args.items:
            raise ValueError(f"--candidates must be in [--top-k, --items], got {args.candidates}")
        env = ClickEnvironment(args.items, args.top_k, seed=args.seed, drift=args.drift)
    except ValueError as exc:
        return _fail(str(exc))
    if args.url and not args.log_dir and not args.no_evaluate:
        return _fail("with --url, give --log-dir (the server's decision log) or --no-evaluate")

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    rewards_path = os.path.join(out, "rewards.jsonl")
    server = None
    progress = Progress(sys.stderr, label="simulated")
    try:
        if args.url:
            service, log_dir = HttpService(args.url), args.log_dir
        else:
            server = ServedService(os.path.join(out, "service"), settings, env.item_ids, workers=args.workers)
            print(f"starting the service ({server.config_path})", file=sys.stderr)
            server.start()
            service, log_dir = HttpService(server.url), server.log_dir
        if not service.has_feedback():
            return _fail(f"{service.url} has no POST /feedback: this server predates issue 11's feedback")
        result = run(service, env, settings, steps=args.steps, rewards_path=rewards_path,
                     candidates=args.candidates, seed=args.seed,
                     progress=lambda done, total: progress(done, total))
        service.close()
    except (ServiceError, RuntimeError) as exc:
        return _fail(str(exc))
    finally:
        progress.close()
        if server is not None:
            server.stop()       # SIGTERM: the decision log is flushed before the offline check

    checks = []
    if not args.no_evaluate:
        try:
            checks = check_estimates(log_dir, result, env, truth_draws=args.truth_draws, seed=args.seed)
        except InputError as exc:
            return _fail(f"the offline check could not read the log: {exc}")
    summary = sim_report.summary(result, checks)
    with open(os.path.join(out, "report.json"), "wb") as f:
        f.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    png = os.path.join(out, "report.png")
    sim_report.plot(png, result, checks, title=f"{args.steps} steps, {args.items} items, top {args.top_k}"
                    + (f", drift {args.drift:g}" if args.drift else ""))
    for name, figures in summary["settings"].items():
        print(f"{name}: cumulative regret {figures['cumulative_regret']:.2f} (first half "
              f"{figures['regret_first_half']:.2f}, second half {figures['regret_second_half']:.2f}, "
              f"log-log slope {figures['loglog_slope']:.2f})")
    for c in checks:
        ips, snips = c["ips"]["per_decision"], c["snips"]["per_decision"]
        print(f"{c['setting']}: true {c['true']['per_decision']:.4f}; IPS {ips['estimate']:.4f} "
              f"[{ips['low']:.4f}, {ips['high']:.4f}]; SNIPS {snips['estimate']:.4f} "
              f"[{snips['low']:.4f}, {snips['high']:.4f}] on {c['decisions']} decisions")
    print(f"report: {png}")
    return 0
