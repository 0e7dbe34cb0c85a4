"""The service's one configuration object, read and validated once.

Sources, later ones winning:

1. defaults;
2. the TOML file named by ``MAB_CONFIG``, if any;
3. environment variables (``MAB_DATA``, ``MAB_MAX_ITEMS``, ...; see ``ENVIRONMENT``).

A configuration that does not validate raises ``ConfigError`` with a
message that names the offending key, so a bad deployment stops at start.

The TOML layout::

    max_items = 10000                # item_ids per request
    max_body_bytes = 4194304         # request body limit
    cache_dir = "/var/cache/mab"     # compiled copies of embedded stores

    [stores.default]                 # a store: where features come from
    backend = "embedded"
    path = "data/items.csv"

    [stores.remote]                  # Vertex AI Feature Store (mab.stores.vertex)
    backend = "vertex"               # or "vertex-legacy" (mab.stores.vertex_legacy)
    project = "my-project"
    location = "us-central1"
    feature_online_store = "my_store"  # vertex: the feature view to read
    feature_view = "items"
    # featurestore = "my_fs"         # vertex-legacy: the entity type to read
    # entity_type = "items"
    # api_endpoint = "host:port"     # default: LOCATION-aiplatform.googleapis.com
    # plaintext = false              # true: no TLS, no credentials (local stand-in)
    deadline_ms = 300                # the whole feature fetch of a request
    attempt_timeout_ms = 150         # one call (default: half the deadline)
    chunk_size = 100                 # ids per chunk, at most 100
    pool_size = 16                   # threads per worker fetching chunks
    retry = true                     # retry UNAVAILABLE, DEADLINE_EXCEEDED ...
    retry_initial_ms = 10            # ... with jittered exponential backoff
    retry_max_ms = 100
    retry_multiplier = 2.0
    cache_ttl_seconds = 0            # > 0: cache fetched features per worker
    cache_max_entries = 100000

    [models.default]                 # a model: features -> Beta parameters
    store = "default"
    successes = "successes"          # feature ids to read; for Vertex stores,
    failures = "failures"            # the features of the entity type or view
    prior_alpha = 1.0
    prior_beta = 1.0
    entity_id = "{item_id}"          # or "{user_id}:{item_id}", ...
    on_store_error = "fail"          # features not fetched: "fail" (503) or
                                     # "prior" (degraded answer)
    log_fraction = 0.0               # share of decisions written to the
                                     # decision log (mab.decisions), 0 to 1
    online_updates = false           # true: rewards from POST /feedback reach this
                                     # model's counts at once (embedded store only)
    half_life_seconds = 86400.0      # discount counts by their age (default: none)

    [decision_log]                   # where logged decisions go (docs/decisions.md)
    sink = "parquet"                 # or "jsonl": JSON Lines on standard output
    directory = "decisions"          # parquet: one file series per worker
    rotate_records = 100000          # parquet: close a file after this many ...
    rotate_seconds = 300             # ... or this many seconds (0: no limit)
    queue_records = 2048             # decisions waiting per worker; more are dropped
    compression = "zstd"             # parquet: zstd, snappy, lz4, gzip, brotli, none

    [feedback]                       # POST /feedback (mab.feedback, docs/feedback.md)
    journal = "/var/lib/mab/journal" # the node's durable journal of rewards (a directory)
    fsync = "batch"                  # "batch" (before each answer), "interval" or "never"
    fsync_interval_ms = 100          # with fsync = "interval"
    segment_bytes = 67108864         # a journal segment file is rotated past this size
    dedup_entries = 200000           # (decision_id, item_id) remembered: at least this many ...
    dedup_seconds = 3600.0           # ... unless older than this (0: no age limit)
    max_events = 1000                # events in one request
    overlay_max_entries = 200000     # entities with online updates per model, until a fold
    overlay_key_bytes = 16777216     # bytes of ids of new entities (not in the CSV) per model
    state_dir = "/dev/shm"           # the shared overlay and dedup window files
                                     # (default: CACHE_DIR/feedback-state)

Vertex stores authenticate with Application Default Credentials; their
settings are validated here, their clients are created in each worker.

Without a ``[models]`` table there is one model, ``default``, on the store
``default`` with the settings above; without ``[stores]`` the store
``default`` is the embedded store on ``MAB_DATA``.
"""

import os
import string
import tempfile
import tomllib
from dataclasses import dataclass, field

from mab.errors import ConfigError
from mab.stores import settings_for_backend

#: Environment variables read by load_config, and what they set.
ENVIRONMENT = {
    "MAB_CONFIG": "path of a TOML configuration file",
    "MAB_DATA": "CSV file of the embedded store `default`",
    "MAB_STORE_BACKEND": "backend of the store `default` (embedded, vertex, vertex-legacy)",
    "MAB_CACHE_DIR": "directory for compiled copies of embedded stores",
    "MAB_MAX_ITEMS": "most item_ids accepted in one request",
    "MAB_MAX_BODY_BYTES": "largest request body accepted, in bytes",
    "MAB_FEEDBACK_JOURNAL": "directory of the journal of rewards (POST /feedback)",
}

DEFAULT_MAX_ITEMS = 10_000
# 10,000 ids of up to ~200 bytes each, JSON-quoted, fit with room to spare.
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_MODEL = "default"
DEFAULT_STORE = "default"
#: Largest prior_alpha / prior_beta. The sampler takes every finite shape
#: > 0 (subnormals included), and stores hold any finite count >= 0; a
#: prior below 2**970 (half a unit in the last place of the largest double)
#: keeps prior + count finite for every such count, so no shape is ever inf.
MAX_PRIOR = 1e290


def default_cache_dir():
    return os.path.join(tempfile.gettempdir(), f"mab-cache-{os.getuid()}")


@dataclass(frozen=True)
class EntityTemplate:
    """How a model builds a store's entity id from a request's ids.

    The template holds ``{item_id}`` exactly once and ``{user_id}`` at most
    once, e.g. ``"{item_id}"`` or ``"{user_id}:{item_id}"``.
    """

    text: str
    prefix: str = field(init=False)
    suffix: str = field(init=False)
    needs_user: bool = field(init=False)

    def __post_init__(self):
        names = []
        try:
            for _, name, spec, conversion in string.Formatter().parse(self.text):
                if name is not None:
                    if spec or conversion:
                        raise ConfigError(f"entity_id {self.text!r}: no format specs allowed")
                    names.append(name)
        except ValueError as exc:
            raise ConfigError(f"entity_id {self.text!r}: {exc}") from None
        if names.count("item_id") != 1:
            raise ConfigError(f"entity_id {self.text!r} must contain {{item_id}} exactly once")
        if set(names) - {"item_id", "user_id"} or names.count("user_id") > 1:
            raise ConfigError(
                f"entity_id {self.text!r} may contain only {{item_id}} and at most one {{user_id}}"
            )
        before, _, after = self.text.partition("{item_id}")
        object.__setattr__(self, "prefix", before)
        object.__setattr__(self, "suffix", after)
        object.__setattr__(self, "needs_user", "user_id" in names)

    def parts(self, user_id=None):
        """(prefix, suffix) around the item id, with the user filled in."""
        return self.prefix.format(user_id=user_id), self.suffix.format(user_id=user_id)


@dataclass(frozen=True)
class ModelConfig:
    name: str
    store: str = DEFAULT_STORE
    successes: str = "successes"
    failures: str = "failures"
    prior_alpha: float = 1.0
    prior_beta: float = 1.0
    entity_id: EntityTemplate = EntityTemplate("{item_id}")
    # What to do when a remote store cannot deliver features in time:
    # "fail" answers 503, "prior" scores the affected items from the prior
    # and flags the answer as degraded.
    on_store_error: str = "fail"
    # The share of this model's decisions written to the decision log
    # (mab.decisions): decision d is logged iff
    # int(d[:16], 16) / 2**64 < log_fraction. 0: none.
    log_fraction: float = 0.0
    # Rewards from POST /feedback enter this model's counts on this node at
    # once (mab.feedback): embedded stores only.
    online_updates: bool = False
    # Counts are discounted by their age, 2**(-age / half_life_seconds);
    # None: no decay.
    half_life_seconds: float | None = None


#: Sinks of the decision log, and the Parquet compressions it accepts
#: (pyarrow's names; "none" writes uncompressed).
DECISION_SINKS = ("parquet", "jsonl")
DECISION_COMPRESSIONS = ("zstd", "snappy", "lz4", "gzip", "brotli", "none")


@dataclass(frozen=True)
class DecisionLogConfig:
    """The ``[decision_log]`` table: where and how logged decisions are
    written (mab.decisions, docs/decisions.md). Which decisions are logged
    is each model's ``log_fraction``."""

    sink: str = "parquet"
    # The Parquet sink's directory; required when a model logs to it.
    directory: str | None = None
    # A worker closes its Parquet file (and renames it into place) after
    # this many records or seconds, whichever comes first; 0 = no limit.
    rotate_records: int = 100_000
    rotate_seconds: float = 300.0
    # Records waiting for the writer, per worker; when full, new decisions
    # are dropped and counted (mab_decisions_dropped_total{reason="queue_full"}).
    queue_records: int = 2048
    # Parquet compression; None = zstd when pyarrow has it, else snappy.
    compression: str | None = None


FSYNC_POLICIES = ("batch", "interval", "never")


def default_state_dir(cache_dir):
    """Where the node's shared feedback state lives by default: beside the
    compiled snapshots, which every worker maps too. /dev/shm keeps it in
    memory, but containers often give it 64 MiB only (docs/feedback.md)."""
    return os.path.join(cache_dir, "feedback-state")


@dataclass(frozen=True)
class FeedbackConfig:
    """The ``[feedback]`` table: POST /feedback's journal, dedup window,
    limits and shared state (mab.feedback; docs/feedback.md)."""

    journal: str                        # a directory
    state_dir: str
    fsync: str = "batch"
    fsync_interval_ms: int = 100
    segment_bytes: int = 64 * 1024 * 1024
    dedup_entries: int = 200_000
    dedup_seconds: float = 3600.0
    max_events: int = 1000
    overlay_max_entries: int = 200_000
    overlay_key_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class Config:
    stores: dict            # name -> the backend's settings object
    models: dict            # name -> ModelConfig
    max_items: int = DEFAULT_MAX_ITEMS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    cache_dir: str = field(default_factory=default_cache_dir)
    source: str = "environment"   # where it came from, for messages
    decision_log: DecisionLogConfig = field(default_factory=DecisionLogConfig)

    @property
    def logs_decisions(self):
        """Whether any model logs decisions (a log_fraction above 0)."""
        return any(model.log_fraction > 0 for model in self.models.values())
    feedback: FeedbackConfig | None = None   # None: built from the defaults by load_config


# -- parsing helpers -----------------------------------------------------------


def _take(table, key, kind, where, default):
    if key not in table:
        return default
    value = table.pop(key)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:       # tomllib reads integers of any size
            raise ConfigError(f"{where}.{key} is too large, got {value}") from None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{where}.{key} must be {kind.__name__}, got {value!r}")
    return value


def _positive_int(value, where):
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise ConfigError(f"{where} must be an integer, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} must be an integer >= 1, got {value!r}")
    return value


def _reject_unknown(table, where):
    if table:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(sorted(table))}")


def _parse_model(name, table):
    where = f"models.{name}"
    table = dict(table)
    model = ModelConfig(
        name=name,
        store=_take(table, "store", str, where, DEFAULT_STORE),
        successes=_take(table, "successes", str, where, "successes"),
        failures=_take(table, "failures", str, where, "failures"),
        prior_alpha=_take(table, "prior_alpha", float, where, 1.0),
        prior_beta=_take(table, "prior_beta", float, where, 1.0),
        entity_id=EntityTemplate(_take(table, "entity_id", str, where, "{item_id}")),
        on_store_error=_take(table, "on_store_error", str, where, "fail"),
        log_fraction=_take(table, "log_fraction", float, where, 0.0),
        online_updates=_take(table, "online_updates", bool, where, False),
        half_life_seconds=_take(table, "half_life_seconds", float, where, None),
    )
    _reject_unknown(table, where)
    half_life = model.half_life_seconds
    if half_life is not None and not (0.0 < half_life < float("inf")):
        raise ConfigError(f"{where}.half_life_seconds must be > 0 and finite, got {half_life!r}")
    for key in ("prior_alpha", "prior_beta"):
        value = getattr(model, key)
        if not 0.0 < value <= MAX_PRIOR:
            raise ConfigError(f"{where}.{key} must be > 0 and <= {MAX_PRIOR:g}, got {value!r}")
    for key in ("successes", "failures"):
        if not getattr(model, key):
            raise ConfigError(f"{where}.{key} must name a feature")
    if model.on_store_error not in ("fail", "prior"):
        raise ConfigError(f"{where}.on_store_error must be 'fail' or 'prior', got {model.on_store_error!r}")
    if not 0.0 <= model.log_fraction <= 1.0:
        raise ConfigError(f"{where}.log_fraction must be in [0, 1], got {model.log_fraction!r}")
    return model


def _parse_decision_log(table, base_dir):
    where = "decision_log"
    table = dict(table)
    directory = _take(table, "directory", str, where, None)
    settings = DecisionLogConfig(
        sink=_take(table, "sink", str, where, "parquet"),
        directory=os.path.join(base_dir, os.path.expanduser(directory)) if directory else None,
        rotate_records=_take(table, "rotate_records", int, where, DecisionLogConfig.rotate_records),
        rotate_seconds=_take(table, "rotate_seconds", float, where, DecisionLogConfig.rotate_seconds),
        queue_records=_take(table, "queue_records", int, where, DecisionLogConfig.queue_records),
        compression=_take(table, "compression", str, where, None),
    )
    _reject_unknown(table, where)
    if settings.sink not in DECISION_SINKS:
        raise ConfigError(f"{where}.sink must be one of {', '.join(DECISION_SINKS)}, got {settings.sink!r}")
    if settings.rotate_records < 0:
        raise ConfigError(f"{where}.rotate_records must be >= 0 (0: no limit), got {settings.rotate_records}")
    if not 0.0 <= settings.rotate_seconds < float("inf"):
        raise ConfigError(f"{where}.rotate_seconds must be >= 0 (0: no limit), got {settings.rotate_seconds!r}")
    if settings.queue_records < 1:
        raise ConfigError(f"{where}.queue_records must be >= 1, got {settings.queue_records}")
    if settings.compression is not None and settings.compression not in DECISION_COMPRESSIONS:
        raise ConfigError(
            f"{where}.compression must be one of {', '.join(DECISION_COMPRESSIONS)}, got {settings.compression!r}"
        )
    return settings
def _parse_feedback(table, environ, base_dir, cache_dir):
    where = "feedback"
    table = dict(table)
    journal = _take(table, "journal", str, where, None)
    if environ.get("MAB_FEEDBACK_JOURNAL"):
        journal = os.path.abspath(environ["MAB_FEEDBACK_JOURNAL"])
    elif journal is not None:
        journal = os.path.join(base_dir, os.path.expanduser(journal))
    else:
        journal = os.path.join(cache_dir, "feedback-journal")
    state_dir = _take(table, "state_dir", str, where, None)
    state_dir = default_state_dir(cache_dir) if state_dir is None else os.path.join(base_dir, state_dir)
    values = {}
    for key in ("fsync_interval_ms", "segment_bytes", "dedup_entries", "max_events",
                "overlay_max_entries", "overlay_key_bytes"):
        if key in table:
            values[key] = _positive_int(table.pop(key), f"{where}.{key}")
    fsync = _take(table, "fsync", str, where, "batch")
    if fsync not in FSYNC_POLICIES:
        raise ConfigError(f"{where}.fsync must be one of {', '.join(map(repr, FSYNC_POLICIES))}, got {fsync!r}")
    dedup_seconds = _take(table, "dedup_seconds", float, where, 3600.0)
    if not 0.0 <= dedup_seconds < float("inf"):
        raise ConfigError(f"{where}.dedup_seconds must be >= 0 and finite (0: no age limit), got {dedup_seconds!r}")
    _reject_unknown(table, where)
    if values.get("overlay_max_entries", 1) >= 2**31:
        raise ConfigError(f"{where}.overlay_max_entries must be < 2**31")
    return FeedbackConfig(journal=os.path.abspath(journal), state_dir=os.path.abspath(state_dir),
                          fsync=fsync, dedup_seconds=dedup_seconds, **values)


def _parse_store(name, table, base_dir):
    where = f"stores.{name}"
    table = dict(table)
    backend = _take(table, "backend", str, where, "embedded")
    try:
        settings_class = settings_for_backend(backend)
    except KeyError as exc:
        raise ConfigError(f"{where}.backend: {exc.args[0]}") from None
    return settings_class.from_table(name, table, where, base_dir)


def read_toml(path, where):
    """The parsed TOML file ``path`` (a dict). Raises ConfigError, its
    message starting with ``where``, when the file cannot be read or is not
    valid TOML."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{where}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None


def load_config(environ=None):
    """Build and validate the Config from MAB_CONFIG's file and the environment."""
    environ = os.environ if environ is None else environ
    path = environ.get("MAB_CONFIG", "").strip()
    document = {}
    base_dir = os.getcwd()
    if path:
        document = read_toml(path, f"MAB_CONFIG={path}")
        # Relative paths in the file are relative to the file, not to the cwd.
        base_dir = os.path.dirname(os.path.abspath(path))
    return config_from_document(document, environ, source=path or "environment", base_dir=base_dir)


def config_from_document(document, environ, *, source="environment", base_dir=None):
    base_dir = base_dir or os.getcwd()
    try:
        return _config_from_document(dict(document), environ, source, base_dir)
    except ConfigError as exc:
        raise ConfigError(f"invalid configuration ({source}): {exc.message}") from None


def _config_from_document(document, environ, source, base_dir):
    stores_table = dict(document.pop("stores", {}) or {})
    models_table = dict(document.pop("models", {}) or {})
    max_items = _positive_int(document.pop("max_items", DEFAULT_MAX_ITEMS), "max_items")
    max_body = _positive_int(document.pop("max_body_bytes", DEFAULT_MAX_BODY_BYTES), "max_body_bytes")
    cache_dir = document.pop("cache_dir", None)
    decision_log_table = document.pop("decision_log", {})
    if not isinstance(decision_log_table, dict):
        raise ConfigError(f"decision_log must be a table, got {decision_log_table!r}")
    feedback_table = dict(document.pop("feedback", {}) or {})
    _reject_unknown(document, "top level")

    # The environment overrides the file.
    if environ.get("MAB_MAX_ITEMS"):
        max_items = _positive_int(environ["MAB_MAX_ITEMS"], "MAB_MAX_ITEMS")
    if environ.get("MAB_MAX_BODY_BYTES"):
        max_body = _positive_int(environ["MAB_MAX_BODY_BYTES"], "MAB_MAX_BODY_BYTES")
    cache_dir = environ.get("MAB_CACHE_DIR") or cache_dir or default_cache_dir()
    default_store = dict(stores_table.get(DEFAULT_STORE, {}))
    if environ.get("MAB_STORE_BACKEND"):
        default_store["backend"] = environ["MAB_STORE_BACKEND"]
    if environ.get("MAB_DATA"):
        default_store["path"] = os.path.abspath(environ["MAB_DATA"])
    if default_store or not stores_table:
        stores_table[DEFAULT_STORE] = default_store

    stores = {name: _parse_store(name, table, base_dir) for name, table in stores_table.items()}
    if not models_table:
        models_table = {DEFAULT_MODEL: {}}
    models = {name: _parse_model(name, table) for name, table in models_table.items()}
    for model in models.values():
        if model.store not in stores:
            raise ConfigError(
                f"models.{model.name}.store: no store named {model.store!r} "
                f"(configured: {', '.join(sorted(stores))})"
            )
        if model.online_updates and stores[model.store].backend != "embedded":
            raise ConfigError(
                f"models.{model.name}.online_updates: only a model on an embedded store can take online "
                f"updates (store {model.store!r} is {stores[model.store].backend!r}); across nodes the "
                "feature store is the shared state (docs/feedback.md)"
            )
    cache_dir = os.path.abspath(cache_dir)
    decision_log = _parse_decision_log(decision_log_table, base_dir)
    if decision_log.sink == "parquet" and decision_log.directory is None:
        logging_models = [model.name for model in models.values() if model.log_fraction > 0]
        if logging_models:
            raise ConfigError(
                f"decision_log.directory: model(s) {', '.join(logging_models)} log decisions "
                "(log_fraction > 0) to the parquet sink, which needs a directory"
            )
    return Config(
        stores=stores,
        models=models,
        max_items=max_items,
        max_body_bytes=max_body,
        cache_dir=cache_dir,
        source=source,
        decision_log=decision_log,
        feedback=_parse_feedback(feedback_table, environ, base_dir, cache_dir),
    )
