"""The checkout's WSGI entry point: ``gunicorn -c gunicorn.conf.py app:app``.

The application lives in the package, ``mab.wsgi``, so that an installed mab
serves from any directory (``mab serve``); this shim keeps the checkout's
command working. gunicorn imports it in each worker, after the fork.
"""

from mab.wsgi import app  # noqa: F401
