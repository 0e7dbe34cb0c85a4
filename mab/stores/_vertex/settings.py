"""Settings both Vertex AI backends take, parsed once from a ``[stores.NAME]`` table."""

import math
from dataclasses import dataclass

from mab.errors import ConfigError

#: The most entity ids one call (or one streaming request message) carries:
#: the legacy service's limit per call.
MAX_CHUNK_SIZE = 100


def pop_id(table, key, where, required):
    """A resource id or project/location: a non-empty string without '/'."""
    if key not in table:
        if required:
            raise ConfigError(f"{where}.{key} is required")
        return None
    value = table.pop(key)
    if not isinstance(value, str) or not value or "/" in value or value != value.strip():
        raise ConfigError(f"{where}.{key} must be a non-empty id without '/' or spaces, got {value!r}")
    return value


def _finite(number):
    try:
        return math.isfinite(number)
    except OverflowError:   # an integer too large for a float (TOML allows any)
        return False


def pop_number(table, key, where, default, *, minimum, maximum=None, integer=False, above=False):
    if key not in table:
        return default
    value = table.pop(key)
    kinds = int if integer else (int, float)
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, kinds) or not _finite(value):
        raise ConfigError(f"{where}.{key} must be {kind}, got {value!r}")
    if (value <= minimum if above else value < minimum) or (maximum is not None and value > maximum):
        low = f"> {minimum}" if above else f">= {minimum}"
        high = f" and <= {maximum}" if maximum is not None else ""
        raise ConfigError(f"{where}.{key} must be {low}{high}, got {value!r}")
    return float(value) if not integer else value


def pop_bool(table, key, where, default):
    if key not in table:
        return default
    value = table.pop(key)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be true or false, got {value!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class VertexSettings:
    """Settings both Vertex backends take; each adds its resource ids.

    Times are in milliseconds except the cache's TTL (seconds). The defaults
    are starting points: tune deadline_ms and attempt_timeout_ms from the
    latency the service measures.
    """

    name: str
    project: str
    location: str
    api_endpoint: str | None = None    # default: the regional endpoint
    plaintext: bool = False            # gRPC without TLS or credentials: local stand-ins only
    deadline_ms: float = 300.0         # the whole feature fetch of one request
    attempt_timeout_ms: float = 150.0  # one call; default half the deadline, so a hung call is retried once
    chunk_size: int = MAX_CHUNK_SIZE
    pool_size: int = 16
    retry: bool = True
    retry_initial_ms: float = 10.0
    retry_max_ms: float = 100.0
    retry_multiplier: float = 2.0
    # The per-worker cache (mab.stores._vertex.cache): off while the TTL is 0.
    cache_ttl_seconds: float = 0.0             # an entry older than this is never served
    cache_refresh_after_seconds: float = 0.0   # older than this: served, and refreshed in the background
    cache_missing_ttl_seconds: float = 0.0     # the TTL of entities the store does not hold
    cache_max_entries: int = 100_000
    # The circuit breaker (mab.stores._vertex.breaker): 0 failures turns it off.
    breaker_failures: int = 5              # whole-fetch failures in a row that open it
    breaker_reset_seconds: float = 2.0     # open this long, then one probe at a time

    # The backend's resource id keys, in the order of the resource name.
    RESOURCE_KEYS = ()

    @property
    def endpoint(self):
        return self.api_endpoint or f"{self.location}-aiplatform.googleapis.com"

    @classmethod
    def from_table(cls, name, table, where, base_dir):
        table = dict(table)
        values = {
            "name": name,
            "project": pop_id(table, "project", where, required=True),
            "location": pop_id(table, "location", where, required=True),
        }
        for key in cls.RESOURCE_KEYS:
            values[key] = pop_id(table, key, where, required=True)
        endpoint = table.pop("api_endpoint", None)
        if endpoint is not None and (not isinstance(endpoint, str) or not endpoint.strip() or "/" in endpoint):
            raise ConfigError(f"{where}.api_endpoint must be host or host:port, got {endpoint!r}")
        values["api_endpoint"] = endpoint
        values["plaintext"] = pop_bool(table, "plaintext", where, False)
        if values["plaintext"] and endpoint is None:
            raise ConfigError(
                f"{where}.plaintext needs api_endpoint: plaintext gRPC is only for a local "
                f"endpoint such as a stand-in on 127.0.0.1:9010"
            )
        deadline = pop_number(table, "deadline_ms", where, cls.deadline_ms, minimum=0, above=True)
        values["deadline_ms"] = deadline
        values["attempt_timeout_ms"] = pop_number(
            table, "attempt_timeout_ms", where, deadline / 2, minimum=0, maximum=deadline, above=True
        )
        values["chunk_size"] = pop_number(
            table, "chunk_size", where, cls.chunk_size, minimum=1, maximum=MAX_CHUNK_SIZE, integer=True
        )
        values["pool_size"] = pop_number(table, "pool_size", where, cls.pool_size, minimum=1, maximum=1024, integer=True)
        values["retry"] = pop_bool(table, "retry", where, True)
        initial = pop_number(table, "retry_initial_ms", where, cls.retry_initial_ms, minimum=0, above=True)
        values["retry_initial_ms"] = initial
        values["retry_max_ms"] = pop_number(table, "retry_max_ms", where, max(cls.retry_max_ms, initial), minimum=initial)
        values["retry_multiplier"] = pop_number(table, "retry_multiplier", where, cls.retry_multiplier, minimum=1)
        ttl = values["cache_ttl_seconds"] = pop_number(table, "cache_ttl_seconds", where, 0.0, minimum=0)
        # Defaults: refresh at half the TTL, so an entry in use is refreshed
        # long before it expires; forget missing entities sooner (a new item
        # should show its first counts soon), at most a minute.
        values["cache_refresh_after_seconds"] = pop_number(
            table, "cache_refresh_after_seconds", where, ttl / 2, minimum=0, maximum=ttl
        )
        values["cache_missing_ttl_seconds"] = pop_number(
            table, "cache_missing_ttl_seconds", where, min(ttl, 60.0), minimum=0, maximum=ttl
        )
        values["cache_max_entries"] = pop_number(
            table, "cache_max_entries", where, cls.cache_max_entries, minimum=1, integer=True
        )
        values["breaker_failures"] = pop_number(
            table, "breaker_failures", where, cls.breaker_failures, minimum=0, integer=True
        )
        values["breaker_reset_seconds"] = pop_number(
            table, "breaker_reset_seconds", where, cls.breaker_reset_seconds, minimum=0, above=True
        )
        values.update(cls._backend_settings(table, where))
        if table:
            raise ConfigError(f"{where}: unknown setting(s) {', '.join(sorted(table))}")
        return cls(**values)

    @classmethod
    def _backend_settings(cls, table, where):
        """A backend's own settings, popped from ``table``: a dict of fields."""
        return {}
