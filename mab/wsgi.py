"""The WSGI entry point: ``mab serve``, which runs ``gunicorn -c
mab/gunicorn_conf.py mab.wsgi:app`` (in a checkout, ``app.py`` re-exports it).

gunicorn imports this module in each worker, after the fork, so the store
maps, random streams and any clients belong to the worker that uses them.

``MAB_METRICS=0`` serves without metrics (no /metrics, nothing recorded),
to measure what they cost side by side.
"""

import os

from mab.config import load_config
from mab.preflight import checked_config
from mab.web import create_app

# Under mab's gunicorn settings the master has checked the configuration
# (mab.preflight) and the worker serves exactly that; elsewhere it is read here.
app = create_app(checked_config() or load_config(), metrics=os.environ.get("MAB_METRICS", "1") != "0")
