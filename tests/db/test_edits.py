"""Updates, erasures, rollbacks and their refusals on both backends (planted atlas, tiny model)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
import torch

from atlas.db.edits import list_edits
from atlas.db.models import ModelInfo, register_model
from atlas.db.neurons import preserved_facts, read_workset
from atlas.db.queries import run_query
from atlas.db.schema import (
    edit_slots,
    facts,
    knowledge_neurons,
    prompt_outputs,
    prompt_scores,
    prompts,
    relations,
    runs,
)
from atlas.errors import EditError, InputError, NotFound, WeightsMismatch
from atlas.jobs.erase import erase_relation
from atlas.jobs.evaluate import EvalSet, object_candidates
from atlas.jobs.rollback import rollback
from atlas.jobs.specs import EraseSpec, UpdateSpec
from atlas.jobs.update import update_fact
from atlas.model import forms
from atlas.model.loading import load_model, weights_sha256
from atlas.model.slots import slots_from_bytes
from tests.support.db import snapshot
from tests.support.kn_world import build_world, save_model


@pytest.fixture
def world(store, tmp_path):
    return build_world(store, tmp_path)


def _slots(store, edit_id):
    with store.begin() as conn:
        return conn.execute(sa.select(edit_slots).where(edit_slots.c.edit_id == edit_id)).all()


@pytest.mark.parametrize(("form", "preserve"), [("paper", "auto"), ("ls", "none"), ("ls", "auto")])
def test_update_edits_fact_neurons_but_not_relation_hubs(store, world, form: str, preserve: str) -> None:
    spec = UpdateSpec(form=form, preserve=preserve, other_facts=4)
    e = update_fact(store, world.lm, world.run, "P36-2", "Berlin", spec)
    assert (e.kind, e.target, e.status, e.params["new_object"], e.params["form"], e.params["preserve"]) == (
        "update",
        "P36-2",
        "applied",
        "Berlin",
        form,
        spec.preservation,  # auto: covariance for ls, none for the paper's rule
    )
    rows = _slots(store, e.id)
    assert e.params["neurons"] == [[1, 12], [2, 32]]  # the fact's own neurons; the hub (0, 40) left
    assert e.params["dropped_hub_neurons"] == 1
    if spec.preservation == "covariance":  # the layers of those neurons change as a whole; layer 0 not at all
        assert {r.layer for r in rows} == {1, 2} and len(rows) == 2 * world.lm.adapter.n_neurons
    else:
        assert {(r.layer, r.neuron) for r in rows} == {(1, 12), (2, 32)}
        for r in rows:
            assert not torch.equal(slots_from_bytes(r.original, r.dtype), slots_from_bytes(r.edited, r.dtype))
    for key in ("change_rate", "success_rate", "edited", "others", "others_pooled", "fluency", "headline"):
        assert key in e.metrics
    assert 0 <= e.metrics["success_rate"] <= 1 and e.metrics["applied_edits"] == []
    assert e.metrics["edited"]["n_prompts"] == 12  # 4 other facts of P36 x 3 prompts (the fact itself excluded)
    assert set(e.metrics["others"]) == {"P30", "P37"} and e.metrics["others_pooled"]["n_prompts"] == 24
    if form == "ls":  # the least-squares step raises t' (the paper's rule need not, on a random model)
        assert e.metrics["p_new_after"] > e.metrics["p_new_before"] and e.params["step"] > 0


def test_erase_frequent_zeroes_the_most_frequent_neurons(store, world) -> None:
    e = erase_relation(
        store, world.lm, world.run, "P37", EraseSpec(select="frequent", top=2, form="zero", eval_facts=5)
    )
    rows = _slots(store, e.id)
    assert {(r.layer, r.neuron) for r in rows} == {(0, 41), (2, 7)}  # the hub (5 facts), then the cross neuron (2)
    assert all(not slots_from_bytes(r.edited, r.dtype).any() for r in rows)
    assert all(r.factor == pytest.approx(-1.0) for r in rows)  # a zeroed slot writes all of itself away
    assert e.metrics["edited"]["n_prompts"] == 15 and set(e.metrics["others"]) == {"P30", "P36"}
    assert e.metrics["applied_edits"] == [] and e.metrics["fluency"]["ppl_before"] > 1
    control = e.params["control_neurons"]
    assert sorted(layer for layer, _ in control) == [0, 2] and not {tuple(c) for c in control} & {(0, 41), (2, 7)}
    assert "headline" in e.metrics["control"] and "others" not in e.metrics["control"]
    e2 = erase_relation(
        store, world.lm, world.run, "P30", EraseSpec(select="frequent", min_facts=5, form="token:Europe")
    )
    assert e2.params["n_neurons"] == 1 and e2.metrics["applied_edits"] == [e.id]
    assert [x.id for x in list_edits(store)] == [e2.id, e.id]
    assert [x.id for x in list_edits(store, run="nope")] == []


def test_erase_specific_projects_the_answer_directions_out(store, world) -> None:
    e = erase_relation(store, world.lm, world.run, "P37", EraseSpec(form="project", eval_facts=3, other_facts=2))
    assert [(n["layer"], n["neuron"], n["share"], n["other_share"]) for n in e.params["neurons"]] == [(0, 41, 1.0, 0.0)]
    (row,) = _slots(store, e.id)
    new, old = slots_from_bytes(row.edited, row.dtype), slots_from_bytes(row.original, row.dtype)
    directions = world.lm.adapter.answer_directions(
        torch.tensor(
            sorted(
                {
                    world.lm.tokenizer(" " + o, add_special_tokens=False).input_ids[0]
                    for o in ("Portuguese", "Spanish", "Arabic")
                }
            )
        )
    )
    assert not torch.equal(new, old)
    # what is left of the slot is (ridge aside) orthogonal to every answer direction of P37
    assert (directions @ new.double().to(directions.dtype)).abs().max() < 1e-2 * (directions @ old).abs().max()
    assert -1.0 < row.factor < 0.0


def test_specific_selection_query_matches_the_planted_usage(store, world) -> None:
    """relation-specific-neurons against the planted prompt scores, by hand: in P36 the hub (0, 40)
    is used by all 5 facts and by no fact of another relation; the cross neuron (2, 7) by 2 facts
    of every relation (other share 0.4); own neurons by one fact each."""
    rows = run_query(
        store,
        "relation-specific-neurons",
        {"run_id": world.run_id, "relation_id": "P36", "max_other_share": 1.0, "min_facts": 1, "top_k": 100},
    ).rows
    got = {(r[0], r[1]): r[2:] for r in rows}
    assert got[(0, 40)] == (5, 1.0, 0.0, None, 1.0)
    assert got[(2, 7)][:4] == (2, 0.4, 0.4, "P30") and got[(2, 7)][4] == pytest.approx(0.0)
    assert got[(2, 30)][:2] == (1, 0.2)
    strict = run_query(store, "relation-specific-neurons", {"run_id": world.run_id, "relation_id": "P36"}).rows
    assert [(r[0], r[1]) for r in strict] == [(0, 40)]  # min 2 facts, other relations <= 5 %


def test_relation_layers_query_matches_the_planted_scores(store, world) -> None:
    """relation-layers against a by-hand sum of P36's stored scores per layer (every max_score is 1)."""
    with store.begin() as conn:
        rows = conn.execute(
            sa.select(prompt_scores.c.layer, prompt_scores.c.score, prompts.c.fact_id).join(
                prompts, prompts.c.id == prompt_scores.c.prompt_id
            )
        ).all()
    mass: dict[int, float] = {}
    for layer, score, fact_id in rows:
        if fact_id.startswith("P36-"):
            mass[layer] = mass.get(layer, 0.0) + score
    want = sorted(mass.items(), key=lambda kv: (-kv[1], kv[0]))
    got = run_query(store, "relation-layers", {"run_id": world.run_id, "relation_id": "P36"}).rows
    assert [r[0] for r in got] == [layer for layer, _ in want]
    assert [r[1] for r in got] == pytest.approx([m for _, m in want])
    assert sum(r[2] for r in got) == pytest.approx(1.0) and all(r[3] == 15 or r[0] != 0 for r in got)
    upper = run_query(store, "relation-layers", {"run_id": world.run_id, "relation_id": "P36", "min_layer": 1}).rows
    assert [r[0] for r in upper] == [layer for layer, _ in want if layer >= 1]


def _answer_part(store, world, layer: int, slots: torch.Tensor) -> float:
    """|Pi_U W K1|: what the layer writes along P36's answer directions on P36's prompts."""
    ws = read_workset(store, world.run, lambda run, facts, neurons: "P36")
    p36 = [f for f in ws.facts.values() if f.relation_id == "P36"]
    items = [it for f in p36 for it in EvalSet.of(f.id, world.lm, [f]).items]
    keys = forms.answer_keys(world.lm.adapter, items, [layer])[layer]  # [n, N]
    directions = world.lm.adapter.answer_directions(object_candidates(world.lm, p36)).double()
    out = keys @ slots.double()  # [n, hidden]
    return float((out - forms.project_out(out, directions, ridge=0.0)).norm())


def _moved(store, world, e, items) -> float:
    """|dW k| summed over the answer-position activations k of `items`, every layer the edit changed."""
    rows = _slots(store, e.id)
    total = 0.0
    for layer in {r.layer for r in rows}:
        keys = forms.answer_keys(world.lm.adapter, items, [layer])[layer]  # [n, N]
        dw = torch.zeros(keys.shape[1], world.lm.adapter.value_slots(layer).shape[1], dtype=torch.float64)
        for r in (r for r in rows if r.layer == layer):
            dw[r.neuron] = (slots_from_bytes(r.edited, r.dtype) - slots_from_bytes(r.original, r.dtype)).double()
        total += float((keys @ dw).norm())
    return total


def test_update_with_covariance_spares_other_facts_per_unit_of_change_and_rolls_back(store, world) -> None:
    """The whole-layer covariance form moves the other facts' outputs less, for as much move on the
    fact's own prompts, than the rank-one change of its slots."""
    before_sha = weights_sha256(world.lm.model)
    ws = read_workset(store, world.run, lambda run, facts, neurons: "P36")
    own = [it for it in EvalSet.of("P36-2", world.lm, [ws.facts["P36-2"]]).items]
    others = [it for f in ws.facts.values() if f.id != "P36-2" for it in EvalSet.of(f.id, world.lm, [f]).items]
    ratios = {}
    specs = {"none": UpdateSpec(preserve="none", other_facts=2), "covariance": UpdateSpec(other_facts=2)}
    for preserve, spec in specs.items():  # the default (auto) is covariance
        e = update_fact(store, world.lm, world.run, "P36-2", "Berlin", spec)
        assert e.params["preserve"] == preserve and e.n_slots >= 1
        ratios[preserve] = _moved(store, world, e, others) / _moved(store, world, e, own)
        rollback(store, world.lm, e.id)
        assert weights_sha256(world.lm.model) == before_sha
    assert ratios["covariance"] < 0.75 * ratios["none"]


def test_erase_lsq_removes_its_share_of_the_answer_directions_in_the_top_layer(store, world) -> None:
    spec = EraseSpec(form="lsq", layers=1, last_layer=False, preserve="none", eval_facts=3, other_facts=2)
    before_sha = weights_sha256(world.lm.model)
    top = run_query(store, "relation-layers", {"run_id": world.run_id, "relation_id": "P36", "min_layer": 1}).rows
    layer = top[0][0]  # 3 layers: the floor is layer 1
    old = world.lm.adapter.value_slots(layer).clone()
    e = erase_relation(store, world.lm, world.run, "P36", spec)
    assert [row["layer"] for row in e.params["edited_layers"]] == [layer] and e.params["n_layers"] == 1
    rows = _slots(store, e.id)
    assert {r.layer for r in rows} == {layer} and len(rows) > 1  # whole-layer: many slots of that layer
    control = e.params["control_layers"]
    assert len(control) == 1 and control != [layer]
    new = old.clone()  # the weights as the edit leaves them (jobs restore the loaded model afterwards)
    for r in rows:
        new[r.neuron] = slots_from_bytes(r.edited, r.dtype)
    ratio = _answer_part(store, world, layer, new) / _answer_part(store, world, layer, old)
    assert 0.45 < ratio < 0.6  # strength 0.5 (the ridge keeps a little)
    rollback(store, world.lm, e.id)
    assert weights_sha256(world.lm.model) == before_sha


def test_erase_lsq_edits_the_last_layer_first_by_default(store, world) -> None:
    spec = EraseSpec(form="lsq", layers=2, preserve="none", eval_facts=2, other_facts=2, control=False)
    top = run_query(store, "relation-layers", {"run_id": world.run_id, "relation_id": "P36", "min_layer": 1}).rows
    e = erase_relation(store, world.lm, world.run, "P36", spec)
    last = world.lm.adapter.n_layers - 1
    rest = [row[0] for row in top if row[0] != last][:1]
    assert [row["layer"] for row in e.params["edited_layers"]] == [last, *rest]
    assert {r.layer for r in _slots(store, e.id)} == {last, *rest}
    rollback(store, world.lm, e.id)


@pytest.mark.parametrize(
    "keep",
    [
        # the default (auto: covariance); the tiny model's other relations fill its 64 neurons at
        # 0.9999 of their energy, so the null space keeps 90 % of it out of the edit's way
        {},
        {"preserve": "nullspace", "energy": 0.9},
    ],
)
def test_erase_lsq_with_preservation_moves_other_relations_less_and_rolls_back(store, world, keep) -> None:
    before_sha = weights_sha256(world.lm.model)
    free = erase_relation(store, world.lm, world.run, "P30", EraseSpec(form="lsq", preserve="none", eval_facts=2))
    rollback(store, world.lm, free.id)
    kept = erase_relation(store, world.lm, world.run, "P30", EraseSpec(form="lsq", eval_facts=2, **keep))
    assert kept.params["preserve"] == keep.get("preserve", "covariance") and kept.n_slots >= 1
    assert kept.params["edited_layers"] == free.params["edited_layers"]
    ws = read_workset(store, world.run, lambda run, facts, neurons: "P30")
    others = [f for f in ws.facts.values() if f.relation_id != "P30"]
    items = [it for f in others for it in EvalSet.of(f.id, world.lm, [f]).items]

    assert _moved(store, world, kept, items) < 0.75 * _moved(store, world, free, items)  # (0.63x: null space)
    rollback(store, world.lm, kept.id)
    assert weights_sha256(world.lm.model) == before_sha


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
    zero = EraseSpec(select="frequent", form="token:Atlantis")
    _refused(store, world, lambda: erase_relation(store, lm, run, "P36", zero), EditError, "Atlantis")
    six = EraseSpec(select="frequent", form="zero", min_facts=6)
    _refused(store, world, lambda: erase_relation(store, lm, run, "P36", six), EditError, "shared by 6 or more")
    lonely = EraseSpec(form="project", min_facts=6)  # specific: no neuron of P36 is used by 6 facts
    _refused(
        store,
        world,
        lambda: erase_relation(store, lm, run, "P36", lonely),
        EditError,
        r"most specific candidate is L0\.40 \(100% of P36's facts\)",
    )
    _refused(store, world, lambda: erase_relation(store, lm, run, "P36", EraseSpec(form="blur")), InputError, "blur")
    lsq_top = EraseSpec(form="lsq", top=5)
    _refused(store, world, lambda: erase_relation(store, lm, run, "P36", lsq_top), InputError, "--top chooses neurons")
    for layers in (EraseSpec(form="project", layers=2), EraseSpec(form="zero", last_layer=False)):
        erase = lambda layers=layers: erase_relation(store, lm, run, "P36", layers)  # noqa: E731
        _refused(store, world, erase, InputError, "go with --form lsq")
    strong = EraseSpec(form="lsq", strength=2.0)
    _refused(store, world, lambda: erase_relation(store, lm, run, "P36", strong), InputError, "--strength 2.0")
    conflicting = EraseSpec(select="frequent", form="zero", max_other_share=0.2)
    _refused(store, world, lambda: erase_relation(store, lm, run, "P36", conflicting), InputError, "goes with")
    for spec, message in (
        (EraseSpec(form="project", preserve="covariance"), "--preserve covariance goes with --form lsq"),
        (EraseSpec(form="lsq", preserve="nullspace", preserve_weight=5.0), "--preserve-weight goes with"),
        (EraseSpec(form="lsq", energy=0.9), "--energy goes with --preserve nullspace"),  # auto: covariance
        (EraseSpec(form="lsq", preserve_weight=-1.0), "--preserve-weight -1.0"),
        (EraseSpec(form="lsq", preserve="memit"), "unknown preservation 'memit'"),
    ):
        _refused(store, world, lambda spec=spec: erase_relation(store, lm, run, "P36", spec), InputError, message)
    for spec, message in (
        (UpdateSpec(form="paper", preserve="nullspace"), "go with"),
        (UpdateSpec(preserve="memit"), "unknown preservation 'memit'"),
    ):
        update = lambda spec=spec: update_fact(store, lm, run, "P36-0", "Rome", spec)  # noqa: E731
        _refused(store, world, update, InputError, message)
    other = load_model(str(save_model(tmp_path / "other", seed=5)))
    _refused(
        store, world, lambda: update_fact(store, other, run, "P36-0", "Rome"), WeightsMismatch, "indexed with model"
    )
    _refused(store, world, lambda: erase_relation(store, other, run, "P36"), WeightsMismatch, "sha256")
    with store.begin() as conn:  # a relation none of whose neurons passed refinement
        of_p30 = sa.select(facts.c.id).where(facts.c.relation_id == "P30")
        conn.execute(knowledge_neurons.delete().where(knowledge_neurons.c.fact_id.in_(of_p30)))
    frequent = EraseSpec(select="frequent", form="zero")
    _refused(
        store,
        world,
        lambda: erase_relation(store, lm, run, "P30", frequent),
        EditError,
        "relation P30 has no knowledge neurons in run 'tiny-run': nothing to erase",
    )


def test_rollback_twice_or_out_of_order_is_refused(store, world, tmp_path) -> None:
    e1 = update_fact(store, world.lm, world.run, "P30-0", "Europe", UpdateSpec(other_facts=2))
    e2 = update_fact(store, world.lm, world.run, "P36-1", "Berlin", UpdateSpec(other_facts=2))
    _refused(store, world, lambda: rollback(store, world.lm, e1.id), EditError, f"before edit {e2.id}")
    other = load_model(str(save_model(tmp_path / "other", seed=5)))
    _refused(store, world, lambda: rollback(store, other, e2.id), WeightsMismatch, "indexed with model")
    assert rollback(store, world.lm, e2.id).status == "rolled_back"
    _refused(store, world, lambda: rollback(store, world.lm, e2.id), EditError, "already rolled back")
    _refused(store, world, lambda: rollback(store, world.lm, 999), NotFound, "unknown edit 999")
    assert rollback(store, world.lm, e1.id).rolled_back_at is not None


def _second_run(store, model_id: int, name: str, fact: tuple[str, str, str, str], statuses: list[str]) -> None:
    """A run of `model_id` scoring one new fact (relation, id, subject, object), one prompt per status."""
    rel, fid, subj, obj = fact
    with store.begin() as conn:
        conn.execute(relations.insert().values(id=rel, label=rel.lower(), type="N-1"))
        conn.execute(facts.insert().values(id=fid, relation_id=rel, subject=subj, object=obj, dataset="user"))
        run_id = conn.execute(
            runs.insert()
            .values(name=name, model_id=model_id, dataset="user", method="ig", params="{}", params_key=name)
            .values(code_version="test", status="done")
            .returning(runs.c.id)
        ).scalar_one()
        top = conn.execute(sa.select(sa.func.max(prompts.c.id))).scalar_one()
        for i, status in enumerate(statuses, start=1):
            text = f"{subj} is linked to {'.' * i}"
            conn.execute(
                prompts.insert().values(id=top + i, fact_id=fid, template=f"t{i}", text=text, causal=True, masked=False)
            )
            conn.execute(prompt_outputs.insert().values(run_id=run_id, prompt_id=top + i, status=status))


def test_preserved_facts_come_from_every_run_of_the_model_round_robin(store, world) -> None:
    """Against a by-hand reading: other relations' facts that any run of the same model scored (a
    user's run holding one relation still preserves the rest), only their ok prompts, round-robin over
    relations; another model's runs and the edited relation are left out."""
    with store.begin() as conn:
        model_id = conn.execute(sa.select(runs.c.model_id).where(runs.c.id == world.run_id)).scalar_one()
    other = register_model(store, ModelInfo("other", "x", "X", 3, 64, "f" * 64))[0].id
    _second_run(store, model_id, "user-run", ("U1", "U1-0", "Ohio", "Columbus"), ["ok", "skipped", "ok"])
    _second_run(store, other, "other-model", ("U2", "U2-0", "Peru", "Sol"), ["ok"])
    with store.begin() as conn:
        rows = conn.execute(
            sa.select(facts.c.id, facts.c.relation_id, prompts.c.text)
            .join(prompts, prompts.c.fact_id == facts.c.id)
            .join(prompt_outputs, prompt_outputs.c.prompt_id == prompts.c.id)
            .join(runs, runs.c.id == prompt_outputs.c.run_id)
            .where(runs.c.model_id == model_id, prompt_outputs.c.status == "ok", facts.c.relation_id != "P36")
        ).all()
        want: dict[str, set[str]] = {}
        for fid, _, text in rows:
            want.setdefault(fid, set()).add(text)
        everything = preserved_facts(conn, store.backend, model_id, "P36", 1000)
        three = preserved_facts(conn, store.backend, model_id, "P36", 3)
    assert {f.id: set(f.prompts) for f in everything} == want
    assert len(want["U1-0"]) == 2 and "U2-0" not in want  # the skipped prompt and the other model's run
    assert sorted(f.relation_id for f in three) == ["P30", "P37", "U1"]  # one of each relation first
