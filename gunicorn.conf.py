"""The checkout's gunicorn settings: ``gunicorn -c gunicorn.conf.py app:app``.

The settings and hooks live in the package, ``mab/gunicorn_conf.py``, so that
an installed mab serves from any directory (``mab serve``). This shim runs
that file and takes its names, exactly as gunicorn would: it runs the file
afresh each time gunicorn reads its configuration (at start and on every
reload, HUP), so the environment and MAB_CONFIG are read again then, as
before. An import of the module would be cached and read only once.
"""

import runpy
from importlib.util import find_spec

globals().update(
    (name, value)
    for name, value in runpy.run_path(find_spec("mab.gunicorn_conf").origin).items()
    if not name.startswith("__")
)
