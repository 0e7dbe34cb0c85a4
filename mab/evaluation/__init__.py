"""Offline evaluation of model settings on logged decisions (``mab evaluate``).

``readers`` (the decision log and rewards, read and joined with DuckDB),
``candidate`` (a setting from a configuration file, applied to logged
parameters), ``_propensity`` and ``propensity`` (position propensities by
Monte Carlo with the service's sampler), ``estimators`` (IPS and SNIPS with
confidence intervals), ``evaluate`` (the whole run), ``report`` (table and
JSON); ``schema`` (the decision record), ``synthetic`` and ``truth`` (logs
and true values of a known click model). docs/evaluation.md explains the
method.
"""
