"""The Vertex stores' per-worker feature cache: stale-while-revalidate.

What a user accepts with each setting (seconds, per worker):

- ``cache_ttl_seconds`` (0: no cache): the oldest counts ever served. A
  change in the feature store reaches predictions within this bound at worst
  (an entry nobody asked for during its refresh window is fetched again on
  its next use).
- ``cache_refresh_after_seconds`` (default: half the TTL): counts younger
  than this are served as they are; older ones are served and refreshed in
  the background, so an id that is asked for regularly carries counts at
  most about this old (plus one fetch), and no request waits for a refresh.
- ``cache_missing_ttl_seconds`` (default: the TTL, at most 60): how long an
  entity the store does not hold is remembered as missing, i.e. how long a
  newly written entity may still be scored from the prior. Such entries are
  refreshed at the same fraction of their TTL as found ones.
- ``cache_max_entries``: the bound on entities held; the least recently used
  (by the CLOCK approximation) go first. Memory is fixed when the cache is
  created: about ``(33 + 8 * features) * max_entries`` bytes of arrays plus
  each key's bytes object.

Failures are never cached. A refresh that fails leaves the entry as it was,
served until its TTL ends. One fetch per stale key is in flight at a time
(single flight): the compiled table marks the key when it reports it stale.
"""

import logging
import queue
import threading
import time

from mab.stores._cache import NOT_SERVED, SERVED_MISSING, EntityCache
from mab.stores._vertex.outcomes import FAILED, MISSING

log = logging.getLogger(__name__)

# Refresh batches waiting at most; past this a stale key is not refreshed now
# (it is released, and a later request asks again).
MAX_PENDING_REFRESHES = 256
# Keys one refresh fetch takes at most (several stale batches are merged).
REFRESH_BATCH_KEYS = 1000

__all__ = ["FeatureCache", "NOT_SERVED", "SERVED_MISSING"]


class FeatureCache:
    """Per-worker cache of entities' outcomes, one compiled table per tuple of
    features, refreshed in the background by one daemon thread.

    ``fetch(entity_ids, features)`` is how a refresh reads the store: it
    returns ``{entity id: tuple of floats | MISSING | FAILED}`` and must
    bound its own time. ``clock`` gives the time in seconds (monotonic);
    tests inject their own. Thread-safe.
    """

    def __init__(self, settings, fetch, *, clock=time.monotonic):
        self.ttl = settings.cache_ttl_seconds
        self.refresh_after = settings.cache_refresh_after_seconds
        self.missing_ttl = settings.cache_missing_ttl_seconds
        self.max_entries = settings.cache_max_entries
        self.clock = clock
        self._fetch = fetch
        self._tables = {}
        self._lock = threading.Lock()
        self._queue = queue.Queue(MAX_PENDING_REFRESHES)
        self._thread = None
        self.refreshed = 0           # keys whose refresh brought an answer
        self.refresh_failures = 0    # keys whose refresh failed (kept as they were)
        self.refreshes_dropped = 0   # stale keys not queued: too many refreshes waiting
        self.refresh_fetches = 0     # fetches the refresher made

    def table(self, features):
        """The compiled table of this tuple of features (created on first use)."""
        table = self._tables.get(features)
        if table is None:
            with self._lock:
                table = self._tables.get(features)
                if table is None:
                    # The index is preallocated: one table per feature tuple a
                    # model asks for, each bounded by max_entries.
                    table = self._tables[features] = EntityCache(
                        len(features), ttl=self.ttl, refresh_after=self.refresh_after,
                        missing_ttl=self.missing_ttl, max_entries=self.max_entries,
                    )
        return table

    # -- the request path --------------------------------------------------------

    def lookup(self, features, item_ids, prefix, suffix, whole=False):
        """``(values, status)`` for ``prefix + id + suffix`` of each id (see
        ``EntityCache.lookup``); the stale ones are queued for a refresh
        before this returns, and nobody waits for it. With ``whole``, None
        unless every id is served (nothing is then counted or queued)."""
        table = self.table(features)
        with self._lock:
            found = table.lookup(item_ids, prefix.encode(), suffix.encode(), self.clock(), whole)
        if found is None:
            return None
        values, status, refresh = found
        if refresh:
            self._queue_refresh(features, [prefix + item_ids[i] + suffix for i in refresh])
        return values, status

    def store(self, features, outcomes):
        """Keep fetched outcomes (``{entity id: values | MISSING | FAILED}``);
        failures are not kept."""
        table = self.table(features)
        now = self.clock()
        with self._lock:
            for entity_id, outcome in outcomes.items():
                if outcome is MISSING:
                    table.put(entity_id, None, now)
                elif outcome is not FAILED:
                    table.put(entity_id, outcome, now)

    # -- refreshes -------------------------------------------------------------

    def start(self, name):
        self._thread = threading.Thread(target=self._refresh_forever, name=f"mab-refresh-{name}", daemon=True)
        self._thread.start()

    def close(self, timeout=1.0):
        if self._thread is not None:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass   # a daemon thread: it ends with the process
            self._thread.join(timeout)
            self._thread = None

    def _queue_refresh(self, features, entity_ids):
        try:
            self._queue.put_nowait((features, entity_ids))
        except queue.Full:
            table = self.table(features)
            with self._lock:
                for entity_id in entity_ids:
                    table.release(entity_id)
                self.refreshes_dropped += len(entity_ids)

    def _refresh_forever(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            features, entity_ids = item
            # Merge what else waits for the same features, up to a batch.
            held = []
            while len(entity_ids) < REFRESH_BATCH_KEYS:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None or more[0] != features:
                    held.append(more)
                    if more is None:
                        break
                    continue
                entity_ids = entity_ids + more[1]
            self._refresh(features, list(dict.fromkeys(entity_ids)))
            for item in held:
                if item is None:
                    return
                self._refresh(*item)

    def _refresh(self, features, entity_ids):
        try:
            outcomes = self._fetch(entity_ids, features)
        except Exception:
            log.exception("refreshing %d cached entities failed", len(entity_ids))
            outcomes = {}
        table = self.table(features)
        now = self.clock()
        with self._lock:
            self.refresh_fetches += 1
            for entity_id in entity_ids:
                outcome = outcomes.get(entity_id, FAILED)
                if outcome is FAILED:
                    table.release(entity_id)
                    self.refresh_failures += 1
                else:
                    table.put(entity_id, None if outcome is MISSING else outcome, now)
                    self.refreshed += 1

    def describe(self):
        with self._lock:
            tables = list(self._tables.values())
            counts = {
                name: sum(getattr(table, name) for table in tables)
                for name in ("hits", "stale_served", "misses", "expired", "evictions", "entries")
            }
            return {
                "enabled": True,
                "ttl_seconds": self.ttl,
                "refresh_after_seconds": self.refresh_after,
                "missing_ttl_seconds": self.missing_ttl,
                "max_entries": self.max_entries,
                **counts,
                "refreshed": self.refreshed,
                "refresh_failures": self.refresh_failures,
                "refreshes_dropped": self.refreshes_dropped,
                "refresh_fetches": self.refresh_fetches,
                "refreshes_waiting": self._queue.qsize(),
            }
