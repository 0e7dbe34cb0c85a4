"""Candidate settings: read from the service's TOML, applied to logged parameters exactly."""

import numpy as np
import pytest

from mab.errors import ConfigError
from mab.evaluation.candidate import Candidate, candidate_from_document, load_candidate, recompute


def test_reads_the_model_table_of_a_service_configuration(tmp_path):
    path = tmp_path / "candidate.toml"
    path.write_text('max_items = 10\n[stores.default]\npath = "nowhere.csv"\n'
                    '[models.default]\nprior_alpha = 2\nprior_beta = 30.5\nhalf_life_seconds = 3600\n')
    c = load_candidate(path)
    assert (c.model, c.prior_alpha, c.prior_beta, c.half_life_seconds) == ("default", 2.0, 30.5, 3600.0)


def test_no_models_table_is_the_default_model():
    assert candidate_from_document({}) == Candidate("default", 1.0, 1.0, None, "<document>")


def test_several_models_need_a_choice():
    doc = {"models": {"a": {"prior_beta": 5}, "b": {}}}
    with pytest.raises(ConfigError, match="choose one with --model"):
        candidate_from_document(doc)
    assert candidate_from_document(doc, "a").prior_beta == 5.0
    with pytest.raises(ConfigError, match="no model 'c'"):
        candidate_from_document(doc, "c")


@pytest.mark.parametrize(("table", "message"), [
    ({"prior_alpha": 0}, "prior_alpha"),
    ({"prior_beta": "x"}, "prior_beta"),
    ({"half_life_seconds": -1}, "half_life_seconds"),
    ({"half_life_seconds": "1h"}, "half_life_seconds"),
    ({"surprise": 1}, "surprise"),
])
def test_invalid_tables_are_refused_naming_the_key(table, message):
    with pytest.raises(ConfigError, match=message):
        candidate_from_document({"models": {"default": table}})


def test_unreadable_files_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="No such file"):
        load_candidate(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[models.default\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_candidate(bad)


def flat(*decisions):
    """(alpha, beta, lengths) of decisions given as lists of (alpha, beta)."""
    alpha = np.array([a for d in decisions for a, _ in d])
    beta = np.array([b for d in decisions for _, b in d])
    return alpha, beta, np.array([len(d) for d in decisions])


def test_a_new_prior_replaces_the_logged_one():
    alpha, beta, lengths = flat([(11.0, 91.0), (1.0, 1.0)], [(3.5, 2.0)])
    r = recompute(Candidate("m", 2.0, 10.0), alpha, beta, lengths, np.array([1.0, 1.5]), np.array([1.0, 1.0]),
                  np.array([np.nan, np.nan]), None)
    np.testing.assert_array_equal(r.alpha, [12.0, 2.0, 4.0])
    np.testing.assert_array_equal(r.beta, [100.0, 10.0, 11.0])
    assert not r.unchanged.any()


def test_decay_is_undone_with_the_logged_half_life_and_redone_with_the_candidates():
    # Raw counts s = 40, f = 400, ages 0, 100 and 300 s; logged half-life 100 s, prior (1, 1).
    ages = np.array([0.0, 100.0, 300.0])
    s, f = 40.0, 400.0
    logged = 2.0 ** (-ages / 100.0)
    alpha = 1.0 + s * logged
    beta = 1.0 + f * logged
    lengths = np.array([3])
    one = np.array([1.0])
    for half_life, factor in ((300.0, 2.0 ** (-ages / 300.0)), (None, np.ones(3))):
        r = recompute(Candidate("m", 1.0, 1.0, half_life), alpha, beta, lengths, one, one, np.array([100.0]), ages)
        np.testing.assert_allclose(r.alpha, 1.0 + s * factor, rtol=1e-12)
        np.testing.assert_allclose(r.beta, 1.0 + f * factor, rtol=1e-12)
    # From no decay to a half-life: the logged counts are raw.
    r = recompute(Candidate("m", 1.0, 1.0, 100.0), 1.0 + np.full(3, s), 1.0 + np.full(3, f), lengths, one, one,
                  np.array([np.nan]), ages)
    np.testing.assert_allclose(r.alpha, alpha, rtol=1e-12)


def test_unknown_ages_are_not_decayed_and_are_reported():
    alpha, beta, lengths = flat([(5.0, 7.0), (9.0, 3.0)], [(2.0, 2.0)])
    ages = np.array([50.0, np.nan, np.nan])
    r = recompute(Candidate("m", 1.0, 1.0, 50.0), alpha, beta, lengths, np.ones(2), np.ones(2),
                  np.array([np.nan, np.nan]), ages)
    np.testing.assert_allclose(r.alpha, [1.0 + 4.0 * 0.5, 9.0, 2.0])
    assert r.unchanged.tolist() == [False, True]       # the second decision has no age at all
    assert r.decay_without_age == 1


def test_an_unchanged_setting_keeps_the_logged_parameters_bit_for_bit():
    alpha, beta, lengths = flat([(0.1 + 0.2, 7.3), (1e-300 + 0.7, 3.0)])
    r = recompute(Candidate("m", 0.7, 0.3), alpha, beta, lengths, np.array([0.7]), np.array([0.3]),
                  np.array([np.nan]), None)
    assert r.unchanged.all()
    assert r.alpha.tobytes() == alpha.tobytes() and r.beta.tobytes() == beta.tobytes()


def test_counts_undecayed_past_double_precision_are_counted():
    ages = np.array([100.0 * 60])          # 60 half-lives
    r = recompute(Candidate("m", 1.0, 1.0, None), np.array([1.0 + 1e-16]), np.array([1.5]), np.array([1]),
                  np.ones(1), np.ones(1), np.array([100.0]), ages)
    assert r.imprecise == 1
    assert np.all(np.isfinite(r.alpha)) and np.all(np.isfinite(r.beta))
