"""Folding the journal into the next snapshot: the same posterior, and the overlay starts again from it."""

import json

import pytest

from mab.errors import ConfigError, DataError
from mab.feedback import FeedbackNode
from mab.feedback.events import Event
from mab.feedback.fold import fold
from mab.model import BetaModel
from mab.stores import create_store, embedded

SMALL = {"dedup_entries": 1000, "overlay_max_entries": 100, "overlay_key_bytes": 4096}
IDS = ["item-1", "item-2", "item-3", "brand-new", "never-seen"]


def serve(make_config, csv, journal, clock=None, **model):
    """A model with online updates over ``csv``, as a worker loads it: (model, node, store)."""
    config = make_config({"models": {"default": {"online_updates": True, **model}},
                          "feedback": {**SMALL, "journal": str(journal)}}, MAB_DATA=str(csv))
    store = create_store(config.stores["default"], config.cache_dir)
    store.load()
    node = FeedbackNode(config)
    node.open({"default": store}, fresh=True)
    built = BetaModel(config.models["default"], store, **({"clock": clock} if clock else {}))
    built.overlay = node.overlays["default"]
    return built, node, store, config


def posterior(m, ids=IDS):
    p = m.parameters(list(ids))
    return p.alpha.tolist(), p.beta.tolist()


def close(node, store):
    node.close()
    store.close()


def test_the_folded_snapshot_serves_what_snapshot_plus_overlay_served(make_config, items_csv, tmp_path):
    journal = tmp_path / "journal"
    m, node, store, config = serve(make_config, items_csv, journal)
    node.submit([Event("a", "item-1", 1.0), Event("a", "brand-new", 0.25), Event("b", "item-2", 0.5)])
    node.submit([Event("c", "item-1", 0.0), Event("c", "brand-new", 1.0)])
    before = posterior(m)
    close(node, store)

    summary = fold(str(items_csv), str(journal), config)
    out = summary["out"]
    assert out == str(tmp_path / "items.through-5.csv")
    assert (summary["through_seq"], summary["events"], summary["rows_updated"], summary["rows_added"]) == (5, 5, 2, 1)
    assert open(out).read() == (
        "item_id,successes,failures\n"
        "item-1,91,11\nitem-2,10.5,90.5\nitem-3,0,0\nitem-4,500,500\nitem-5,1,1000\nbrand-new,1.25,0.75\n"
    )
    events = json.load(open(out + ".events.json"))
    assert events["through_seq"] == 5 and len(events["csv_sha256"]) == 64
    assert embedded.read_events_file(out) == {"journal_id": events["journal_id"], "through_seq": 5}

    # Served from the folded file, the overlay starts empty at event 5: the same posterior.
    m, node, store, config = serve(make_config, out, journal)
    assert store.events_folded["through_seq"] == 5
    assert node.overlays["default"].describe()["updates"] == 0
    assert posterior(m) == before
    # Later events reach the overlay, and the next fold starts after event 5.
    node.submit([Event("d", "item-3", 1.0), Event("a", "item-1", 1.0)])      # the second is a duplicate
    after = posterior(m)
    assert after[0][2] == before[0][2] + 1
    close(node, store)
    summary = fold(out, str(journal), config)
    assert (summary["through_seq"], summary["events"], summary["out"]) == (6, 1, str(tmp_path / "items.through-6.csv"))
    m, node, store, _ = serve(make_config, summary["out"], journal)
    assert posterior(m) == after
    close(node, store)


def test_a_csv_and_an_events_file_that_do_not_belong_together_are_refused(make_config, items_csv, tmp_path):
    journal = tmp_path / "journal"
    m, node, store, config = serve(make_config, items_csv, journal)
    node.submit([Event("a", "item-1", 1.0)])
    close(node, store)
    out = fold(str(items_csv), str(journal), config)["out"]
    with open(out, "a") as f:
        f.write("item-9,1,1\n")         # changed after the fold
    with pytest.raises(DataError, match="another version"):
        embedded.read_events_file(out)
    other = serve(make_config, items_csv, tmp_path / "other-journal")
    close(other[1], other[2])
    fresh = fold(str(items_csv), str(journal), config, str(tmp_path / "again.csv"))["out"]
    with pytest.raises(DataError, match="holds the events of journal"):
        serve(make_config, fresh, tmp_path / "other-journal")
    with pytest.raises(DataError, match="new file"):
        fold(fresh, str(journal), config, fresh)


def test_folding_needs_a_model_reading_the_csv(make_config, items_csv, tmp_path):
    config = make_config({}, MAB_DATA=str(items_csv))
    with pytest.raises(ConfigError, match="no model of the configuration"):
        fold(str(tmp_path / "elsewhere.csv"), str(tmp_path / "journal"), config)


def test_decayed_counts_fold_to_the_same_posterior(make_config, tmp_path):
    h = 1000.0
    now = [10_000.0]
    csv = tmp_path / "timed.csv"
    csv.write_text("item_id,successes,failures,updated_at\nitem-1,64,32,6000\nitem-2,8,8,9000\n")
    journal = tmp_path / "journal"
    m, node, store, config = serve(make_config, csv, journal, clock=lambda: now[0], half_life_seconds=h)
    node.clock = lambda: now[0]
    node.submit([Event("a", "item-1", 1.0), Event("a", "new", 0.5)])      # at 10,000
    now[0] = 11_000.0
    node.submit([Event("b", "item-1", 0.0)])                               # at 11,000
    now[0] = 12_000.0
    before = posterior(m, ["item-1", "item-2", "new"])
    # item-1 at 12,000: 64 * 2**-6 + 1 * 2**-2 + 0 = 1.25 successes; 32 * 2**-6 + 0 + 1 * 2**-1 = 1 failure.
    assert before == ([1 + 1.25, 1 + 8 * 2**-3, 1 + 0.5 * 2**-2], [1 + 1.0, 1 + 8 * 2**-3, 1 + 0.5 * 2**-2])
    close(node, store)
    out = fold(str(csv), str(journal), config)["out"]
    assert open(out).read().splitlines()[1:] == ["item-1,2.5,2,11000", "item-2,8,8,9000", "new,0.5,0.5,10000"]
    m, node, store, _ = serve(make_config, out, journal, clock=lambda: now[0], half_life_seconds=h)
    assert posterior(m, ["item-1", "item-2", "new"]) == before
    close(node, store)
