"""The gunicorn worker class path: ``gunicorn -k mab.worker.HttptoolsWorker``.

The worker lives in ``mab.http.worker`` (the loop) and ``mab.http.protocol``
(HTTP/1.1 without I/O); this module keeps the class path that
gunicorn.conf.py, deployments and the README name.
"""

from mab.http.worker import HttptoolsWorker

__all__ = ["HttptoolsWorker"]
