"""Audit maths against brute-force references, the interference query against the planted atlas,
and audits of a small run made by the real indexer, on both backends."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import sqlalchemy as sa

from atlas.db.queries import run_query
from atlas.db.schema import audit_results, knowledge_neurons, prompt_outputs, prompts
from atlas.jobs import metrics as m
from atlas.jobs.audit import audit_edit, audit_sample, disturbed, stored_rows, summarise
from atlas.jobs.edits import erase_relation
from tests.support.kn_world import build_world, index_world


def brute_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(20))
def test_auc_equals_pairwise_reference_with_ties(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(2, 40)
    scores = [rng.choice([0.0, 0.1, 0.5, rng.random()]) for _ in range(n)]
    labels = [rng.random() < 0.4 for _ in range(n)]
    if all(labels) or not any(labels):
        labels[0] = not labels[0]
    assert m.roc_auc(scores, labels) == pytest.approx(brute_auc(scores, labels), abs=1e-12)


def test_auc_edges_precision_and_perplexity() -> None:
    assert m.roc_auc([0.3, 0.2], [True, True]) is None
    assert m.roc_auc([0.9, 0.1], [True, False]) == 1.0
    assert m.roc_auc([0.1, 0.9], [True, False]) == 0.0
    assert m.precision_at_k([0.9, 0.8, 0.1, 0.7], [True, False, True, True], 3) == pytest.approx(2 / 3)
    assert m.precision_at_k([0.5], [True], 0) is None
    assert m.perplexity([math.log(0.5), math.log(0.25)]) == pytest.approx(
        math.exp(-(math.log(0.5) + math.log(0.25)) / 2)
    )
    assert m.relative_change([0.2, 0.4], [0.1, 0.2]) == pytest.approx(-0.5)
    assert disturbed(0.5, 0.44, 0.1) and not disturbed(0.5, 0.46, 0.1)


def test_summary_from_rows() -> None:
    rows = [
        ("target", 0.0, 0.5, 0.1),
        ("predicted", 0.9, 0.4, 0.1),
        ("predicted", 0.5, 0.4, 0.39),
        ("random", 0.0, 0.3, 0.3),
        ("random", 0.0, 0.2, 0.1),
    ]
    s = summarise(7, rows, 0.1)
    assert (s.n_targets, s.n_predicted, s.n_random, s.n_disturbed, s.k) == (1, 2, 2, 2, 2)
    assert s.target_change == pytest.approx(-0.8)
    assert s.auc == pytest.approx(brute_auc([0.9, 0.5, 0.0, 0.0], [True, False, False, True]))
    assert s.precision_at_k == 0.5


def test_interference_query_matches_planted_neurons(store, tmp_path) -> None:
    w = build_world(store, tmp_path)
    e = erase_relation(store, w.lm, w.run, "P37", top=2, eval_facts=2)  # slots (0, 41) and (2, 7)
    res = run_query(store, "edit-interference", {"edit_id": e.id}, via="native")
    got = {r[0]: r[res.columns.index("predicted_score")] for r in res.rows}
    with store.begin() as conn:
        kn = conn.execute(sa.select(knowledge_neurons)).all()
    expected = {}
    for fact in {r.fact_id for r in kn if not r.fact_id.startswith("P37")}:
        mine = [r for r in kn if r.fact_id == fact]
        hit = sum(r.score for r in mine if (r.layer, r.neuron) in {(0, 41), (2, 7)})
        if hit:
            expected[fact] = hit / sum(r.score for r in mine)
    assert set(got) == set(expected) == {"P36-0", "P36-1", "P30-0", "P30-1"}
    for fact, value in expected.items():
        assert got[fact] == pytest.approx(value, rel=1e-5)
    summary = audit_edit(store, w.lm, e.id, limit=10)
    assert (summary.n_targets, summary.n_predicted) == (5, 4)
    assert summary.n_random == 5  # at least five random facts, even when few are predicted


def test_audit_on_a_small_indexed_run(store, tmp_path) -> None:
    w = index_world(store, tmp_path)
    res = audit_sample(store, w.lm, w.run, 3, limit=20, threshold=0.05)
    assert 1 <= len(res.edits) <= 3
    for s in res.edits:
        rows = stored_rows(store, s.edit_id)
        again = summarise(s.edit_id, rows, 0.05)  # REAL columns: equal to float32 precision
        assert again.__dict__ == pytest.approx(s.__dict__, rel=1e-6)
        ranked = [(sc, disturbed(b, a, 0.05)) for role, sc, b, a in rows if role != "target"]
        labels = [y for _, y in ranked]
        if any(labels) and not all(labels):
            assert s.auc == pytest.approx(brute_auc([x for x, _ in ranked], labels))
        target = [r for r in rows if r[0] == "target"]
        assert len(target) == 1 and target[0][3] != target[0][2]  # the edit moved its own fact
    # the audit's unedited P(gold) is the indexer's p_gold (an independent computation: the IG engine)
    with store.begin() as conn:
        edit_id = res.edits[0].edit_id
        fact = conn.execute(
            sa.select(audit_results.c.fact_id, audit_results.c.p_before).where(
                audit_results.c.edit_id == edit_id, audit_results.c.role == "target"
            )
        ).one()
        p = (
            conn.execute(
                sa.select(prompt_outputs.c.p_gold)
                .join(prompts, prompts.c.id == prompt_outputs.c.prompt_id)
                .where(prompts.c.fact_id == fact.fact_id, prompt_outputs.c.status == "ok")
            )
            .scalars()
            .all()
        )
    assert fact.p_before == pytest.approx(sum(p) / len(p), rel=1e-4)
    assert res.n_pairs == sum(s.n_predicted + s.n_random for s in res.edits)
