"""What the gunicorn master checks before it forks a worker.

A worker loads its stores (``mab.service.PredictionService.load``): each
store's ``load()``, then every model's ``check()`` against its store. For
the embedded stores the master runs those same calls first, on the same
data, and pins what it checked for the workers it forks
(``mab.stores.embedded.pin``). So a file the workers could not serve stops
the start with one message, instead of passing the master and then failing
in every worker, which never stops on its own and answers every request 503.

Remote stores are only configured here: their clients must be created after
the fork, in each worker.
"""

import logging

from mab.model import BetaModel
from mab.stores import create_store, embedded

log = logging.getLogger(__name__)


def check_embedded_stores(config):
    """Compile (or find compiled), map and check every embedded store of
    ``config`` and every model on it, release them, then pin the checked
    copies for this process and the workers it forks.

    Returns ``{store name: compiled copy}``. Raises ``DataError`` for a file
    that cannot be read exactly (the message names the file and the line),
    ``ConfigError`` for a model whose features the file lacks. Nothing is
    pinned unless every store passes.
    """
    checked = {}
    copies = {}
    for name, settings in config.stores.items():
        if settings.backend != "embedded":
            continue
        store = create_store(settings, config.cache_dir)
        target, built = store.prepare()
        try:
            store.open_compiled(target, built=built)
            for model_config in config.models.values():
                if model_config.store == name:
                    BetaModel(model_config, store).check()
            if store.describe()["items"] == 0:
                log.warning("store %r (%s) has no rows: every item will be scored from its prior", name, settings.path)
        finally:
            store.close()
        checked[name] = target
        copies[settings.path] = target
    embedded.pin(copies)
    return checked
