"""Audit maths against brute-force references, the interference query against the planted atlas,
and audits of a small run made by the real indexer, on both backends."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import replace

import numpy as np
import pytest
import sqlalchemy as sa
import torch

from atlas.db.audits import AuditRow, stored_rows
from atlas.db.datasets import causal_prefix
from atlas.db.edits import model_edits
from atlas.db.queries import run_query
from atlas.db.schema import (
    audit_results,
    facts,
    knowledge_neurons,
    prompt_outputs,
    prompt_scores,
    prompt_sketches,
    prompts,
    runs,
)
from atlas.jobs import metrics as m
from atlas.jobs.audit import audit_edit, audit_sample, disturbed, summarise
from atlas.jobs.erase import erase_relation
from atlas.jobs.predict import sketch_prediction
from atlas.jobs.specs import EraseSpec
from atlas.jobs.weights import slots_of
from atlas.model.encode import encode_causal
from indexer.attribution.sketch import sketch, unpack
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


def brute_spearman(x, y):
    """Pearson's correlation of average ranks, ranks counted pair by pair."""

    def ranks(v):
        return [sum(1.0 for w in v if w < a) + (sum(1.0 for w in v if w == a) + 1) / 2 for a in v]

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


@pytest.mark.parametrize("seed", range(20))
def test_spearman_equals_the_rank_reference_with_ties(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(3, 40)
    x = [rng.choice([0.0, 0.5, rng.random()]) for _ in range(n)]
    y = [a + rng.gauss(0, 0.3) if rng.random() < 0.7 else rng.choice([0.0, 1.0]) for a in x]
    if len(set(x)) > 1 and len(set(y)) > 1:
        assert m.spearman(x, y) == pytest.approx(brute_spearman(x, y), abs=1e-12)
    assert m.spearman([1, 2], [2, 1]) is None and m.spearman([1, 1, 1], [1, 2, 3]) is None


def test_summary_from_rows() -> None:
    rows = [  # role, interference score, p before, p after, predicted dP (edit-impact)
        AuditRow("a", "target", 0.0, 0.5, 0.1, -0.45),
        AuditRow("b", "predicted", 0.9, 0.4, 0.1, -0.2),
        AuditRow("c", "predicted", 0.5, 0.4, 0.39, -0.05),
        AuditRow("d", "random", 0.0, 0.3, 0.3, 0.0),
        AuditRow("e", "random", 0.0, 0.2, 0.1, 0.0),
    ]
    s = summarise(7, rows)
    assert s.predictor == "impact" and "sketch@0.1" not in s.auc
    assert (s.n_targets, s.n_predicted, s.n_random, s.n_disturbed) == (1, 2, 2, 2)
    assert s.target_change == pytest.approx(-0.8)
    assert s.spearman == pytest.approx(brute_spearman([-0.45, -0.2, -0.05, 0.0, 0.0], [-0.4, -0.3, -0.01, 0.0, -0.1]))
    labels10 = [True, False, False, True]
    assert s.auc["interference@0.1"] == pytest.approx(brute_auc([0.9, 0.5, 0.0, 0.0], labels10))
    assert s.auc["impact@0.1"] == pytest.approx(brute_auc([0.5, 0.125, 0.0, 0.0], labels10))
    assert s.auc["impact@0.5"] == pytest.approx(brute_auc([0.5, 0.125, 0.0, 0.0], labels10))  # 75 % and 50 % drops
    sketched = [replace(r, predicted_sketch_dp=dp) for r, dp in zip(rows, [-0.4, -0.1, 0.0, 0.01, -0.08])]
    s2 = summarise(7, sketched)  # with sketches they are the audit's predictor; edit-impact stays beside them
    assert s2.predictor == "sketch" and s2.spearman_by["impact"] == pytest.approx(s.spearman)
    assert s2.spearman == pytest.approx(brute_spearman([-0.4, -0.1, 0.0, 0.01, -0.08], [-0.4, -0.3, -0.01, 0.0, -0.1]))
    assert s2.auc["sketch@0.1"] == pytest.approx(brute_auc([0.25, 0.0, 0.01 / 0.3, 0.4], labels10))
    assert s2.auc["impact@0.1"] == s.auc["impact@0.1"]


def test_interference_query_matches_planted_neurons(store, tmp_path) -> None:
    w = build_world(store, tmp_path)
    spec = EraseSpec(select="frequent", top=2, form="zero", eval_facts=2, other_facts=2, control=False)
    e = erase_relation(store, w.lm, w.run, "P37", spec)  # zeroes slots (0, 41) and (2, 7)
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
    impact = run_query(store, "edit-impact", {"edit_id": e.id}, via="native")
    got_dp = {r[0]: r[impact.columns.index("predicted_dp")] for r in impact.rows}
    with store.begin() as conn:  # the reference: mean over a fact's prompts of -(its scores on the zeroed slots)
        scores = conn.execute(
            sa.select(
                prompts.c.fact_id,
                prompt_scores.c.prompt_id,
                prompt_scores.c.layer,
                prompt_scores.c.neuron,
                prompt_scores.c.score,
            ).join(prompts, prompts.c.id == prompt_scores.c.prompt_id)
        ).all()
        n_prompts = dict(conn.execute(sa.select(prompts.c.fact_id, sa.func.count()).group_by(prompts.c.fact_id)).all())
    want: dict[str, float] = {}
    for fact, _, layer, neuron, score in scores:
        if (layer, neuron) in {(0, 41), (2, 7)}:
            want[fact] = want.get(fact, 0.0) - score / n_prompts[fact]
    assert set(got_dp) == set(want) and all(got_dp[f] == pytest.approx(v, rel=1e-5) for f, v in want.items())
    summary = audit_edit(store, w.lm, e.id, limit=10)
    assert (summary.n_targets, summary.n_predicted) == (5, 4)  # P37's facts; the four others the cross neuron holds
    assert summary.n_random == 5  # at least five random facts, even when few are predicted
    assert set(summary.auc) == {"impact@0.1", "impact@0.5", "interference@0.1", "interference@0.5"}


def test_audit_on_a_small_indexed_run(store, tmp_path) -> None:
    w = index_world(store, tmp_path)
    res = audit_sample(store, w.lm, w.run, 3, limit=20)
    assert 1 <= len(res.edits) <= 3
    for s in res.edits:
        rows = stored_rows(store, s.edit_id)
        again = summarise(s.edit_id, rows)  # REAL columns: equal to float32 precision
        assert again.spearman == pytest.approx(s.spearman, rel=1e-6) and again.auc == pytest.approx(s.auc, rel=1e-6)
        ranked = [
            (abs(r.predicted_dp) / r.p_before, disturbed(r.p_before, r.p_after, 0.1))
            for r in rows
            if r.role != "target"
        ]
        labels = [y for _, y in ranked]
        if any(labels) and not all(labels):
            assert s.auc["impact@0.1"] == pytest.approx(brute_auc([x for x, _ in ranked], labels))
        target = [r for r in rows if r.role == "target"]
        assert len(target) == 1 and target[0].p_after != target[0].p_before  # the edit moved its own fact
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
    assert res.n_facts == sum(s.n_targets + s.n_predicted + s.n_random for s in res.edits)


def test_a_sketched_run_predicts_every_fact_from_its_sketches(store, tmp_path) -> None:
    """A run indexed with --sketch-rank keeps per prompt and layer the top triplets of its value-slot
    gradient (equal to a direct recompute), and the audit predicts from them: the prediction equals
    a plain recompute from the rebuilt matrices, and for a small edit it tracks the measurement."""
    w = index_world(store, tmp_path, sketch_rank=3)
    ad = w.lm.adapter
    with store.begin() as conn:
        run_id, model_id = conn.execute(sa.select(runs.c.id, runs.c.model_id).where(runs.c.name == w.run)).one()
        ok = conn.execute(
            sa.select(prompts.c.id, prompts.c.fact_id, prompts.c.text, facts.c.object, prompt_outputs.c.p_gold)
            .join(prompt_outputs, prompt_outputs.c.prompt_id == prompts.c.id)
            .join(facts, facts.c.id == prompts.c.fact_id)
            .where(prompt_outputs.c.status == "ok", prompt_outputs.c.run_id == run_id)
        ).all()
        blobs = {
            (r.prompt_id, r.layer): bytes(r.sketch)
            for r in conn.execute(sa.select(prompt_sketches).where(prompt_sketches.c.run_id == run_id))
        }
    assert len(blobs) == len(ok) * ad.n_layers
    first = ok[0]
    direct = sketch(w.lm.model, ad, [encode_causal(w.lm.tokenizer, causal_prefix(first.text), first.object)], [1], 3)
    s, u, v = unpack(blobs[(first.id, 1)])
    rebuilt = np.einsum("r,rh,rn->hn", s, u, v)
    expected = torch.einsum("r,rh,rn->hn", direct.s[0, 0], direct.u[0, 0], direct.w[0, 0]).numpy()
    assert np.allclose(rebuilt, expected, atol=2e-3 * np.abs(expected).max())

    spec = EraseSpec(select="frequent", top=4, form="damp:0.9", eval_facts=2, other_facts=2, control=False)
    with store.begin() as conn:  # a relation the tiny run found knowledge neurons for
        fact = conn.execute(sa.select(knowledge_neurons.c.fact_id).order_by(knowledge_neurons.c.fact_id)).first()[0]
    e = erase_relation(store, w.lm, w.run, fact.split("-")[0], spec)
    with store.begin() as conn:
        edit = next(x for x in model_edits(conn, store.backend, model_id) if x.id == e.id)
    predicted = sketch_prediction(store, run_id, edit)
    dense = {layer: np.zeros((ad.hidden_size, ad.n_neurons)) for layer in range(ad.n_layers)}
    for sl in slots_of([edit]):
        dense[sl.layer][:, sl.neuron] = (sl.edited.double() - sl.original.double()).numpy()
    by_fact: dict[str, list[float]] = {}
    for r in ok:  # the reference: <dV, s u w^T> summed over layers, in log space, mean over the fact's prompts
        dlogp = sum(
            float(np.sum(dense[layer] * np.einsum("r,rh,rn->hn", *unpack(blobs[(r.id, layer)]))))
            for layer in range(ad.n_layers)
        )
        by_fact.setdefault(r.fact_id, []).append(r.p_gold * math.expm1(dlogp))
    assert set(predicted) == set(by_fact)
    for fact, dps in by_fact.items():
        assert predicted[fact] == pytest.approx(sum(dps) / len(dps), rel=1e-3, abs=1e-9)

    summary = audit_edit(store, w.lm, e.id, limit=100)
    assert summary.predictor == "sketch" and {"sketch@0.1", "impact@0.1"} <= set(summary.auc)
    rows = stored_rows(store, e.id)
    assert all(r.predicted_sketch_dp == pytest.approx(predicted[r.fact_id], rel=1e-5, abs=1e-9) for r in rows)
    # a 10 % damping is a small change: the first-order prediction orders the measured changes
    assert summary.spearman > 0.8, summary
