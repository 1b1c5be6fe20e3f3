"""Rollback and export of recorded edits, on both backends (tiny model): bit-exact weights, stock
loading, and random sequences of overlapping edits rolled back newest first to every earlier state."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from atlas.jobs.erase import erase_relation
from atlas.jobs.rollback import export, rollback
from atlas.jobs.specs import EraseSpec, UpdateSpec
from atlas.jobs.update import update_fact
from atlas.jobs.weights import current_weights
from atlas.model.loading import weights_sha256
from atlas.options import ModelChoice
from tests.support.kn_world import build_world

IDS = torch.tensor([[5, 17, 3, 44, 9, 12]])
QUICK = dict(eval_facts=2, other_facts=1, control=False)


def test_rollback_restores_weights_bit_exactly(store, tmp_path) -> None:
    w = build_world(store, tmp_path)
    base = weights_sha256(w.lm.model)
    e1 = update_fact(store, w.lm, w.run, "P36-0", "Berlin", UpdateSpec(other_facts=2))
    e2 = erase_relation(store, w.lm, w.run, "P37", EraseSpec(select="frequent", top=3, form="zero", **QUICK))
    assert len({base, e1.sha256_after, e2.sha256_after}) == 3
    assert e2.sha256_before == e1.sha256_after and e1.sha256_before == base
    assert weights_sha256(w.lm.model) == base  # the caller's model is left at the base weights
    with current_weights(store, w.lm, w.run) as sha:
        assert sha == weights_sha256(w.lm.model) == e2.sha256_after
    rollback(store, w.lm, e2.id)
    with current_weights(store, w.lm, w.run):
        assert weights_sha256(w.lm.model) == e1.sha256_after
    rollback(store, w.lm, e1.id)
    with current_weights(store, w.lm, w.run):
        assert weights_sha256(w.lm.model) == base


EDITS = [  # each shares slots with others: the hubs, the cross neuron (2, 7) of every relation, whole layers
    ("erase", "P37", EraseSpec(select="frequent", top=2, form="zero", **QUICK)),
    ("erase", "P36", EraseSpec(select="frequent", top=2, form="damp:0.5", **QUICK)),
    ("erase", "P30", EraseSpec(select="frequent", top=3, form="project", **QUICK)),
    ("erase", "P36", EraseSpec(form="project", **QUICK)),
    ("erase", "P37", EraseSpec(select="frequent", top=2, form="zero", preserve="nullspace", energy=0.5, **QUICK)),
    ("update", "P36-0", UpdateSpec(form="paper", other_facts=1)),
    ("update", "P30-1", UpdateSpec(other_facts=1)),
    ("update", "P30-1", UpdateSpec(form="paper", other_facts=1)),
]


@pytest.mark.parametrize("seed", [0, 1])
def test_any_sequence_of_overlapping_edits_rolls_back_to_every_earlier_state(store, tmp_path, seed: int) -> None:
    """Property-style: a random sequence of edits (erasures in several forms, one spread over whole
    layers, updates), most sharing value slots; each starts from the previous one's weights, and
    rolling back newest first returns exactly (sha256) to each state the sequence passed through."""
    w = build_world(store, tmp_path)
    rng = random.Random(seed)
    states, done = [weights_sha256(w.lm.model)], []
    for kind, target, spec in rng.sample(EDITS, 5):
        if kind == "erase":
            e = erase_relation(store, w.lm, w.run, target, spec)
        else:
            e = update_fact(store, w.lm, w.run, target, {"P36-0": "Berlin", "P30-1": "Europe"}[target], spec)
        assert e.sha256_before == states[-1] and e.metrics["applied_edits"] == [d.id for d in done]
        states.append(e.sha256_after)
        done.append(e)
    with current_weights(store, w.lm, w.run) as sha:
        assert sha == states[-1]
    for e in reversed(done):
        rollback(store, w.lm, e.id)
        states.pop()
        with current_weights(store, w.lm, w.run) as sha:
            assert sha == weights_sha256(w.lm.model) == states[-1]
    assert states == [weights_sha256(w.lm.model)]


def test_export_loads_with_from_pretrained_and_gives_identical_logits(store, tmp_path) -> None:
    w = build_world(store, tmp_path)
    e1 = update_fact(store, w.lm, w.run, "P30-1", "Europe", UpdateSpec(other_facts=2))
    out = export(store, w.lm, e1.id, tmp_path / "exported")
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert weights_sha256(loaded) == e1.sha256_after
    with current_weights(store, w.lm, w.run), torch.no_grad():
        want = w.lm.model(IDS).logits
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, want)


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"))],
)
def test_edits_of_a_bf16_weights_run_roll_back_bit_exactly(store, tmp_path, device: str) -> None:
    """A run of bf16 weights (a GPU run at bf16): the jobs load the run's model in bf16 themselves,
    on the device asked for, edit its bf16 slots and roll back to the exact bytes."""
    w = build_world(store, tmp_path, weights="bf16")
    assert {p.dtype for p in w.lm.model.parameters()} == {torch.bfloat16}
    base, on = weights_sha256(w.lm.model), ModelChoice(None, device)
    e1 = erase_relation(store, on, w.run, "P37", EraseSpec(select="frequent", top=2, form="project", **QUICK))
    e2 = update_fact(store, on, w.run, "P36-0", "Berlin", UpdateSpec(other_facts=1))
    assert e1.sha256_before == base and e2.sha256_before == e1.sha256_after != base
    rollback(store, on, e2.id)
    rollback(store, on, e1.id)
    with current_weights(store, w.lm, w.run) as sha:
        assert sha == weights_sha256(w.lm.model) == base
