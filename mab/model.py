"""The bandit model: store features -> Beta posterior parameters."""

from dataclasses import dataclass

import numpy as np

from mab.errors import InvalidRequest, StoreUnavailable


@dataclass(slots=True)
class BetaParameters:
    alpha: np.ndarray
    beta: np.ndarray
    missing: int      # items the store does not hold: scored from the prior
    failed: int       # items whose features could not be fetched: scored from the prior


class BetaModel:
    """Thompson sampling with a Beta-Bernoulli posterior per entity.

    With ``s`` successes and ``f`` failures observed for an entity and a
    Beta(prior_alpha, prior_beta) prior, the posterior is
    Beta(prior_alpha + s, prior_beta + f). An entity the store does not hold
    has the prior itself, so new items are explored rather than rejected.
    """

    def __init__(self, config, store):
        self.config = config
        self.name = config.name
        self.store = store
        self.features = (config.successes, config.failures)
        self.template = config.entity_id
        # A template without {user_id} has the same parts for every request.
        self._fixed_parts = None if self.template.needs_user else self.template.parts()

    def check(self):
        """Fail early if the loaded store lacks this model's features."""
        check = getattr(self.store, "check_features", None)
        if check is not None:
            check(self.features)

    def parameters(self, item_ids, user_id=None, deadline=None):
        if self.template.needs_user and user_id is None:
            raise InvalidRequest(
                f"model {self.name!r} needs user_id (its entity ids are {self.template.text!r})",
                code="user_id_required",
            )
        prefix, suffix = self._fixed_parts or self.template.parts(user_id)
        batch = self.store.fetch(item_ids, prefix, suffix, self.features, deadline)
        if batch.failed and self.config.on_store_error == "fail":
            raise StoreUnavailable(
                f"features of {batch.failed} of {len(item_ids)} items could not be fetched "
                f"from store {self.config.store!r}"
            )
        successes, failures = batch.columns
        # Missing and failed entities come back as zero counts: prior only.
        alpha = np.add(successes, self.config.prior_alpha, out=successes)
        beta = np.add(failures, self.config.prior_beta, out=failures)
        return BetaParameters(alpha, beta, batch.missing, batch.failed)

    def describe(self):
        c = self.config
        return {
            "store": c.store,
            "entity_id": self.template.text,
            "features": list(self.features),
            "prior": [c.prior_alpha, c.prior_beta],
            "on_store_error": c.on_store_error,
        }
