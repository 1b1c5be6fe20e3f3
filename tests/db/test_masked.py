"""Probe, update, erase and audit on a masked LM (a tiny random BERT), each against a plain recompute:
the model run by hand, with a hand-written hook or hand-edited weights, at the [MASK] position."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
import torch

from atlas.db.schema import probe_results
from atlas.jobs.audit import audit_edit
from atlas.jobs.erase import erase_relation
from atlas.jobs.probe import probe
from atlas.jobs.specs import EraseSpec, UpdateSpec
from atlas.jobs.update import update_fact
from atlas.model.encode import encode_masked
from tests.support.kn_world import RELATIONS, build_world


@pytest.fixture
def bert(store, tmp_path):
    return build_world(store, tmp_path, family="bert")


def _prompts(relation: str) -> list[tuple[str, str]]:
    _, subjects, objects, templates = RELATIONS[relation]
    return [(t.replace("[X]", s), o) for s, o in zip(subjects, objects) for t in templates]


@torch.no_grad()
def _p_gold(lm, text: str, obj: str, zero: dict[int, list[int]] | None = None) -> float:
    """P(gold) of a one-token answer at the mask, the FFN activations in `zero` set to 0 there."""
    enc = encode_masked(lm.tokenizer, text, obj)
    ids = torch.tensor([enc.prompt_ids])
    pos = enc.prompt_ids.index(lm.tokenizer.mask_token_id)
    handles = []
    for layer, neurons in (zero or {}).items():

        def hook(_m, args, neurons=neurons):
            x = args[0].clone()
            x[0, pos, neurons] = 0.0
            return (x,)

        handles.append(lm.model.bert.encoder.layer[layer].output.dense.register_forward_pre_hook(hook))
    try:
        logits = lm.model(input_ids=ids, token_type_ids=torch.zeros_like(ids)).logits[0, pos]
    finally:
        for h in handles:
            h.remove()
    return float(torch.softmax(logits.double(), -1)[enc.answer_ids[0]])


def test_suppressing_at_the_mask_equals_a_hand_written_hook(store, bert) -> None:
    probe(store, bert.lm, bert.run, "suppress", relation="P30")
    with store.begin() as conn:
        rows = conn.execute(sa.select(probe_results).where(probe_results.c.neurons == "knowledge")).all()
        kn = conn.execute(sa.text("SELECT fact_id, layer, neuron FROM knowledge_neurons")).all()
    assert {r.fact_id for r in rows} == {f"P30-{i}" for i in range(5)}
    for r in rows:
        zero: dict[int, list[int]] = {}
        for fact, layer, neuron in kn:
            if fact == r.fact_id:
                zero.setdefault(layer, []).append(neuron)
        subject, obj = RELATIONS["P30"][1][int(r.fact_id[-1])], RELATIONS["P30"][2][int(r.fact_id[-1])]
        texts = [t.replace("[X]", subject) for t in RELATIONS["P30"][3]]
        assert r.p_before == pytest.approx(sum(_p_gold(bert.lm, t, obj) for t in texts) / 3, rel=1e-4)
        assert r.p_after == pytest.approx(sum(_p_gold(bert.lm, t, obj, zero) for t in texts) / 3, rel=1e-4)


def test_erase_metrics_equal_a_recompute_with_the_slots_zeroed(store, bert) -> None:
    spec = EraseSpec(select="frequent", top=2, form="zero", other_facts=1)
    e = erase_relation(store, bert.lm, bert.run, "P37", spec)
    assert {(n["layer"], n["neuron"]) for n in e.params["neurons"]} == {(0, 41), (2, 7)}
    assert e.metrics["fluency"] is None  # no general-text perplexity for a masked LM
    nll_before = [-torch.log(torch.tensor(_p_gold(bert.lm, t, o))).item() for t, o in _prompts("P37")]
    dense = {layer: bert.lm.model.bert.encoder.layer[layer].output.dense.weight for layer in (0, 2)}
    saved = {layer: w.detach().clone() for layer, w in dense.items()}
    with torch.no_grad():  # the hand-edited weights: the two value slots (columns) zeroed
        dense[0][:, 41] = 0.0
        dense[2][:, 7] = 0.0
    try:
        nll_after = [-torch.log(torch.tensor(_p_gold(bert.lm, t, o))).item() for t, o in _prompts("P37")]
    finally:
        with torch.no_grad():
            for layer, w in dense.items():
                w.copy_(saved[layer])
    edited = e.metrics["edited"]
    assert edited["n_prompts"] == 15
    assert edited["nll_before"] == pytest.approx(sum(nll_before) / 15, rel=1e-4)
    assert edited["nll_after"] == pytest.approx(sum(nll_after) / 15, rel=1e-4)
    audit = audit_edit(store, bert.lm, e.id, limit=5)
    assert audit.n_targets == 5 and audit.n_predicted == 4  # the cross neuron's facts of P30 and P36


def test_update_raises_the_new_object_at_the_mask(store, bert) -> None:
    e = update_fact(store, bert.lm, bert.run, "P36-2", "Berlin", UpdateSpec(other_facts=1))
    assert e.metrics["p_new_after"] > e.metrics["p_new_before"] and e.params["preserve"] == "covariance"
    assert e.n_slots == 2 * bert.lm.adapter.n_neurons  # the 2 layers of the fact's 2 neurons, as a whole
    paper = update_fact(store, bert.lm, bert.run, "P36-2", "Berlin", UpdateSpec(form="paper", other_facts=1))
    assert paper.n_slots == 2 and paper.metrics["applied_edits"] == [e.id]
