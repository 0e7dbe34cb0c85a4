"""Online updates under gunicorn with two workers: a burst of rewards moves
an item's rank as its posterior says, on every worker; after kill -9 and a
restart, every journaled event counts exactly once."""

import http.client
import itertools
import os
import random
import signal
import threading
import time

import numpy as np
import orjson
from scipy import integrate, stats

from mab.feedback.journal import Journal
from mab.sampling import sample_beta
from mab.service import rank
from tests.serving import Server

PRIOR = (1.0, 1.0)
CSV = "item_id,successes,failures\ntarget,9,19\nrival,30,30\nother,20,40\n"
IDS = ["target", "rival", "other"]


def write_config(tmp_path, csv=CSV):
    (tmp_path / "items.csv").write_text(csv)
    path = tmp_path / "mab.toml"
    path.write_text(f"""
cache_dir = "{tmp_path / 'cache'}"
[stores.default]
path = "items.csv"
[models.default]
online_updates = true
prior_alpha = {PRIOR[0]}
prior_beta = {PRIOR[1]}
[feedback]
journal = "journal"
dedup_entries = 10000
overlay_max_entries = 1000
overlay_key_bytes = 65536
""")
    return path


def start(tmp_path, config):
    server = Server(tmp_path, {"MAB_CONFIG": str(config), "WEB_CONCURRENCY": "2", "MAB_METRICS": "0"}).start()
    server.wait_ready()
    assert len(server.wait_for_workers(2)) == 2
    return server


def post_json(server, path, doc, connection=None):
    own = connection is None
    connection = connection or http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("POST", path, body=orjson.dumps(doc), headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.headers["X-Served-By"], orjson.loads(response.read())
    finally:
        if own:
            connection.close()


def per_worker(server, workers, wanted, body_for):
    """Answers of /predict until every worker in ``workers`` answered
    ``wanted`` requests: {worker: [(body sent, answer)]}. Keep-alive
    connections stick to a worker, so new ones are opened until both answered."""
    answers = {worker: [] for worker in workers}
    counter = itertools.count()
    deadline = time.monotonic() + 240
    while any(len(a) < wanted for a in answers.values()):
        assert time.monotonic() < deadline, {w: len(a) for w, a in answers.items()}
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            for _ in range(25):
                body = body_for(next(counter))
                status, worker, answer = post_json(server, "/predict", body, connection)
                assert status == 200, answer
                if worker not in answers:
                    break       # an old worker still draining after a reload: try another connection
                if len(answers[worker]) < wanted:
                    answers[worker].append((body, answer))
                elif len(answers[worker]) >= wanted:
                    break       # this connection's worker has enough: try another
        finally:
            connection.close()
    return answers


def worker_ids(server, source=None):
    """The ``host/pid`` of both workers, from /ready (X-Served-By names the
    same). With ``source``: only workers serving that file, i.e. after a
    reload the new ones (an old worker may still answer while it drains)."""
    seen = set()
    deadline = time.monotonic() + 60
    while len(seen) < 2 and time.monotonic() < deadline:
        status, headers, body = server.request("GET", "/ready")
        assert status == 200
        ready = orjson.loads(body)
        if source is None or ready.get("stores", {}).get("default", {}).get("source") == source:
            seen.add(ready["worker"])
    assert len(seen) == 2
    return seen


def probability_first(params):
    """P(the first item's Beta sample exceeds the others'), by quadrature:
    the integral of f_0(x) * prod_j F_j(x) over [0, 1]."""
    first, *rest = [stats.beta(a, b) for a, b in params]
    value, error = integrate.quad(lambda x: first.pdf(x) * np.prod([r.cdf(x) for r in rest]), 0, 1,
                                  epsabs=1e-12, epsrel=1e-10, limit=200)
    assert error < 1e-8
    return value


def expected_answer(ids, alpha, beta, seed):
    scores = sample_beta(np.array(alpha, dtype=np.float64), np.array(beta, dtype=np.float64), seed=seed)
    order = rank(scores, None, seed)
    return [ids[i] for i in order], scores[order].tolist()


def test_a_burst_of_rewards_moves_the_rank_as_the_posterior_says_on_every_worker(tmp_path):
    server = start(tmp_path, write_config(tmp_path))
    try:
        workers = worker_ids(server)
        counts = {"target": [9, 19], "rival": [30, 30], "other": [20, 40]}

        def posterior():
            return [(PRIOR[0] + counts[i][0], PRIOR[1] + counts[i][1]) for i in IDS]

        def body(k):
            return {"item_ids": IDS, "seed": seed_base + k}

        def check(answers, wanted_p):
            # Per worker, the number of answers ranking the target first is
            # Binomial(n, p) under the posterior: it must lie within the
            # central 1 - 1e-4 of that distribution (fixed seeds).
            for worker, got in answers.items():
                n = len(got)
                first = sum(answer["item_ids"][0] == "target" for _, answer in got)
                low, high = stats.binom.ppf(0.5e-4, n, wanted_p), stats.binom.isf(0.5e-4, n, wanted_p)
                assert low <= first <= high, (worker, first, n, wanted_p, low, high)
                # And exactly: the answer is the seeded sample of this posterior.
                alpha, beta = zip(*posterior())
                for sent, answer in got[:20]:
                    assert (answer["item_ids"], answer["scores"]) == expected_answer(IDS, alpha, beta, sent["seed"])

        seed_base = 0
        p_before = probability_first(posterior())
        check(per_worker(server, workers, 400, body), p_before)

        # The burst: 20 rewards for the target, in batches to either worker,
        # each sent twice (a client retrying): the repeats are duplicates.
        rng = random.Random(5)
        served = set()
        for batch in range(4):
            events = [{"decision_id": f"burst-{batch}-{k}", "item_id": "target", "reward": 1.0} for k in range(5)]
            for attempt in range(2):
                status, worker, answer = post_json(server, "/feedback", {"events": events})
                assert status == 200, answer
                served.add(worker)
                assert answer["accepted"] == (5 if attempt == 0 else 0)
            time.sleep(rng.random() * 0.01)
        counts["target"][0] += 20
        p_after = probability_first(posterior())
        assert p_before < 0.06 and p_after > 0.85           # 0.058 and 0.857
        seed_base = 10**6
        check(per_worker(server, workers, 600, body), p_after)
        assert served <= workers
    finally:
        server.stop()


def test_kill_9_and_restart_apply_every_journaled_event_exactly_once(tmp_path):
    items = ["target", "rival", "other"] + [f"new-{i}" for i in range(4)]
    config = write_config(tmp_path)
    server = start(tmp_path, config)
    acknowledged = []           # the events of every batch answered 200
    lock = threading.Lock()
    stop = threading.Event()

    def client(k):
        rng = random.Random(k)
        sent = []
        while not stop.is_set():
            if sent and rng.random() < 0.3:
                events = rng.sample(sent, min(len(sent), rng.randint(1, 3)))     # retries: duplicates
            else:
                events = [{"decision_id": f"c{k}-{len(sent) + j}", "item_id": rng.choice(items),
                           "reward": rng.randrange(5) / 4} for j in range(rng.randint(1, 5))]
            try:
                status, _, answer = post_json(server, "/feedback", {"events": events})
            except (OSError, http.client.HTTPException):
                return          # the server is gone
            assert status == 200, answer
            sent.extend(events)
            with lock:
                acknowledged.extend(events)

    clients = [threading.Thread(target=client, args=(k,)) for k in range(3)]
    for thread in clients:
        thread.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(server.process.pid, signal.SIGKILL)        # kill -9: the master and both workers
    server.process.wait(30)
    stop.set()
    for thread in clients:
        thread.join(60)
    server.log.close()
    assert len(acknowledged) >= 300

    # A write cut short by the crash leaves a torn line at the end.
    journal = Journal(str(tmp_path / "journal"))
    last = journal.path(journal.segments()[-1])
    with open(last, "ab") as f:
        f.write(b'{"seq":999999,"time":"2024-05-06T12:53:2')
    journal.close()

    server = Server(tmp_path, {"MAB_CONFIG": str(config), "WEB_CONCURRENCY": "2", "MAB_METRICS": "0"}).start()
    try:
        server.wait_ready()
        workers = worker_ids(server)
        journal = Journal(str(tmp_path / "journal"))
        records = [record for batch, _ in journal.read(journal.start()) for record in batch]
        journal.close()
        keys = [(r.decision_id, r.item_id) for r in records]
        assert len(keys) == len(set(keys)), "an event was journaled twice"
        assert {(e["decision_id"], e["item_id"]) for e in acknowledged} <= set(keys), "an acknowledged event was lost"
        assert not open(last, "rb").read().endswith(b"2024-05-06T12:53:2"), "the torn tail was not cut"
        # The counts: the CSV's, plus every journaled event once (dyadic rewards: exact sums).
        base = {"target": [9, 19], "rival": [30, 30], "other": [20, 40]}
        alpha = {item: PRIOR[0] + base.get(item, [0, 0])[0] for item in items}
        beta = {item: PRIOR[1] + base.get(item, [0, 0])[1] for item in items}
        for r in records:
            alpha[r.item_id] += r.reward
            beta[r.item_id] += 1 - r.reward
        answers = per_worker(server, workers, 5, lambda k: {"item_ids": items, "seed": 7 + k})
        for worker, got in answers.items():
            for sent, answer in got:
                expected = expected_answer(items, [alpha[i] for i in items], [beta[i] for i in items], sent["seed"])
                assert (answer["item_ids"], answer["scores"]) == expected, worker
        status, _, body = server.request("GET", "/ready")
        assert orjson.loads(body)["feedback"]["last_seq"] == len(records)
        # The dedup window was rebuilt from the journal too.
        status, _, answer = post_json(server, "/feedback", {"events": acknowledged[:5]})
        assert status == 200 and answer["accepted"] == 0 and answer["duplicates"] == list(range(5))
    finally:
        server.stop()


def test_a_fold_then_a_reload_serves_the_same_posterior_and_starts_the_overlay_again(tmp_path):
    from mab.config import load_config
    from mab.feedback.fold import fold

    config = write_config(tmp_path)
    server = start(tmp_path, config)
    try:
        events = [{"decision_id": f"f{k}", "item_id": item, "reward": k % 5 / 4}
                  for k, item in enumerate(["target", "rival", "brand-new"] * 4)]
        status, _, answer = post_json(server, "/feedback", {"events": events})
        assert status == 200 and answer["accepted"] == 12
        items = IDS + ["brand-new"]
        before = per_worker(server, worker_ids(server), 3, lambda k: {"item_ids": items, "seed": 100 + k})
        # Fold while the server runs, point the store at the new file, reload.
        folded = fold(str(tmp_path / "items.csv"), str(tmp_path / "journal"), load_config({"MAB_CONFIG": str(config)}))
        config.write_text(config.read_text().replace('path = "items.csv"', f'path = "{os.path.basename(folded["out"])}"'))
        os.kill(server.process.pid, signal.SIGHUP)
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline, server.output()
            ready = [orjson.loads(server.request("GET", "/ready")[2]) for _ in range(6)]
            if all(r.get("stores", {}).get("default", {}).get("source") == folded["out"] for r in ready):
                break
            time.sleep(0.2)
        workers = worker_ids(server, source=folded["out"])
        overlay = ready[0]["feedback"]["overlays"]["default"]
        assert (overlay["base_seq"], overlay["updates"]) == (12, 0)
        after = per_worker(server, workers, 3, lambda k: {"item_ids": items, "seed": 100 + k})
        answers = {sent["seed"]: answer for got in before.values() for sent, answer in got}
        compared = 0
        for got in after.values():
            for sent, answer in got:
                if sent["seed"] in answers:
                    assert answer["scores"] == answers[sent["seed"]]["scores"]
                    assert answer["item_ids"] == answers[sent["seed"]]["item_ids"]
                    compared += 1
        assert compared >= 3
        # New rewards reach the new overlay; the old keys are still duplicates.
        status, _, answer = post_json(server, "/feedback", {"events": events[:2] + [
            {"decision_id": "g", "item_id": "brand-new", "reward": 1}]})
        assert status == 200 and (answer["accepted"], answer["duplicates"]) == (1, [0, 1])
        ready = orjson.loads(server.request("GET", "/ready")[2])
        assert ready["feedback"]["overlays"]["default"]["updates"] == 1
    finally:
        server.stop()
