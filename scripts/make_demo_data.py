#!/usr/bin/env python3
"""Write a deterministic demo CSV: ``mab data demo`` (the code is ``mab.demo``).

Kept so that ``python scripts/make_demo_data.py --items 100000 --out
data/items.csv`` works as before; it takes the same options.
"""

import sys

from mab.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", "demo", *sys.argv[1:]]))
