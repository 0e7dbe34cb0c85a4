"""The service with its compiled hot path swapped for plain Python and numpy.

What scripts/bench.py measures as system ``mab-baseline``, so a reader sees
what the compiled path buys: the same application, worker and data, but

* Beta variates from numpy's ``Generator.beta`` instead of mab.sampling, and
* every id looked up in a Python ``dict`` (one ``str`` hash and probe per id)
  instead of the compiled, prefetching hash index.

    gunicorn -c gunicorn.conf.py 'mab.baseline:create_baseline_app()'

Not for production: the dict costs each worker its own copy of the ids.
"""

import numpy as np

from mab import sampling
from mab.config import load_config
from mab.stores import FeatureBatch
from mab.stores import embedded
from mab.web import create_app


class PythonLookupStore(embedded.Store):
    """The embedded store, looked up one id at a time in a dict."""

    def load(self):
        super().load()
        blob = self._arrays["blob"].tobytes()
        records = self._arrays["records"][:-1]     # the last record is the zero row
        self._rows = {
            blob[start:start + length].decode(): row
            for row, (start, length) in enumerate(zip(records["offset"].tolist(), records["length"].tolist()))
        }

    def fetch(self, item_ids, prefix, suffix, features, deadline=None, wait=True):
        absent = len(self._rows)
        get = self._rows.get
        rows = np.array([get(f"{prefix}{item}{suffix}", absent) for item in item_ids], dtype=np.int64)
        missing = int(np.count_nonzero(rows == absent))
        columns = tuple(self._arrays["records"]["features"][:, self._column[name]].take(rows) for name in features)
        return FeatureBatch(columns, missing)


def numpy_sample_beta(alpha, beta, *, seed=None, out=None, n_threads=None):
    """``sample_beta``'s contract on numpy's Generator.beta (one thread)."""
    generator = np.random.default_rng(sampling.fresh_seed() if seed is None else seed)
    return generator.beta(alpha, beta)


def create_baseline_app():
    config = load_config()
    stores = {}
    for name, settings in config.stores.items():
        if settings.backend != "embedded":
            raise ValueError(f"the baseline needs embedded stores; {name!r} is {settings.backend!r}")
        stores[name] = PythonLookupStore(settings, cache_dir=config.cache_dir)
    return create_app(config, stores=stores, sampler=numpy_sample_beta)
