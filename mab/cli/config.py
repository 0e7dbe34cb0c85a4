"""``mab config check``: the service's configuration, validated as the service
does it and printed as it takes effect."""

import dataclasses
import json
import os
import sys

from mab.cli.progress import run_with_progress


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "config", help="check the configuration",
        description="The service's configuration: the TOML file named by MAB_CONFIG (or --config), "
        "overridden by the environment (MAB_DATA, MAB_CACHE_DIR, MAB_MAX_ITEMS, ...).",
    )
    commands = parser.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    check = commands.add_parser(
        "check", help="validate the configuration and print it as it takes effect",
        description="Read and validate the configuration exactly as the service does at start "
        "(mab.config.load_config: the file, then the environment), and print the effective "
        "configuration, every default filled in, as TOML (which reads back to the same "
        "configuration) or JSON. Exit status 1, with the message naming the key, if it is invalid.",
    )
    check.add_argument("--config", metavar="FILE", help="the TOML file (default: $MAB_CONFIG, if set)")
    check.add_argument("--format", choices=("toml", "json"), default="toml", help="output format (default toml)")
    check.add_argument(
        "--data", action="store_true",
        help="also check the data as the gunicorn master does before it forks: compile every "
             "embedded store's CSV into the cache directory (if not done yet), map it, and check "
             "that it has every feature its models read",
    )
    check.set_defaults(handler=check_command)
    return parser


def config_document(config):
    """The effective configuration as a TOML-ready dict: top-level limits,
    ``stores``, ``models`` and ``decision_log`` with every setting, defaults included (None
    settings, such as an unset api_endpoint, are left out since TOML has no
    null). Loading it back gives the same configuration."""
    def table(settings, first=()):
        values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.name != "name"}
        ordered = {key: values.pop(key) for key in first if key in values}
        ordered.update(values)
        return {key: value for key, value in ordered.items() if value is not None}

    models = {}
    for name, model in config.models.items():
        models[name] = table(model, first=("store",))
        models[name]["entity_id"] = model.entity_id.text
    return {
        "max_items": config.max_items,
        "max_body_bytes": config.max_body_bytes,
        "cache_dir": config.cache_dir,
        "stores": {name: table(settings, first=("backend",)) for name, settings in config.stores.items()},
        "models": models,
        "decision_log": table(config.decision_log),
        "feedback": table(config.feedback, first=("journal",)),
    }


def _check_data(config):
    """What the gunicorn master does before it forks (mab.preflight): compile,
    map and check every embedded store against its models. Returns {store
    name: compiled copy}; raises DataError or ConfigError."""
    from mab.preflight import check_embedded_stores

    return check_embedded_stores(config)


def check_command(args):
    import tomli_w

    from mab.config import ENVIRONMENT, load_config
    from mab.errors import MabError

    environ = dict(os.environ)
    if args.config is not None:
        environ["MAB_CONFIG"] = args.config
    try:
        config = load_config(environ)
        checked = run_with_progress("checking the embedded stores", _check_data, config) if args.data else {}
    except MabError as exc:
        print(f"mab: {exc.message}", file=sys.stderr)
        return 1
    document = config_document(config)
    if args.format == "json":
        print(json.dumps(document, indent=2))
    else:
        overrides = [name for name in ENVIRONMENT if name != "MAB_CONFIG" and environ.get(name)]
        origin = f"the file {config.source}" if environ.get("MAB_CONFIG", "").strip() else "no file (MAB_CONFIG unset)"
        print(f"# The effective configuration: {origin}"
              + (f", with {', '.join(overrides)} from the environment" if overrides else "") + ".")
        print(tomli_w.dumps(document), end="")
    for name, path in checked.items():
        print(f"store {name!r}: checked against its models, compiled into {path}", file=sys.stderr)
    print("configuration valid" + (", data checked" if args.data else ""), file=sys.stderr)
    return 0
