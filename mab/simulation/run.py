"""The simulation loop, and the check of ``mab evaluate`` against the truth.

``run`` drives a service (``client.HttpService``, or the tests' fake with
the same two methods) for ``steps`` rounds. In each round, every setting
(a model of the service) is asked to rank the round's candidates; the
environment clicks on what it shows, the clicks go back through
``/feedback`` (reward 1 or 0 for every shown item, so failures count too),
and the round's regret is recorded. The events sent are also written to a
JSON Lines file: the REWARDS of ``mab evaluate``.

``check_estimates`` then evaluates, on the decisions logged for the first
setting (the logging policy), every setting as a candidate, and computes
each one's true value on those decisions from the known click rates
(``mab.evaluation.truth``): the value the estimators aim at. It is the
candidate's reward on the logged traffic, with the counts the logging
policy had: off-policy evaluation answers "what would this setting have
earned on these decisions", not "how would it have learned on its own".
"""

import os
from dataclasses import dataclass, field

import numpy as np
import orjson

from mab.evaluation.candidate import Candidate, recompute
from mab.evaluation.evaluate import evaluate
from mab.evaluation.propensity import DrawSettings
from mab.evaluation.readers import DecisionLog
from mab.evaluation.truth import policy_value

#: The user the simulated requests and events name (the models key their
#: counts by item only, so one user is enough).
USER = "sim-user"


@dataclass
class Run:
    """What a simulation produced: per-step regret by setting (float64
    (steps,) each), the step of every decision by id, and the rewards file."""

    settings: list
    regret: dict
    decision_steps: dict
    rewards_path: str
    steps: int
    events: int = 0
    decisions: dict = field(default_factory=dict)


def run(service, env, settings, *, steps, rewards_path, candidates=None, seed=0, progress=None):
    """Simulate ``steps`` rounds; returns a Run.

    ``candidates``: items per request, drawn anew each round without
    replacement (None: every item). Raises the service's errors
    (``client.ServiceError``).
    """
    rng = np.random.default_rng([seed, 2])
    click_rngs = {s.name: np.random.default_rng([seed, 3, i]) for i, s in enumerate(settings)}
    # Each /predict carries its own seed (the service's draws are then a
    # function of it and of the counts): a run is reproducible from ``seed``.
    request_seeds = np.random.default_rng([seed, 4])
    regret = {s.name: np.zeros(steps) for s in settings}
    decision_steps = {}
    decisions = {s.name: 0 for s in settings}
    events_sent = 0
    os.makedirs(os.path.dirname(os.path.abspath(rewards_path)), exist_ok=True)
    with open(rewards_path, "wb") as rewards_file:
        for t in range(steps):
            if candidates is None:
                pool = np.arange(env.n_items)
            else:
                pool = np.sort(rng.choice(env.n_items, size=candidates, replace=False))
            item_ids = [env.item_ids[i] for i in pool]
            best = env.best_reward(t, pool)
            events = []
            for setting in settings:
                answer = service.predict(item_ids, env.top_k, setting.name, USER,
                                         seed=int(request_seeds.integers(0, 2**63)))
                shown = [env.index[item] for item in answer["item_ids"]]
                clicks = env.clicks(shown, t, click_rngs[setting.name])
                regret[setting.name][t] = best - env.expected_reward(shown, t)
                decision_steps[answer["decision_id"]] = t
                decisions[setting.name] += 1
                events.extend({"decision_id": answer["decision_id"], "item_id": item, "reward": float(c),
                               "model": setting.name, "user_id": USER}
                              for item, c in zip(answer["item_ids"], clicks))
            service.feedback(events)
            for event in events:
                rewards_file.write(orjson.dumps(event) + b"\n")
            events_sent += len(events)
            if progress is not None:
                progress(t + 1, steps)
    return Run(list(settings), regret, decision_steps, rewards_path, steps, events_sent, decisions)


def _truth(log_dir, rewards_path, candidate, model, env, decision_steps, kept_ids, draws, seed):
    """The candidate's true reward per position on the kept logged decisions: float64 (K,)."""
    log = DecisionLog([log_dir], [rewards_path], model=model)
    K = log.positions
    kept_ids = set(kept_ids)
    total = np.zeros(K)
    count = 0
    for batch in log.batches(5000, item_ids=True):
        keep = np.array([d in kept_ids for d in batch.decision_ids.to_pylist()])
        if not keep.any():
            continue
        params = recompute(candidate, batch.alpha, batch.beta, batch.lengths, batch.prior_alpha,
                           batch.prior_beta, batch.half_life, batch.ages)
        steps = np.array([decision_steps[d] for d in batch.decision_ids.to_pylist()])
        items = np.array([env.index[i] for i in batch.item_ids])
        rates = np.concatenate([env.theta(int(t))[items[batch.offsets[d]:batch.offsets[d + 1]]]
                                for d, t in enumerate(steps)])
        positions = (batch.ranked >= 0).sum(axis=1)
        value = policy_value(batch.offsets, params.alpha, params.beta, rates, env.examination[:K], positions,
                             draws=draws, seed=seed)
        total += value[keep].sum(axis=0)
        count += int(keep.sum())
    return total / max(count, 1), count


def check_estimates(log_dir, run_result, env, *, draws=DrawSettings(target_se=0.5), truth_draws=2000, seed=0,
                    confidence=0.95):
    """Evaluate every setting on the first setting's logged decisions and
    compare with the true values. Returns a list of dicts, one per
    candidate setting: name, the IPS and SNIPS estimates of the reward per
    decision (all positions) and of top-1 with intervals, the true values,
    whether each interval covers the truth, and the report."""
    logger = run_result.settings[0]
    out = []
    for setting in run_result.settings:
        candidate = Candidate(logger.name, setting.prior_alpha, setting.prior_beta, setting.half_life_seconds,
                              source=f"setting {setting.name}")
        report = evaluate([log_dir], [run_result.rewards_path], candidate, model=logger.name, draws=draws,
                          seed=seed, confidence=confidence, details=True)
        details = report["details"]
        kept = details["decision_id"][details["kept"]]
        truth, count = _truth(log_dir, run_result.rewards_path, candidate, logger.name, env,
                              run_result.decision_steps, kept, truth_draws, seed)
        estimates = report["result"]["estimates"]
        entry = {"setting": setting.name, "decisions": count,
                 "true": {"per_decision": float(truth.sum()), "top1": float(truth[0])}}
        for name in ("ips", "snips"):
            per_decision = estimates[name]["first_k"][-1]
            top1 = estimates[name]["first_k"][0]
            entry[name] = {"per_decision": per_decision.as_dict(), "top1": top1.as_dict(),
                           "covers": {"per_decision": per_decision.low <= truth.sum() <= per_decision.high,
                                      "top1": top1.low <= truth[0] <= top1.high}}
        entry["logged"] = estimates["logged"]["first_k"][-1].as_dict()
        entry["report"] = {k: v for k, v in report.items() if k != "details"}
        out.append(entry)
    return out
