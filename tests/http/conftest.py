import os
import subprocess
import sys

import pytest

from tests.serving import ROOT


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory):
    """1,000 demo items (item-000000 ...), made by scripts/make_demo_data.py."""
    path = tmp_path_factory.mktemp("data") / "items.csv"
    subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "make_demo_data.py"), "--items", "1000", "--out", str(path)],
        check=True, capture_output=True,
    )
    return path
