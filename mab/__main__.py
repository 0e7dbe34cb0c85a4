"""``python -m mab``: the ``mab`` command (``mab.cli``)."""

import sys

from mab.cli import main

if __name__ == "__main__":
    sys.exit(main())
