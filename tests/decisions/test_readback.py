"""Logged decisions replay exactly: through the app, to Parquet and to JSON
Lines, read back, sampled again from their parameters and seed."""

import os

import numpy as np
import orjson
from falcon import testing

from mab.decisions import read_json_lines, read_parquet, replay, selected
from mab.decisions.sinks import JsonLinesSink
from mab.web import create_app
from tests.conftest import ITEMS_CSV

JSON_HEADERS = {"Content-Type": "application/json"}

# Bodies of every shape: the compiled parser's (IdSpans) and the general
# one's (escapes, non-ASCII: lists of str), top_k cutting or not (ties
# included: item-3 has no counts, "new" is missing), duplicates, a model
# whose entity ids need the user, seeds given and not.
BODIES = [
    {"item_ids": ["item-1", "item-2", "item-3", "item-4", "item-5", "new"]},
    {"item_ids": ["item-1", "item-2", "item-3", "item-4", "item-5", "new"], "top_k": 2, "seed": 12345},
    {"item_ids": ["item-3"] * 30, "top_k": 7},
    {"item_ids": ["item-1"], "top_k": 5, "seed": 2**64 - 1},
    {"item_ids": ["item-2", "item-1"], "model": "optimistic", "user_id": "u-9"},
    {"item_ids": ["item-1", "item-2"], "model": "per_user", "user_id": "u-1", "seed": 0},
]
RAW_BODIES = [
    b'{"item_ids": ["item\\u002d1", "caf\\u00e9", "\\u65e5\\u672c", "item-4"], "top_k": 3}',
    b'{"item_ids": ["item-5", "item-5"], "user_id": "\\u00fc"}',
]


def logging_config(make_config, items_csv, user_items_csv, directory, fraction=1.0, sink="parquet"):
    models = {
        "default": {"log_fraction": fraction},
        "optimistic": {"prior_alpha": 50.0, "prior_beta": 1.0, "log_fraction": fraction},
        "per_user": {"store": "per_user", "successes": "clicks", "failures": "skips",
                     "entity_id": "{user_id}:{item_id}", "log_fraction": fraction},
    }
    return make_config({
        "stores": {"default": {"path": str(items_csv)}, "per_user": {"path": str(user_items_csv)}},
        "models": models,
        "decision_log": {"sink": sink, "directory": str(directory)},
    })


def answer_all(app, rounds=3):
    client = testing.TestClient(app)
    answers = {}
    bodies = [orjson.dumps(doc) for doc in BODIES] + RAW_BODIES
    for _ in range(rounds):
        for body in bodies:
            result = client.simulate_post("/predict", body=body, headers=JSON_HEADERS)
            assert result.status_code == 200, result.text
            answers[result.json["decision_id"]] = result.json
    return answers


def check_replays(rows, answers):
    assert len(rows) == len(answers)
    for row in rows:
        answer = answers[row["decision_id"]]
        again = replay(row)
        assert again.matches(row)
        # The record is the answer: its ranked ids and scores, seed, counts.
        assert [row["item_ids"][i] for i in row["ranked"]] == answer["item_ids"]
        assert list(row["scores"]) == answer["scores"]
        assert (row["seed"], row["model"], row["missing"], row["degraded"], row["degraded_items"]) == (
            answer["seed"], answer["model"], answer["missing"], answer["degraded"], answer["degraded_items"])
        assert np.array_equal(again.scores, answer["scores"])


def test_parquet_records_replay_exactly(make_config, items_csv, user_items_csv, tmp_path):
    directory = tmp_path / "decisions"
    app = create_app(logging_config(make_config, items_csv, user_items_csv, directory), load="now")
    answers = answer_all(app)
    app.service.close()                       # writes what is queued; the file goes into place
    assert not [n for n in os.listdir(directory) if n.startswith(".")]
    table = read_parquet(str(directory))
    rows = table.to_pylist()
    check_replays(rows, answers)
    by_id = {row["decision_id"]: row for row in rows}
    # What the record says about the request and the model.
    for row in rows:
        assert row["prior_alpha"] == (50.0 if row["model"] == "optimistic" else 1.0)
        assert row["log_fraction"] == 1.0 and row["half_life_seconds"] is None and row["age_seconds"] is None
        assert row["snapshot"].startswith("user_items.csv-" if row["model"] == "per_user" else "items.csv-")
    escaped = [row for row in rows if "caf\u00e9" in row["item_ids"]]
    assert escaped and escaped[0]["item_ids"] == ["item-1", "caf\u00e9", "\u65e5\u672c", "item-4"]
    counts = dict(ITEMS_CSV_COUNTS)
    assert escaped[0]["alpha"] == [1.0 + counts["item-1"][0], 1.0, 1.0, 1.0 + counts["item-4"][0]]
    assert escaped[0]["beta"] == [1.0 + counts["item-1"][1], 1.0, 1.0, 1.0 + counts["item-4"][1]]
    per_user = [row for row in rows if row["model"] == "per_user"]
    assert per_user[0]["user_id"] == "u-1" and per_user[0]["alpha"] == [1.0, 1001.0]
    assert len(by_id) == len(rows)


ITEMS_CSV_COUNTS = [
    (line.split(",")[0], (float(line.split(",")[1]), float(line.split(",")[2])))
    for line in ITEMS_CSV.splitlines()[1:]
]


def test_json_lines_records_replay_exactly(make_config, items_csv, user_items_csv, tmp_path):
    path = tmp_path / "decisions.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        config = logging_config(make_config, items_csv, user_items_csv, None, sink="jsonl")
        app = create_app(config, load="now", decision_sink=JsonLinesSink(fd))
        answers = answer_all(app)
        app.service.close()
    finally:
        os.close(fd)
    rows = read_json_lines(path)
    check_replays(rows, answers)
    assert {row["time"][-1] for row in rows} == {"Z"}


def test_only_the_selected_decisions_are_logged(make_config, items_csv, user_items_csv, tmp_path):
    directory = tmp_path / "decisions"
    fraction = 0.3
    app = create_app(logging_config(make_config, items_csv, user_items_csv, directory, fraction=fraction), load="now")
    answers = answer_all(app, rounds=50)
    app.service.close()
    logged = set(read_parquet(str(directory)).column("decision_id").to_pylist())
    # Exactly the ids the rule selects (the rule is deterministic) ...
    assert logged == {d for d in answers if selected(d, fraction)}
    # ... and about the fraction of them: a binomial count within 5
    # standard deviations (the ids are random: a false alarm about once in
    # 3.5 million runs).
    n = len(answers)
    assert abs(len(logged) - n * fraction) <= 5 * (n * fraction * (1 - fraction)) ** 0.5


def test_nothing_is_logged_by_default(app):
    assert app.service.decision_log is None
    result = testing.TestClient(app).simulate_post("/predict", json={"item_ids": ["item-1"]})
    assert result.status_code == 200 and len(result.json["decision_id"]) == 32
    assert "decision_log" not in testing.TestClient(app).simulate_get("/ready").json


def test_duckdb_reads_the_files_as_docs_decisions_md_says(make_config, items_csv, user_items_csv, tmp_path):
    import duckdb

    directory = tmp_path / "decisions"
    app = create_app(logging_config(make_config, items_csv, user_items_csv, directory), load="now")
    answers = answer_all(app)
    app.service.close()
    files = f"{directory}/*.parquet"
    # The queries of docs/decisions.md ("Reading the files").
    per_model = duckdb.sql(f"""
        SELECT model, count(*) AS decisions, sum(len(item_ids)) AS candidates
        FROM read_parquet('{files}') GROUP BY model ORDER BY model""").fetchall()
    expected = {}
    for answer in answers.values():
        expected.setdefault(answer["model"], []).append(answer)
    assert [(m, d) for m, d, _ in per_model] == sorted((m, len(a)) for m, a in expected.items())
    shown = duckdb.sql(f"""
        SELECT decision_id, position, item_ids[ranked[position] + 1] AS item_id, scores[position] AS score
        FROM (SELECT *, unnest(range(1, len(ranked) + 1)) AS position FROM read_parquet('{files}'))
        ORDER BY decision_id, position""").fetchall()
    got = {}
    for decision_id, position, item_id, score in shown:
        got.setdefault(decision_id, []).append((item_id, score))
    assert got == {d: list(zip(a["item_ids"], a["scores"])) for d, a in answers.items()}
    seeds = dict(duckdb.sql(f"SELECT decision_id, seed FROM read_parquet('{files}')").fetchall())
    assert seeds == {d: a["seed"] for d, a in answers.items()}     # UBIGINT: 2**64 - 1 exactly
