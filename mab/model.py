"""The bandit model: store features -> Beta posterior parameters."""

import time
from dataclasses import dataclass

import numpy as np

from mab.errors import ConfigError, InvalidRequest, StoreUnavailable


@dataclass(slots=True)
class BetaParameters:
    alpha: np.ndarray
    beta: np.ndarray
    missing: int      # items the store does not hold: scored from the prior
    failed: int       # items whose features could not be fetched: scored from the prior
    # With a half-life: each item's count age in seconds (NaN where the store
    # gave no time: a missing or failed item); None without decay.
    age_seconds: np.ndarray | None = None


class BetaModel:
    """Thompson sampling with a Beta-Bernoulli posterior per entity.

    With ``s`` successes and ``f`` failures observed for an entity and a
    Beta(prior_alpha, prior_beta) prior, the posterior is
    Beta(prior_alpha + s, prior_beta + f). An entity the store does not hold
    has the prior itself, so new items are explored rather than rejected.

    Decay (``half_life_seconds``): counts of age ``a`` seconds count
    ``s * 2**(-a / half_life)`` and ``f * 2**(-a / half_life)``, the prior
    unchanged; the age is ``clock() - t`` (never below 0: a time ahead of
    the clock counts as now), with ``t`` the store's time of the counts
    (the embedded CSV's ``updated_at`` column, a Vertex feature's
    ``generate_time``). So old evidence fades towards the prior and the
    bandit keeps exploring a world that drifts; the posterior is that of
    exponentially weighted counts, the discounted Thompson sampling of
    Raj and Kalyani, "Taming non-stationary bandits: a Bayesian approach"
    (2017).

    Online updates: ``overlay`` (set by mab.feedback when the model has
    ``online_updates``) adds the rewards this node accepted since the
    snapshot, decayed the same way. ``clock``: Unix seconds (tests inject one).
    """

    def __init__(self, config, store, *, clock=time.time):
        self.config = config
        self.name = config.name
        self.store = store
        self.features = (config.successes, config.failures)
        self.template = config.entity_id
        self.half_life = config.half_life_seconds
        self.clock = clock
        self.overlay = None
        self._fetched = self.features
        if self.half_life is not None:
            timestamp = getattr(store, "timestamp_feature", None)
            if timestamp is None:
                raise ConfigError(
                    f"models.{self.name}.half_life_seconds: store {config.store!r} ({store.backend}) "
                    "gives no time for its counts"
                )
            self._fetched = self.features + (timestamp,)
        # A template without {user_id} has the same parts for every request.
        self._fixed_parts = None if self.template.needs_user else self.template.parts()

    def check(self):
        """Fail early if the loaded store lacks this model's features (or,
        with a half-life, the time of its counts)."""
        check = getattr(self.store, "check_features", None)
        if check is None:
            return
        check(self.features)
        if self.half_life is not None:
            try:
                check(self._fetched[2:])
            except ConfigError:
                raise ConfigError(
                    f"model {self.name!r} has half_life_seconds, but store {self.config.store!r} has no "
                    f"{self._fetched[2]!r} column: add one (Unix seconds or RFC 3339) saying when each "
                    "row's counts were last updated"
                ) from None

    def parameters(self, item_ids, user_id=None, deadline=None, wait=True):
        if self.template.needs_user and user_id is None:
            raise InvalidRequest(
                f"model {self.name!r} needs user_id (its entity ids are {self.template.text!r})",
                code="user_id_required",
            )
        prefix, suffix = self._fixed_parts or self.template.parts(user_id)
        # wait=False may raise WouldWait (see mab.stores).
        batch = self.store.fetch(item_ids, prefix, suffix, self._fetched, deadline, wait=wait)
        if batch.failed and self.config.on_store_error == "fail":
            raise StoreUnavailable(
                f"features of {batch.failed} of {len(item_ids)} items could not be fetched "
                f"from store {self.config.store!r}"
            )
        successes, failures = batch.columns[0], batch.columns[1]
        age = None
        now = 0.0
        if self.half_life is not None:
            now = self.clock()
            stamps = batch.columns[2]
            age = now - stamps
            factor = np.exp2(np.maximum(age, 0.0) / -self.half_life)
            successes *= factor
            failures *= factor
            # A missing or failed item has no time (0: its counts are 0 too).
            age[stamps == 0.0] = np.nan
        if self.overlay is not None:
            self.overlay.add_to(successes, failures, batch.rows, item_ids, prefix, suffix, now)
        # Missing and failed entities come back as zero counts: prior only.
        alpha = np.add(successes, self.config.prior_alpha, out=successes)
        beta = np.add(failures, self.config.prior_beta, out=failures)
        return BetaParameters(alpha, beta, batch.missing, batch.failed, age)

    def describe(self):
        c = self.config
        return {
            "store": c.store,
            "entity_id": self.template.text,
            "features": list(self.features),
            "prior": [c.prior_alpha, c.prior_beta],
            "on_store_error": c.on_store_error,
            "half_life_seconds": c.half_life_seconds,
            "online_updates": c.online_updates,
        }
