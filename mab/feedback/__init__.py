"""Rewards in: POST /feedback, the node's journal, and online updates.

A client reports what became of a decision: ``{"events": [{"decision_id",
"item_id", "reward", "model", "user_id"}]}``, a reward in [0, 1] per
(decision, item). The node

1. validates the whole batch (``events``): one bad event refuses it all,
   naming the event's index;
2. drops events whose (decision id, item id) it has already taken in within
   the dedup window (``node``; shared by every worker, rebuilt from the
   journal on restart);
3. appends the rest to its journal (``journal``), synced as configured,
   before it answers;
4. for models with ``online_updates``, adds them to the model's overlay
   (``overlay``, ``_overlay``): count deltas in shared memory that every
   worker's next prediction reads.

A reward ``r`` adds ``r`` to the successes and ``1 - r`` to the failures.
Agrawal and Goyal, "Analysis of Thompson Sampling for the Multi-armed
Bandit Problem" (COLT 2012, Algorithm 2), take Bernoulli Thompson sampling
to rewards in [0, 1] with a Bernoulli trial: a reward r counts as one
success with probability r, else one failure. mab adds that trial's
expectation instead (fractional pseudo-counts): the same update on
average, without the trial's extra noise, and exactly the Beta-Bernoulli
update for rewards of 0 and 1.

``fold`` writes a journal's events into a new snapshot (``mab data compile
--events``); the overlay of that snapshot then starts from the events the
snapshot does not hold. docs/feedback.md has the whole route, and the one
across many nodes.
"""

from mab.feedback.node import FeedbackNode, OverlayFull, state_directory  # noqa: F401


def prepare_node(config, *, fresh):
    """In the gunicorn master, before it forks: build the node's feedback
    state from the journal (all of it when ``fresh``: at start, so a restart
    replays the journal into new overlays and a new dedup window; on a
    reload only what the new snapshots need), for the embedded stores the
    master has pinned (``mab.stores.embedded.pin``). Returns the
    ``FeedbackNode``'s description. Raises ``DataError``, ``JournalCorrupt``,
    ``OSError``."""
    from mab.stores import create_store

    online = {model.store for model in config.models.values() if model.online_updates}
    stores = {}
    node = FeedbackNode(config)
    try:
        for name in online:
            store = stores[name] = create_store(config.stores[name], config.cache_dir)
            store.load()
        node.open(stores, fresh=fresh)
        if not fresh:
            node.remove_other_overlays()
        return node.describe()
    finally:
        node.close()
        for store in stores.values():
            store.close()
