"""Updates, erasures, rollbacks and their refusals on both backends (planted atlas, tiny model)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
import torch

from atlas.db.edits import list_edits
from atlas.db.schema import edit_slots
from atlas.errors import EditError, NotFound, WeightsMismatch
from atlas.jobs.edits import erase_relation, update_fact
from atlas.jobs.rollback import rollback
from atlas.model.loading import load_model, weights_sha256
from atlas.model.slots import slots_from_bytes
from tests.support.db import snapshot
from tests.support.kn_world import build_world, save_model


@pytest.fixture
def world(store, tmp_path):
    return build_world(store, tmp_path)


def test_update_edits_fact_neurons_but_not_relation_hubs(store, world) -> None:
    e = update_fact(store, world.lm, world.run, "P36-2", "Berlin", eval_facts=4)
    assert (e.kind, e.target, e.status, e.params["new_object"]) == ("update", "P36-2", "applied", "Berlin")
    with store.begin() as conn:
        rows = conn.execute(sa.select(edit_slots).where(edit_slots.c.edit_id == e.id)).all()
    neurons = {(r.layer, r.neuron) for r in rows}
    assert (0, 40) not in neurons  # the relation's hub neuron is in every P36 fact: left alone
    assert neurons == {(1, 12), (2, 32)}  # the planted fact-specific neurons of P36-2
    assert e.params["dropped_hub_neurons"] == 1
    for r in rows:
        assert not torch.equal(slots_from_bytes(r.original, r.dtype), slots_from_bytes(r.edited, r.dtype))
    for key in (
        "change_rate",
        "success_rate",
        "intra_ppl_before",
        "intra_ppl_after",
        "inter_ppl_before",
        "inter_ppl_after",
    ):
        assert key in e.metrics
    assert 0 <= e.metrics["success_rate"] <= 1
    assert e.metrics["intra_ppl_before"] > 1 and e.metrics["inter_prompts"] == 12  # 4 facts x 3 prompts
    # a large update must raise the new object's probability on the target's prompts
    assert e.metrics["p_new_after"] > e.metrics["p_new_before"]


def test_erase_zeroes_the_most_frequent_neurons(store, world) -> None:
    e = erase_relation(store, world.lm, world.run, "P37", top=2, eval_facts=5)
    with store.begin() as conn:
        rows = conn.execute(sa.select(edit_slots).where(edit_slots.c.edit_id == e.id)).all()
    assert {(r.layer, r.neuron) for r in rows} == {(0, 41), (2, 7)}  # the hub (5 facts), then the cross neuron (2)
    assert all(not slots_from_bytes(r.edited, r.dtype).any() for r in rows)
    for key in (
        "erased_accuracy_before",
        "erased_accuracy_after",
        "erased_ppl_before",
        "erased_ppl_after",
        "other_ppl_before",
        "other_ppl_after",
    ):
        assert key in e.metrics
    assert e.metrics["erased_prompts"] == 15
    e2 = erase_relation(store, world.lm, world.run, "P30", min_facts=5, value="token:Europe")
    assert e2.params["n_neurons"] == 1
    assert [x.id for x in list_edits(store)] == [e2.id, e.id]
    assert [x.id for x in list_edits(store, run="nope")] == []


def _refused(store, world, call, error, match) -> None:
    before_db, before_w = snapshot(store), weights_sha256(world.lm.model)
    with pytest.raises(error, match=match):
        call()
    assert snapshot(store) == before_db
    assert weights_sha256(world.lm.model) == before_w


def test_bad_input_is_refused_with_database_and_weights_unchanged(store, world, tmp_path) -> None:
    lm, run = world.lm, world.run
    _refused(store, world, lambda: update_fact(store, lm, run, "P99-9", "Paris"), NotFound, "unknown fact 'P99-9'")
    _refused(
        store,
        world,
        lambda: update_fact(store, lm, run, "P36-0", "Atlantis"),
        EditError,
        "unknown object token 'Atlantis'",
    )
    _refused(store, world, lambda: update_fact(store, lm, run, "P36-0", "Paris Rome"), EditError, "2 tokens")
    _refused(store, world, lambda: update_fact(store, lm, "no-run", "P36-0", "Rome"), NotFound, "unknown run")
    _refused(store, world, lambda: erase_relation(store, lm, run, "P999"), NotFound, "unknown relation 'P999'")
    _refused(store, world, lambda: erase_relation(store, lm, run, "P36", value="token:Atlantis"), EditError, "Atlantis")
    _refused(store, world, lambda: erase_relation(store, lm, run, "P36", min_facts=6), EditError, "shared by 6 or more")
    other = load_model(str(save_model(tmp_path / "other", seed=5)))
    _refused(
        store, world, lambda: update_fact(store, other, run, "P36-0", "Rome"), WeightsMismatch, "indexed with model"
    )
    _refused(store, world, lambda: erase_relation(store, other, run, "P36"), WeightsMismatch, "sha256")


def test_rollback_twice_or_out_of_order_is_refused(store, world, tmp_path) -> None:
    e1 = update_fact(store, world.lm, world.run, "P30-0", "Europe", eval_facts=2)
    e2 = update_fact(store, world.lm, world.run, "P36-1", "Berlin", eval_facts=2)
    _refused(store, world, lambda: rollback(store, world.lm, e1.id), EditError, f"before edit {e2.id}")
    other = load_model(str(save_model(tmp_path / "other", seed=5)))
    _refused(store, world, lambda: rollback(store, other, e2.id), WeightsMismatch, "indexed with model")
    assert rollback(store, world.lm, e2.id).status == "rolled_back"
    _refused(store, world, lambda: rollback(store, world.lm, e2.id), EditError, "already rolled back")
    _refused(store, world, lambda: rollback(store, world.lm, 999), NotFound, "unknown edit 999")
    assert rollback(store, world.lm, e1.id).rolled_back_at is not None
