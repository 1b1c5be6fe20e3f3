"""Query test data: the named queries under test, statements `atlas sql` must refuse, and a
hand-checkable atlas (knowledge neurons of 6 facts in 2 runs) loaded straight into the tables."""

from __future__ import annotations

from atlas.db import schema
from atlas.db.store import Store

# run 1: relation R1 = f1, f2, f3; relation R2 = f4, f5.  run 2: f1 changes, f6 appears (no facts row)
TINY_KN = [
    (1, "f1", 11, 1, 0.9, 5),
    (1, "f1", 11, 2, 0.8, 5),
    (1, "f1", 10, 3, 0.5, 4),
    (1, "f1", 9, 7, 0.3, 3),
    (1, "f2", 11, 1, 0.7, 6),
    (1, "f2", 11, 2, 0.6, 6),
    (1, "f2", 10, 3, 0.4, 3),
    (1, "f3", 11, 1, 0.5, 3),
    (1, "f3", 8, 4, 0.2, 3),
    (1, "f4", 11, 1, 0.6, 4),
    (1, "f4", 11, 2, 0.5, 4),
    (1, "f4", 7, 5, 0.9, 5),
    (1, "f5", 7, 5, 0.8, 3),
    (1, "f5", 6, 6, 0.1, 3),
    (2, "f1", 11, 1, 0.8, 4),
    (2, "f1", 5, 5, 0.4, 3),
    (2, "f6", 4, 4, 0.3, 3),
]
TINY_FACTS = {"f1": "R1", "f2": "R1", "f3": "R1", "f4": "R2", "f5": "R2"}


def load_tiny(store: Store) -> None:
    with store.begin() as conn:
        store.bulk_insert(
            conn, schema.relations, {"id": ["R1", "R2"], "label": ["capital of", "born in"], "type": ["N-1", "N-1"]}
        )
        store.bulk_insert(
            conn,
            schema.facts,
            {
                "id": list(TINY_FACTS),
                "relation_id": list(TINY_FACTS.values()),
                "subject": [f"s-{f}" for f in TINY_FACTS],
                "object": [f"o-{f}" for f in TINY_FACTS],
                "dataset": ["tiny"] * 5,
            },
        )
        store.bulk_insert(
            conn,
            schema.knowledge_neurons,
            dict(zip(["run_id", "fact_id", "layer", "neuron", "score", "n_prompts"], map(list, zip(*TINY_KN)))),
        )
        store.bulk_insert(
            conn,
            schema.prompts,
            {
                "id": [101, 102, 103],
                "fact_id": ["f1"] * 3,
                "template": ["[X] is in [Y].", "[X], capital [Y].", "Where is [X]? [Y]."],
                "text": ["a", "b", "c"],
                "causal": [True] * 3,
                "masked": [True] * 3,
            },
        )
        scores = [
            (101, 11, 1, 0.9),
            (101, 11, 2, 0.7),
            (101, 3, 3, 0.2),
            (102, 11, 1, 0.8),
            (102, 10, 3, 0.6),
            (103, 11, 2, 0.5),
            (103, 3, 3, 0.3),
        ]
        store.bulk_insert(
            conn,
            schema.prompt_scores,
            {
                "run_id": [1] * len(scores),
                "prompt_id": [s[0] for s in scores],
                "layer": [s[1] for s in scores],
                "neuron": [s[2] for s in scores],
                "score": [s[3] for s in scores],
            },
        )


MINE = [
    "fact-neurons",
    "neuron-facts",
    "relation-neurons",
    "hub-neurons",
    "fact-interference",
    "interference-pairs",
    "relation-overlap",
    "layer-distribution",
    "run-diff",
    "fact-prompt-scores",
]

WRITES = [
    "INSERT INTO relations VALUES ('R9', 'x', 'N-1')",
    "UPDATE facts SET subject = 'x'",
    "DELETE FROM facts",
    "DROP TABLE facts",
    "CREATE TABLE t AS SELECT 1",
    "ALTER TABLE facts ADD COLUMN c INT",
    "COPY facts TO '/tmp/facts.csv'",
    "ATTACH 'x.duckdb' AS x",
    "SET threads = 1",
    "PRAGMA threads = 1",
    "SELECT 1; DELETE FROM facts",
    "-- looks harmless\nDELETE FROM facts",
    "VACUUM",
    "CHECKPOINT",
]
