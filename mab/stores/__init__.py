"""Feature stores: where a model's success and failure counts come from.

A store is created from its settings (cheap, no I/O), then ``load()``ed once
per worker (I/O, clients, connections), then asked to ``fetch`` the features
of a request's entities. Backends are imported only when configured, so the
embedded default never pays for the Google client libraries.

Every backend returns a ``FeatureBatch`` and keeps two outcomes apart:
``missing`` entities do not exist in the store (new items, scored from the
prior, nothing wrong), ``failed`` entities could not be fetched (the store
is down or slow; what happens then is the model's policy).

``fetch(item_ids, prefix, suffix, features, deadline=None, wait=True)``:
with ``wait=False`` a store that would have to wait on the network raises
``mab.errors.WouldWait`` instead, having counted nothing; a store in memory
(and a remote one whose cache serves every item) answers as usual. The
worker's loop thread asks so (mab.http.worker), and runs the request on a
thread only when it must.
"""

import importlib
from dataclasses import dataclass

import numpy as np

# backend name -> module that defines Settings and Store
BACKENDS = {
    "embedded": "mab.stores.embedded",
    "vertex": "mab.stores.vertex",                 # Vertex AI Feature Store (feature views)
    "vertex-legacy": "mab.stores.vertex_legacy",   # Vertex AI Feature Store (Legacy)
}


@dataclass(slots=True)
class FeatureBatch:
    """Features of one request's entities, in request order.

    ``columns[j][i]`` is feature j of entity i, 0.0 where entity i is
    missing or failed; ``failed_mask`` marks the failed ones (None when
    none failed). ``rows``: for the embedded store, each entity's row in its
    snapshot (int64; the row count for a missing one), which the online
    updates' overlay (mab.feedback) is keyed by; None for other stores.
    """

    columns: tuple
    missing: int = 0
    failed: int = 0
    failed_mask: np.ndarray | None = None
    rows: np.ndarray | None = None


def _backend_module(backend):
    try:
        name = BACKENDS[backend]
    except KeyError:
        raise KeyError(f"unknown backend {backend!r} (known: {', '.join(sorted(BACKENDS))})") from None
    return importlib.import_module(name)


def settings_for_backend(backend):
    """The Settings class of a backend; KeyError for an unknown one."""
    return _backend_module(backend).Settings


def create_store(settings, cache_dir):
    """A store for these settings, not yet loaded."""
    return _backend_module(settings.backend).Store(settings, cache_dir=cache_dir)
