"""What online updates and decay cost a prediction, and what a /feedback batch costs, in-process.

    python scripts/feedback_cost.py [--items 100000] [--ids 400]

Prints microseconds per call (best of 5 timeit repeats) of the model's
``parameters`` (the store fetch, decay, overlay and priors of one /predict)
for a request of ``--ids`` random ids of a demo CSV: plain, with decay,
with an online model's overlay (empty; 10,000 entities updated, so a few
of a request's ids have deltas; every id of the request updated), and of
``FeedbackNode.submit`` for batches of 1 and 100 events with each fsync
policy. Files go to a temporary directory (the journal's fsync cost
depends on its disk). Not a benchmark of the server: scripts/bench.py is.
"""

import argparse
import os
import sys
import tempfile
import timeit

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mab.config import config_from_document  # noqa: E402
from mab.feedback import FeedbackNode  # noqa: E402
from mab.feedback.events import Event  # noqa: E402
from mab.model import BetaModel  # noqa: E402
from mab.stores import create_store  # noqa: E402


def best(call, number):
    return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--ids", type=int, default=400)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory(prefix="mab-feedback-cost-") as directory:
        csv = os.path.join(directory, "items.csv")
        with open(csv, "w") as f:
            f.write("item_id,successes,failures,updated_at\n")
            for i in range(args.items):
                f.write(f"item-{i:07d},{rng.integers(0, 1000)},{rng.integers(0, 100_000)},{1_715_000_000 - i}\n")
        ids = [f"item-{i:07d}" for i in rng.integers(0, args.items, args.ids)]

        def setup(name, **model):
            config = config_from_document(
                {"models": {"default": model}, "feedback": {"journal": os.path.join(directory, name, "journal"),
                                                            "fsync": "never"}},
                {"MAB_DATA": csv, "MAB_CACHE_DIR": os.path.join(directory, "cache")})
            store = create_store(config.stores["default"], config.cache_dir)
            store.load()
            built = BetaModel(config.models["default"], store, clock=lambda: 1_715_000_000.0)
            node = None
            if model.get("online_updates"):
                node = FeedbackNode(config)
                node.open({"default": store})
                built.overlay = node.overlays["default"]
            return built, node

        print(f"parameters() of {args.ids} ids out of {args.items:,} items (us per call):")
        plain, _ = setup("plain")
        print(f"  {'plain':44s} {best(lambda: plain.parameters(ids), 2000):7.1f}")
        decayed, _ = setup("decay", half_life_seconds=86400.0)
        print(f"  {'half_life_seconds':44s} {best(lambda: decayed.parameters(ids), 2000):7.1f}")
        online, node = setup("online", online_updates=True)
        print(f"  {'online_updates, overlay empty':44s} {best(lambda: online.parameters(ids), 2000):7.1f}")
        for start in range(0, 10_000, 500):
            node.submit([Event(f"d{start + k}", f"item-{rng.integers(0, args.items):07d}", 1.0) for k in range(500)])
        print(f"  {'online_updates, 10,000 entities updated':44s} {best(lambda: online.parameters(ids), 2000):7.1f}")
        node.submit([Event("all", item, 0.5) for item in dict.fromkeys(ids)])
        print(f"  {'online_updates, every id of the request updated':44s} {best(lambda: online.parameters(ids), 2000):7.1f}")
        node.close()

        print("FeedbackNode.submit (us per batch):")
        for fsync in ("never", "interval", "batch"):
            config = config_from_document(
                {"feedback": {"journal": os.path.join(directory, f"submit-{fsync}"), "fsync": fsync},
                 "models": {"default": {"online_updates": True}}},
                {"MAB_DATA": csv, "MAB_CACHE_DIR": os.path.join(directory, "cache")})
            store = create_store(config.stores["default"], config.cache_dir)
            store.load()
            node = FeedbackNode(config)
            node.open({"default": store})
            counter = iter(range(10**9))
            for size in (1, 100):
                def submit():
                    node.submit([Event(f"d{next(counter)}", ids[k % len(ids)], 1.0) for k in range(size)])
                print(f"  {f'{size} events, fsync = {fsync}':44s} {best(submit, 200 if size == 1 else 40):7.1f}")
            node.close()


if __name__ == "__main__":
    main()
