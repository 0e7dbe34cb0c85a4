"""The candidate setting: read from a configuration file, applied to logged parameters.

A candidate is a model's prior (``prior_alpha``, ``prior_beta``) and decay
(``half_life_seconds``), read from a file in the service's own TOML layout
(``[models.NAME]`` tables, see ``mab.config``): the file a deployment would
run is the file evaluated. Only the model's table is read; stores and the
other top-level settings do not enter the evaluation and are not checked.

Recomputing a logged candidate's Beta parameters under the candidate:
the record holds alpha = prior_alpha + s * 2^(-age / h) (and beta likewise
with f), h the logged half-life (no factor without decay or age). So

    s = (alpha - prior_alpha) * 2^(age / h)            the undecayed count
    alpha' = prior_alpha' + s * 2^(-age / h')           the candidate's

computed as one factor 2^(age * (1/h - 1/h')), with 1/h = 0 for no decay.
"""

from dataclasses import dataclass

import numpy as np

from mab import config as mab_config
from mab.errors import ConfigError

#: Undecaying by more than 2^52 multiplies the rounding error of
#: alpha - prior (a unit in the last place of alpha) past the count itself.
_PRECISION_EXPONENT = 52.0


@dataclass(frozen=True)
class Candidate:
    """A setting to evaluate: model name, Beta prior, half-life in seconds (None: no decay)."""

    model: str
    prior_alpha: float = 1.0
    prior_beta: float = 1.0
    half_life_seconds: float | None = None
    source: str = ""

    def describe(self):
        return {"model": self.model, "prior_alpha": self.prior_alpha, "prior_beta": self.prior_beta,
                "half_life_seconds": self.half_life_seconds, "source": self.source}


def candidate_from_document(document, model=None, source="<document>"):
    """The Candidate of model ``model`` in a parsed TOML document (a dict).

    Without ``model``, the document must define exactly one model (or none:
    the default model with the default prior). The model's table is
    validated by ``mab.config``'s own model parser. Raises ConfigError
    naming the file and the key.
    """
    models = document.get("models")
    if models is None:
        models = {mab_config.DEFAULT_MODEL: {}}
    if not isinstance(models, dict) or not all(isinstance(t, dict) for t in models.values()):
        raise ConfigError(f"{source}: [models] must hold one table per model")
    if model is None:
        if len(models) != 1:
            raise ConfigError(f"{source} defines the models {', '.join(sorted(models))}: choose one with --model")
        model = next(iter(models))
    if model not in models:
        raise ConfigError(f"{source} has no model {model!r} (it defines {', '.join(sorted(models)) or 'none'})")
    table = dict(models[model])
    try:
        parsed = mab_config._parse_model(model, table)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc.message}") from None
    return Candidate(model, parsed.prior_alpha, parsed.prior_beta, parsed.half_life_seconds, source)


def load_candidate(path, model=None):
    """The Candidate of ``model`` in the TOML file ``path``; see candidate_from_document.
    Raises ConfigError when the file cannot be read or is invalid."""
    return candidate_from_document(mab_config.read_toml(path, str(path)), model, source=str(path))


@dataclass
class Recomputed:
    """The candidate's Beta parameters for a batch of logged decisions.

    ``alpha``, ``beta``: float64 (total,), aligned with the logged flat
    arrays. ``unchanged``: bool (n,), decisions whose parameters are the
    logged ones exactly (same prior, and same decay or no ages).
    ``imprecise``: candidates undecayed by more than 2^52, whose counts the
    log could not hold to double precision. ``decay_without_age``:
    decisions where the half-lives differ but no age is known, so the
    candidate's decay cannot apply.
    """

    alpha: np.ndarray
    beta: np.ndarray
    unchanged: np.ndarray
    imprecise: int
    decay_without_age: int


def recompute(candidate, alpha, beta, lengths, prior_alpha, prior_beta, half_life, ages):
    """The candidate's parameters for logged decisions (see the module docstring).

    ``alpha``, ``beta``: float64 (total,), the logged parameters, decision
    by decision; ``lengths``: int (n,), candidates per decision (>= 1);
    ``prior_alpha``, ``prior_beta``, ``half_life``: float64 (n,), the logged
    model's settings (half_life NaN: no decay); ``ages``: float64 (total,)
    with NaN where unknown, or None. Returns a Recomputed.

    Counts recovered below 0 (rounding of alpha - prior) count as 0;
    parameters are capped at 1e300 so that they stay finite.
    """
    n = lengths.shape[0]
    same_prior = (prior_alpha == candidate.prior_alpha) & (prior_beta == candidate.prior_beta)
    logged_rate = np.where(np.isnan(half_life), 0.0, 1.0 / np.where(np.isnan(half_life), 1.0, half_life))
    candidate_rate = 0.0 if candidate.half_life_seconds is None else 1.0 / candidate.half_life_seconds
    same_decay = logged_rate == candidate_rate
    if ages is not None:
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        has_age = np.add.reduceat(np.isfinite(ages), starts) > 0 if n else np.zeros(0, bool)
    else:
        has_age = np.zeros(n, bool)
    unchanged = same_prior & (same_decay | ~has_age)
    decay_without_age = int(np.count_nonzero(~same_decay & ~has_age))

    s = np.maximum(alpha - np.repeat(prior_alpha, lengths), 0.0)
    f = np.maximum(beta - np.repeat(prior_beta, lengths), 0.0)
    imprecise = 0
    if ages is not None and np.any(~same_decay & has_age):
        exponent = ages * (np.repeat(logged_rate, lengths) - candidate_rate)
        exponent = np.where(np.isfinite(exponent), exponent, 0.0)
        imprecise = int(np.count_nonzero((exponent > _PRECISION_EXPONENT) & ((s > 0) | (f > 0))))
        factor = np.exp2(np.minimum(exponent, 1000.0))
        s = s * factor
        f = f * factor
    a1 = np.minimum(candidate.prior_alpha + s, 1e300)
    b1 = np.minimum(candidate.prior_beta + f, 1e300)
    keep = np.repeat(unchanged, lengths)
    a1[keep] = alpha[keep]
    b1[keep] = beta[keep]
    return Recomputed(a1, b1, unchanged, imprecise, decay_without_age)
