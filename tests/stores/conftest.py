"""Fixtures of the store tests: a stand-in serving DATA_CSV, and the
embedded store on the same file for parity."""

import time

import pytest

from mab.stores import embedded
from mab.testing.vertex_standin import VertexStandIn
from tests.conftest import ITEMS_CSV
from tests.vertex import make_store

N_NUMBERED = 1200
# The conftest's five items, then numbered ones with int64 and double counts.
DATA_CSV = ITEMS_CSV + "".join(
    f"item-{i:05d},{(i * 7) % 1000},{(i * 13) % 100_000 + (0.5 if i % 3 == 0 else 0)}\n" for i in range(N_NUMBERED)
)
# A generous deadline where time is not what a test is about: the client and
# the stand-in share this process, and 1,000 single-key calls cost CPU.
RELAXED = {"deadline_ms": 20_000}


def numbered(n, start=0):
    return [f"item-{i:05d}" for i in range(start, start + n)]


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("vertex") / "items.csv"
    path.write_text(DATA_CSV)
    return path


@pytest.fixture(scope="module")
def standin(data_path):
    standin = VertexStandIn.from_csv(data_path).start()
    yield standin
    standin.stop()


@pytest.fixture(scope="module")
def embedded_store(data_path, tmp_path_factory):
    store = embedded.Store(embedded.Settings(name="embedded", path=str(data_path)), cache_dir=str(tmp_path_factory.mktemp("cache")))
    store.load()
    yield store
    store.close()


@pytest.fixture
def stores():
    """Opens stores on the module's stand-in (reset first) and closes them after the test."""
    opened = []

    def open_store(standin, backend, **settings):
        standin.reset()
        store = make_store(standin, backend, **settings)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


def timed(fetch):
    start = time.monotonic()
    batch = fetch()
    return batch, time.monotonic() - start


def best_of(runs, fetch):
    return min(timed(fetch)[1] for _ in range(runs))
