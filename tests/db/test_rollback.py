"""Rollback and export of recorded edits, on both backends (tiny model): bit-exact weights, stock loading."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from atlas.jobs.edits import erase_relation, update_fact
from atlas.jobs.rollback import export, rollback
from atlas.jobs.weights import current_weights
from atlas.model.loading import weights_sha256
from tests.support.kn_world import build_world

IDS = torch.tensor([[5, 17, 3, 44, 9, 12]])


def test_rollback_restores_weights_bit_exactly(store, tmp_path) -> None:
    w = build_world(store, tmp_path)
    base = weights_sha256(w.lm.model)
    e1 = update_fact(store, w.lm, w.run, "P36-0", "Berlin", eval_facts=3)
    e2 = erase_relation(store, w.lm, w.run, "P37", top=3, eval_facts=3)
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


def test_export_loads_with_from_pretrained_and_gives_identical_logits(store, tmp_path) -> None:
    w = build_world(store, tmp_path)
    e1 = update_fact(store, w.lm, w.run, "P30-1", "Europe", eval_facts=2)
    out = export(store, w.lm, e1.id, tmp_path / "exported")
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert weights_sha256(loaded) == e1.sha256_after
    with current_weights(store, w.lm, w.run), torch.no_grad():
        want = w.lm.model(IDS).logits
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, want)
