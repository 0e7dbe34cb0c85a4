"""The estimates of ``mab evaluate`` on logs of a known logging policy with known click rates.

* Coverage: over many replications of the logged rankings and clicks (the
  decisions' candidates and counts fixed), the intervals of IPS and SNIPS
  for another setting cover its true value (computed by a separate Monte
  Carlo with the click rates, mab.evaluation.truth) about as often as
  their nominal 95%, and a value 4 standard errors away rarely.
* The logging setting itself: its estimate is the empirical mean exactly,
  and with the Monte Carlo weights forced on, it still agrees.
* End to end through the files, DuckDB and the report.
"""

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy import stats

from mab.evaluation import synthetic
from mab.evaluation.candidate import Candidate, recompute
from mab.evaluation.estimators import PositionEstimator
from mab.evaluation.evaluate import evaluate
from mab.evaluation.propensity import DrawSettings, weights
from mab.evaluation.report import as_json, format_table
from mab.evaluation.truth import policy_value

N_DECISIONS = 1500
CANDIDATES = 12
TOP_K = 3
REPLICATIONS = 100


@pytest.fixture(scope="module")
def world():
    """Fixed contexts: a catalogue with uncertain items, and each decision's candidates."""
    catalogue = synthetic.make_catalogue(400, seed=7, ctr=(2.0, 20.0), impressions_median=150.0,
                                         impressions_sigma=1.0, new_fraction=0.1)
    items = synthetic.choose_candidates(np.random.default_rng(8), N_DECISIONS, CANDIDATES, len(catalogue))
    logger = synthetic.Policy(1.0, 1.0)
    alpha, beta = synthetic.beta_parameters(catalogue, items, logger)
    offsets = np.arange(N_DECISIONS + 1, dtype=np.int64) * CANDIDATES
    return catalogue, items, alpha, beta, offsets


def replicate(world, candidate, r, settings, same=None):
    """One replication: new logged rankings, clicks and Monte Carlo draws; the estimator and what it kept."""
    catalogue, items, alpha, beta, offsets = world
    n = N_DECISIONS
    ranked, _ = synthetic.thompson_top(alpha, beta, TOP_K, seed=1000 + r)
    shown = np.take_along_axis(items, ranked.astype(np.int64), 1)
    rng = np.random.default_rng([r, 5])
    clicks = (rng.random((n, TOP_K)) < catalogue.theta[shown] * synthetic.examination(TOP_K)).astype(float)
    lengths = np.full(n, CANDIDATES)
    params = recompute(candidate, alpha.ravel(), beta.ravel(), lengths, np.ones(n), np.ones(n),
                       np.full(n, np.nan), None)
    out = weights(offsets, alpha.ravel(), beta.ravel(), params.alpha, params.beta, ranked,
                  np.arange(n, dtype=np.uint64) * 7919 + r, params.unchanged if same is None else same,
                  settings, seed=r)
    keep = out["unsupported"] <= 0.05
    est = PositionEstimator(TOP_K)
    est.add(clicks[keep], out["weight"][keep], np.ones((int(keep.sum()), TOP_K)))
    return est.result(0.95), keep, clicks, params


@pytest.mark.parametrize(("prior_alpha", "prior_beta"), [(1.0, 4.0), (3.0, 1.0)])
def test_intervals_cover_the_true_value_at_the_nominal_rate(world, prior_alpha, prior_beta):
    catalogue, items, alpha, beta, offsets = world
    candidate = Candidate("default", prior_alpha, prior_beta)
    params = recompute(candidate, alpha.ravel(), beta.ravel(), np.full(N_DECISIONS, CANDIDATES),
                       np.ones(N_DECISIONS), np.ones(N_DECISIONS), np.full(N_DECISIONS, np.nan), None)
    per_decision = policy_value(offsets, params.alpha, params.beta, catalogue.theta[items].ravel(),
                                synthetic.examination(TOP_K), np.full(N_DECISIONS, TOP_K), draws=3000, seed=1)
    # A different policy from the logger's, or the test would prove little.
    logged_truth = policy_value(offsets, alpha.ravel(), beta.ravel(), catalogue.theta[items].ravel(),
                                synthetic.examination(TOP_K), np.full(N_DECISIONS, TOP_K), draws=3000, seed=2)
    settings = DrawSettings(target_se=0.71)
    covered = {"ips": 0, "snips": 0}
    far = {"ips": 0, "snips": 0}
    kept_share = []
    for r in range(REPLICATIONS):
        result, keep, _, _ = replicate(world, candidate, r, settings)
        kept_share.append(keep.mean())
        truth = per_decision[keep].sum(axis=1).mean()
        for name in covered:
            interval = result["estimates"][name]["first_k"][-1]
            covered[name] += interval.low <= truth <= interval.high
            shifted = truth + 4 * interval.se
            far[name] += interval.low <= shifted <= interval.high
    gap = abs(per_decision.sum(axis=1).mean() - logged_truth.sum(axis=1).mean())
    assert gap > 0.01, gap
    assert np.mean(kept_share) > 0.9
    # P(Binomial(100, 0.95) <= 85) < 1e-3: a correct interval fails this by chance that rarely.
    lowest = stats.binom.ppf(1e-3, REPLICATIONS, 0.95)
    for name in covered:
        assert covered[name] > lowest, (name, covered[name])
        assert far[name] <= 10, (name, far[name])


def test_the_logging_setting_estimates_the_empirical_mean(world):
    candidate = Candidate("default", 1.0, 1.0)
    result, keep, clicks, params = replicate(world, candidate, 0, DrawSettings())
    assert params.unchanged.all() and keep.all()
    for name in ("ips", "snips"):
        got = [i.estimate for i in result["estimates"][name]["position"]]
        np.testing.assert_allclose(got, clicks.mean(axis=0), rtol=1e-12)
    # The weights forced through the Monte Carlo: the estimate still agrees
    # with the empirical mean within its interval, and the mean weight is 1.
    forced, _, clicks, _ = replicate(world, candidate, 0, DrawSettings(target_se=0.5),
                                     same=np.zeros(N_DECISIONS, bool))
    empirical = clicks.sum(axis=1).mean()
    for name in ("ips", "snips"):
        interval = forced["estimates"][name]["first_k"][-1]
        assert abs(interval.estimate - empirical) < 3.3 * interval.se, (name, interval, empirical)
    for k in range(TOP_K):
        w = forced["mean_weight"][k]
        assert abs(w.estimate - 1.0) < 3.3 * w.se


def test_end_to_end_from_files(tmp_path):
    catalogue = synthetic.make_catalogue(300, seed=3, impressions_median=500.0, new_fraction=0.05,
                                         max_age_seconds=3600.0)
    logger = synthetic.Policy(1.0, 1.0, 1800.0)
    paths = synthetic.write_logs(tmp_path / "log", catalogue, 3000, candidates=20, top_k=4, policy=logger,
                                 seed=4, files=3, batch_rows=700, rewards_path=str(tmp_path / "r.jsonl"))
    assert len(paths) == 3 and sum(pq.read_metadata(p).num_rows for p in paths) == 3000
    same = evaluate([tmp_path / "log"], [tmp_path / "r.jsonl"], Candidate("default", 1.0, 1.0, 1800.0),
                    batch_rows=999, details=True)
    logged = same["result"]["estimates"]["logged"]["first_k"][-1].estimate
    assert same["result"]["estimates"]["ips"]["first_k"][-1].estimate == pytest.approx(logged, rel=1e-12)
    assert same["draws"]["decisions_unchanged"] == 3000
    other = Candidate("default", 1.0, 3.0, 600.0)
    report = evaluate([tmp_path / "log"], [tmp_path / "r.jsonl"], other, batch_rows=999, details=True, seed=5)
    assert report["input"]["decisions"] == 3000 and report["input"]["positions"] == 4
    assert report["input"]["reward_events"] == report["input"]["reward_events_matched"]
    # The truth on the kept decisions, from the catalogue's click rates.
    details = report["details"]
    kept = details["kept"]
    batch = synthetic.make_batch  # same seeds as write_logs: rebuild the contexts
    items = np.concatenate([batch(catalogue, n, candidates=20, top_k=4, policy=logger, seed=4, first_index=i).items
                            for i, n in ((0, 700), (700, 300), (1000, 700), (1700, 300), (2000, 700), (2700, 300))])
    alpha, beta = synthetic.beta_parameters(catalogue, items, synthetic.Policy(1.0, 3.0, 600.0))
    truth = policy_value(np.arange(3001) * 20, alpha.ravel(), beta.ravel(), catalogue.theta[items].ravel(),
                         synthetic.examination(4), np.full(3000, 4), draws=2000, seed=9)
    # Rows come back in the log's order within each file.
    order = {d: i for i, d in enumerate(pq.read_table(tmp_path / "log", columns=["decision_id"])
                                        .column("decision_id").to_pylist())}
    rows = np.array([order[d] for d in details["decision_id"]])
    true_value = truth[rows[kept]].sum(axis=1).mean()
    ips = report["result"]["estimates"]["ips"]["first_k"][-1]
    assert ips.low - 0.5 * ips.se <= true_value <= ips.high + 0.5 * ips.se, (ips, true_value)
    text = format_table(report)
    assert "reward per decision over the first k positions" in text and "IPS" in text
    assert '"estimates"' in as_json(report) and "details" not in as_json(report)


def test_weights_file_reproduces_the_estimates_in_sql(tmp_path):
    # The fleet-scale route of docs/evaluation.md: weights written by
    # --weights-out, joined to the log and the rewards and aggregated in SQL
    # (here DuckDB's dialect of the BigQuery query) give the report's IPS.
    import duckdb

    catalogue = synthetic.make_catalogue(200, seed=5, impressions_median=300.0)
    synthetic.write_logs(tmp_path / "log", catalogue, 1500, candidates=10, top_k=3, seed=6,
                         rewards_path=str(tmp_path / "r.parquet"))
    report = evaluate([tmp_path / "log"], [tmp_path / "r.parquet"], Candidate("default", 2.0, 3.0),
                      weights_out=tmp_path / "w.parquet")
    con = duckdb.connect()
    row = con.execute(f"""
        WITH shown AS (
            SELECT decision_id, unnest(range(len(ranked))) AS position,
                   unnest(list_select(item_ids, [i + 1 for i in ranked])) AS item_id
            FROM read_parquet('{tmp_path / "log"}/*.parquet')),
        rewards AS (
            SELECT decision_id, item_id, max(reward) AS reward FROM '{tmp_path / "r.parquet"}' GROUP BY ALL),
        terms AS (
            SELECT w.decision_id, w.position, w.weight, coalesce(r.reward, 0) AS reward
            FROM '{tmp_path / "w.parquet"}' w
            JOIN shown s ON s.decision_id = w.decision_id AND s.position = w.position
            LEFT JOIN rewards r ON r.decision_id = s.decision_id AND r.item_id = s.item_id
            WHERE w.kept),
        per_decision AS (SELECT decision_id, sum(reward * weight) AS y FROM terms GROUP BY decision_id)
        SELECT avg(y), stddev_samp(y) / sqrt(count(*)), count(*) FROM per_decision
    """).fetchone()
    ips = report["result"]["estimates"]["ips"]["first_k"][-1]
    assert row[2] == report["overlap"]["decisions_kept"]
    assert row[0] == pytest.approx(ips.estimate, rel=1e-9)
    assert row[1] == pytest.approx(ips.se, rel=1e-6)
