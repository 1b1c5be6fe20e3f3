"""Knowledge injection on both backends (tiny LLaMA and BERT worlds): recorded facts and slots,
stacked injections rolled back to every earlier sha256, out-of-order rollback refused, export
loaded by stock transformers with equal logits, the default layer from the atlas, and bad input
refused with the database and the model left as they were."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM

from atlas.db import schema
from atlas.db.datasets import Dataset, Relation, make_prompt, read_kn_paper
from atlas.db.datasets import Fact as DFact
from atlas.db.edits import applied_stack
from atlas.db.facts import load_dataset
from atlas.db.injections import applied_injections, default_layer, list_injections, model_injections
from atlas.db.neurons import Fact, read_run_atlas
from atlas.db.queries import load_query
from atlas.db.runs import resolve_run
from atlas.db.sqlfile import sql_text
from atlas.errors import ConflictError, EditError, InputError, WeightsMismatch
from atlas.jobs import inject_audit
from atlas.jobs.evaluate import EvalSet
from atlas.jobs.inject import NewFact, fact_from_option, inject_facts, injected_golds
from atlas.jobs.inject_pools import bundled_negatives, read_pools
from atlas.jobs.inject_weights import export_injection, injected_copy, rollback_injection
from atlas.jobs.specs import InjectSpec
from atlas.model.loading import load_model, weights_sha256
from atlas.model.scoring import Scored
from atlas.model.slots import slots_from_bytes
from indexer.job.run import IndexOptions, index
from tests.support.db import snapshot
from tests.support.kn_world import RELATIONS, build_world, index_world, save_model

IDS = torch.tensor([[5, 17, 3, 44, 9, 12]])
# a tiny atlas (every other fact is audited: kept as negatives) of tiny random models, which
# separate subjects poorly: a gate that overlaps opens on every training prompt (efficacy is tested);
# keys at the answer position (the subject-keyed default has its own test); their word-level
# tokenizer reads no bundled prompt, so the pools are not filled from kn-paper (its own test)
QUICK = InjectSpec(
    heldout=1,
    audit_facts=20,
    negatives=60,
    audit_unseen=False,
    gate_overlap="open",
    key_position="answer",
    fill_negatives=False,
)


def _fact(subject: str, relation: str, obj: str) -> NewFact:
    templates = RELATIONS[relation][3]
    return NewFact(f"{relation}:{subject}", relation, subject, obj, tuple(t.replace("[X]", subject) for t in templates))


def _add_atlas_fact(conn, fid: str, relation: str, subject: str, obj: str, first_prompt_id: int) -> None:
    """A fact in the atlas but not in the run, with its relation's templates as causal prompts."""
    conn.execute(schema.facts.insert().values(id=fid, relation_id=relation, subject=subject, object=obj, dataset="x"))
    for k, t in enumerate(RELATIONS[relation][3]):
        row = dict(fact_id=fid, template=t, text=t.replace("[X]", subject), causal=True, masked=True)
        conn.execute(schema.prompts.insert().values(id=first_prompt_id + k, **row))


def _stack_of(store, w) -> tuple:
    """The run, its applied edits and its applied injections."""
    with store.begin() as conn:
        run = resolve_run(conn, w.run)
        edits = applied_stack(conn, store.backend, run.model_id)
        return run, edits, applied_injections(conn, store.backend, run.model_id)


def _state(store, w) -> str:
    """The sha256 of the model as its applied injections leave it (what every rollback must restore)."""
    with injected_copy(w.lm, *_stack_of(store, w)) as sha:
        return sha


def test_injection_is_recorded_with_its_slots_and_audit(store, tmp_path) -> None:
    w = build_world(store, tmp_path)
    base = weights_sha256(w.lm.model)
    rec = inject_facts(store, w.lm, w.run, [_fact("France", "P36", "Berlin"), _fact("Japan", "P36", "Lima")], QUICK)
    assert rec.status == "applied" and rec.n_facts == 2 and rec.sha256_before == base != rec.sha256_after
    assert (rec.width_before, rec.width_after) == (48, 52)  # one pair per fact, in the default layer
    assert weights_sha256(w.lm.model) == base  # the caller's model is left as it came
    a = rec.audit
    assert a["efficacy"] == 1.0 and a["n_train_prompts"] == 4 and a["n_heldout_prompts"] == 2
    assert a["others_prompts"] == 13 * 3  # the facts' own subjects left out
    # a tiny random model separates subjects poorly: where a gate could not separate, a few fire
    separable = [g["separable"] for f in rec.facts for g in f.info["gates"]]
    assert a["others_firing_rate"] == 0.0 if all(separable) else a["others_firing_rate"] < 0.1
    assert 0 <= a["others_mean_abs_rel_dp"] < (0.01 if all(separable) else 0.2)
    assert abs(a["fluency_ppl_change"]) < 0.01
    first = rec.facts[0]
    assert first.prompts == ["The capital of France is [Y]", "France has its capital in [Y]"]
    assert first.heldout == ["The capital city of France is [Y]"] and first.info["old_token"] != "Berlin"
    assert first.info["slots"] == [[rec.layers[0], 48]] and rec.facts[1].info["slots"] == [[rec.layers[0], 50]]
    for gate in (g for f in rec.facts for g in f.info["gates"]):  # the training prompts are all saturated
        assert gate["threshold"] < gate["saturation"] <= gate["pos_min"]
        assert gate["neg_max"] < gate["threshold"] if gate["separable"] else gate["pos_min"] <= gate["neg_max"]
    with store.begin() as conn:
        (rows,) = model_injections(conn, store.backend, rec.model_id)
    key = slots_from_bytes(rows.pairs[0].key, rows.pairs[0].dtype)
    assert key.shape == (32,) and abs(float(key.norm()) - 1) < 1e-9
    assert [(p.layer, p.neuron, p.position) for p in rows.pairs] == [(rec.layers[0], 48, 0), (rec.layers[0], 50, 1)]


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_a_subject_keyed_slot_reads_the_subject_and_is_audited_on_its_other_facts(store, tmp_path, family) -> None:
    """The default keys read the subject's last token at a third of the depth (a decoder and a
    masked LM); the audit measures the atlas's other facts about the injected subject, on which
    such a slot fires (without --keep-gold, which reads those outside the run into the values
    instead: test_keep_golds_are_facts_outside_the_run_and_leave_the_audit_unseen)."""
    w = build_world(store, tmp_path, family=family)
    with store.begin() as conn:  # another fact about France, in the atlas but not in the run
        _add_atlas_fact(conn, "fr", "P30", "France", "Europe", 9000)
    spec = replace(QUICK, key_position="subject", keep_gold=0.0)
    rec = inject_facts(store, w.lm, w.run, [_fact("France", "P36", "Berlin")], spec)
    info, a = rec.facts[0].info, rec.audit
    assert info["layer_source"] == "subject" and info["slots"] == [[1, 48]] and rec.layers == [1]
    assert a["n_train_prompts"] == 2
    # it reads France there too; P30's first template is a keep prompt, left out of the audit
    assert a["same_subject_prompts"] == 2 and a["same_subject_firing_rate"] == 1.0
    assert a["others_prompts"] == 14 * 3 and a["others_firing_rate"] < 0.1


def test_the_audit_says_where_a_slot_opens_on_held_out_prompts(store, tmp_path) -> None:
    """A causal model's input at the subject's last token depends only on the words up to it: a
    held-out prompt that starts like a training prompt ("France ...") reads exactly that training
    input there, so the subject-keyed slot (its gate opening on every training prompt) opens on it."""
    w = build_world(store, tmp_path)
    prompts = ("The capital of France is [Y]", "France has its capital in [Y]", "France is located in [Y]")
    fact = NewFact("P36:France", "P36", "France", "Berlin", prompts)
    rec = inject_facts(store, w.lm, w.run, [fact], replace(QUICK, key_position="subject"))
    a = rec.audit
    assert a["n_heldout_prompts"] == 1 and a["heldout_firing_rate"] == 1.0 == a["facts"][0]["heldout_firing"]


def test_a_fact_pushes_down_the_object_it_replaces_and_its_restatements_leave_the_audit(store, tmp_path) -> None:
    """The atlas's fact of the injected subject and relation (P36 France -> Paris) is the one the
    injection replaces (`injection_replaced`, both backends): its object is recorded and its token
    is the one the value pushes down; a fact restating it in another relation (the same subject
    and object) is left out of the audit, which still measures the subject's other facts (these
    are outside the run: without --keep-gold, which would read them into the values instead)."""
    w = build_world(store, tmp_path)
    with store.begin() as conn:
        for k, (rel, obj) in enumerate((("P30", "Europe"), ("P37", "Paris"))):
            _add_atlas_fact(conn, f"fr{k}", rel, "France", obj, 9200 + 10 * k)
    spec = replace(QUICK, key_position="subject", keep_gold=0.0)
    rec = inject_facts(store, w.lm, w.run, [_fact("France", "P36", "Berlin")], spec)
    info, a = rec.facts[0].info, rec.audit
    assert info["replaces"] == ["Paris"] and info["old_token"] == "Paris"
    # P30's first template is a keep prompt (left out); P37's restatement is not measured at all
    assert a["same_subject_prompts"] == 2
    rollback_injection(store, w.lm, rec.id)
    new = inject_facts(store, w.lm, w.run, [_fact("Kenya", "P36", "Berlin")], spec)  # no Kenya capital in the atlas
    assert new.facts[0].info["replaces"] == [] and new.facts[0].info["old_token"] != "Berlin"
    # held-out prompts answered with the replaced object before: counted where there is one
    assert 0 <= a["heldout_known"] <= a["n_heldout_prompts"] and new.audit["heldout_known"] is None


def test_a_subjects_namesakes_are_its_negatives(store, tmp_path) -> None:
    """Facts whose subject contains the injected one ("Bank of France" for "France") are read as a
    pool of hard negatives for that fact (`injection_namesakes`, on both backends); the subject's
    own facts are not its namesakes, and --namesake-negatives 0 reads none; with --namesake-guards 0
    the pool serves the key alone (no guard is tried, and no room for one is taken)."""
    w = build_world(store, tmp_path)
    with store.begin() as conn:
        for k, subject in enumerate(("Bank of France", "France")):
            _add_atlas_fact(conn, f"ns{k}", "P30", subject, "Europe", 9100 + 10 * k)
    n_tokens = sum(
        len(w.lm.tokenizer(t.replace("[X]", "Bank of France").split("[Y]")[0].rstrip()).input_ids)
        for t in RELATIONS["P30"][3]
    )
    pools = []
    for n in (100, 0):
        spec = replace(QUICK, key_position="subject", namesake_negatives=n, namesake_guards=0)
        rec = inject_facts(store, w.lm, w.run, [_fact("France", "P36", "Berlin")], spec)
        pools.append(rec.audit["n_relation_negatives"])
        assert rec.facts[0].info["guards"] == [] and rec.width_after - rec.width_before == 2
        rollback_injection(store, w.lm, rec.id)
    assert pools[0]["namesakes:France@1"] == n_tokens
    assert "namesakes:France@1" not in pools[1] and pools[0]["P36@1"] == pools[1]["P36@1"]


def test_namesakes_holding_the_subject_are_read_into_their_own_pool_only(store, tmp_path) -> None:
    """A namesake holding the injected subject whole ("Suvorov Glacier Tongue" for "Suvorov
    Glacier") drawn into the shared pool shut a fact's gate on its own training prompts (SmolLM2:
    "The capital of Empire of Japan is" above "In Japan, people pay with the"): when namesakes are
    read for guards or as negatives, those are in no other pool. One sharing only the last word
    ("Jorum Glacier") stays a negative too, which keeps the slot shut on it; so does one holding the
    word in another case ("Icyglacier Falls": SmolLM2 opened "patent troll"'s slot on "Trollhunter");
    with neither option all are ordinary negatives (both backends)."""
    build_world(store, tmp_path)
    with store.begin() as conn:
        for k, subject in enumerate(("Suvorov Glacier Tongue", "Jorum Glacier", "Kenya", "Icyglacier Falls")):
            _add_atlas_fact(conn, f"ns{k}", "P30", subject, "Africa", 9100 + 10 * k)
    fact = _fact("Suvorov Glacier", "P36", "Berlin")

    def pools_of(spec: InjectSpec) -> dict[str, set[str]]:
        with store.begin() as conn:
            pooled = read_pools(conn, store.backend, [fact], spec, causal=True)
        out: dict[str, set[str]] = {}
        for pool, fid, *_ in pooled:
            out.setdefault(pool, set()).add(fid)
        return out

    every = replace(QUICK, key_position="subject", negatives=100_000, relation_negatives=100_000)  # the whole atlas
    guarded = pools_of(every)
    assert guarded["namesakes:Suvorov Glacier"] == {"ns0", "ns1", "ns3"}
    assert "ns0" not in guarded[""] | guarded.get("P36", set())
    assert {"ns1", "ns2", "ns3"} <= guarded[""]  # other facts stay, and namesakes by the last word only
    plain = pools_of(replace(every, namesake_guards=0, namesake_negatives=0))
    assert "namesakes:Suvorov Glacier" not in plain and {"ns0", "ns1", "ns2", "ns3"} <= plain[""]
    # where the limit binds, the namesakes holding the word in its own case come first
    room = pools_of(replace(every, namesake_guards=2 * len(RELATIONS["P30"][3])))
    assert room["namesakes:Suvorov Glacier"] == {"ns0", "ns1"}


def test_pools_the_atlas_cannot_fill_take_the_bundled_kn_paper_prompts(store) -> None:
    """An atlas short of prompts for a pool of negatives fills it from the bundled kn-paper facts,
    with the rows an atlas holding them returns, in its order (both backends: md5 in SQL and in
    Python), never twice and never of the injected subjects; --no-fill-negatives reads the atlas alone."""
    fact = _fact("Azerbaijan", "P36", "Ankara")
    spec = replace(QUICK, negatives=40, relation_negatives=30, namesake_guards=0, fill_negatives=True)
    load_dataset(store, read_kn_paper(["P36"]))  # P36 whole, no other relation

    def pooled(s: InjectSpec, pool: str) -> list[tuple[str, str]]:
        with store.begin() as conn:
            rows = read_pools(conn, store.backend, [fact], s, causal=True)
        return [(fid, text) for name, fid, text, _ in rows if name == pool]

    no_fill = replace(spec, fill_negatives=False)
    assert pooled(spec, "P36") == pooled(no_fill, "P36")  # the atlas holds P36 prompts enough
    with store.begin() as conn:
        params = {"relation_ids": ["P36"], "subjects": ["Azerbaijan"], "same": True, "causal": True, "limit": 30}
        atlas = [(r.fact_id, r.text) for r in conn.execute(sql_text("injection_negatives", store.backend), params)]
    assert atlas == [(r[0], r[4]) for r in bundled_negatives({"P36"}, True, {"Azerbaijan"}, True, set(), 30)]
    other = pooled(spec, "")[20:]  # the shared pool's other-relations half: none in this atlas
    assert pooled(no_fill, "") == pooled(spec, "")[:20] and len(other) == 20
    kn = {f.id: f for f in read_kn_paper().facts}
    assert all(kn[fid].relation_id != "P36" for fid, _ in other)
    every = pooled(replace(spec, relation_negatives=100_000), "P36")  # all the atlas holds, and no more
    assert len(every) == len(set(every)) == len(pooled(replace(no_fill, relation_negatives=100_000), "P36"))
    assert "Azerbaijan" not in {kn[fid].subject for fid, _ in every} and len(every) > 5000


def test_two_facts_of_one_subject_both_open(store, tmp_path) -> None:
    """Two facts of one subject whose keys read its name: the other's training prompts are not a
    fact's negatives, which no gate parts from its own ("Kenya" opens both prompts; SmolLM2 shut
    both gates of "Paulus Manutius" and injected neither), and each one's values hold the other's
    new object instead of the atlas's (both backends)."""
    w = build_world(store, tmp_path)
    two = [_fact("Kenya", "P36", "Rome"), _fact("Kenya", "P30", "Asia")]
    rec = inject_facts(store, w.lm, w.run, two, replace(QUICK, key_position="subject"))
    assert [g["separable"] for f in rec.facts for g in f.info["gates"]] == [True, True]
    held = injected_golds({"Kenya": {"P30": ["Africa"], "P37": ["Swahili"]}, "Peru": {"P36": ["Lima"]}}, two)
    assert held == {"Kenya": {"P30": ["Asia"], "P37": ["Swahili"], "P36": ["Rome"]}, "Peru": {"P36": ["Lima"]}}


def test_guards_are_recorded_and_take_no_room_where_none_is_built(store, tmp_path) -> None:
    """With --namesake-guards a fact records, per pair, how many positions of its namesakes'
    prompts ("France Telecom" for "France") its slot opens on and how many a guard could shut;
    a guard is built only where it shuts some, and the model is widened by exactly the pairs
    built, not by the room reserved for guards; the rollback restores the sha256 (both backends;
    the guard itself: tests/unit/test_inject.py)."""
    w = build_world(store, tmp_path)
    base = weights_sha256(w.lm.model)
    with store.begin() as conn:
        _add_atlas_fact(conn, "ns0", "P36", "France Telecom", "Paris", 9100)
    spec = replace(QUICK, key_position="subject", namesake_guards=100)
    asked = ("The capital city of France is [Y]", "France has its capital in [Y]")
    france = NewFact("P36:France", "P36", "France", "Berlin", asked)
    rec = inject_facts(store, w.lm, w.run, [france, _fact("Kenya", "P36", "Rome")], spec)
    france, kenya = (f.info for f in rec.facts)
    assert kenya["guards"] == []  # no namesake of Kenya in the atlas
    # France Telecom holds "France" whole: in no pool but the guard's, which shuts one of its positions
    (guard,) = france["guards"]
    assert 0.0 < guard.pop("share") <= 1.0  # minus that share of the slot's value (tests/unit/test_inject.py)
    assert guard == {"layer": 1, "opened": 3, "cancelled": 1, "separable": False, "index": 50}
    assert rec.width_after - rec.width_before == 6 and len(france["slots"]) == 2 and len(kenya["slots"]) == 1
    assert rec.audit["n_guard_namesakes"] == {"namesakes:France@1": 19}  # France Telecom's 3 prompts' tokens
    assert "namesakes:France@1" not in rec.audit["n_relation_negatives"]  # guards only: not negatives
    rollback_injection(store, w.lm, rec.id)
    with injected_copy(w.lm, *_stack_of(store, w)) as sha:
        assert sha == base


def test_the_injection_page_marks_the_guard_pairs_a_fact_recorded(store, tmp_path) -> None:
    """The web atlas's injection page gives each slot pair a role: 'guard' where the fact's info
    records a guard at that neuron (written here into a real injection's info), else 'slot'."""
    from atlas.db.browse import injection_page

    w = build_world(store, tmp_path)
    rec = inject_facts(store, w.lm, w.run, [_fact("France", "P36", "Berlin")], QUICK)
    with store.begin() as conn:
        assert injection_page(conn, rec.id).tables["slots"].column("role").to_pylist() == ["slot"]
        info = rec.facts[0].info
        (layer, neuron), *_ = info["slots"]
        info = info | {"guards": [{"layer": layer, "opened": 3, "cancelled": 2, "separable": True, "index": neuron}]}
        conn.execute(
            schema.injection_facts.update()
            .where(schema.injection_facts.c.injection_id == rec.id)
            .values(info=json.dumps(info))
        )
        assert injection_page(conn, rec.id).tables["slots"].column("role").to_pylist() == ["guard"]


def test_keep_prompts_reach_the_values_and_leave_the_rollback_exact(store, tmp_path) -> None:
    """With --keep-weight above 0 the job hands each subject-keyed fact its keep prompts: the same
    fact gets other values than without them, and each rollback restores the weights' hash."""
    (off, _), (on, _) = _with_and_without(store, build_world(store, tmp_path), "keep_weight")
    assert off != on


def _with_and_without(store, w, weight: str) -> list[tuple[bytes, dict]]:
    """France -> Berlin keyed at the subject with the InjectSpec field `weight` at 0, then at 1: each
    injection's first pair's value and its audit; each rollback must restore the weights' hash."""
    base, out = weights_sha256(w.lm.model), []
    for value in (0.0, 1.0):
        spec = replace(QUICK, key_position="subject", value_steps=3, **{weight: value})
        rec = inject_facts(store, w.lm, w.run, [_fact("France", "P36", "Berlin")], spec)
        with store.begin() as conn:
            (row,) = [i for i in model_injections(conn, store.backend, rec.model_id) if i.id == rec.id]
        out.append((row.pairs[0].value, rec.audit))
        rollback_injection(store, w.lm, rec.id)
        assert weights_sha256(w.lm.model) == base
    return out


def test_keep_golds_are_facts_outside_the_run_and_leave_the_audit_unseen(store, tmp_path) -> None:
    """--keep-gold reads the objects of the subject's facts outside the run ("France is located in
    Europe", loaded after the run) into the values: the same fact gets other values than without it,
    the audit's same-subject group (the run's facts only, then) never measures that fact, and each
    rollback restores the weights' hash."""
    w = build_world(store, tmp_path)
    with store.begin() as conn:
        _add_atlas_fact(conn, "fr", "P30", "France", "Europe", 9000)
    (off, audit_off), (on, audit_on) = _with_and_without(store, w, "keep_gold")
    assert off != on
    # P30's three templates but the keep prompt's, then none
    assert [a.get("same_subject_prompts", 0) for a in (audit_off, audit_on)] == [2, 0]


def test_stacked_injections_roll_back_newest_first_to_each_sha(store, tmp_path) -> None:
    w = build_world(store, tmp_path)
    states = [weights_sha256(w.lm.model)]
    done = []
    for fact, layers in [(_fact("France", "P36", "Berlin"), (2,)), (_fact("Kenya", "P30", "Europe"), (1, 2))]:
        rec = inject_facts(
            store, w.lm, w.run, [fact], InjectSpec(layers=layers, heldout=1, audit_facts=5, fill_negatives=False)
        )
        assert rec.sha256_before == states[-1] and rec.params["applied_injections"] == [d.id for d in done]
        states.append(rec.sha256_after)
        done.append(rec)
    assert done[1].width_before == 50 and done[1].width_after == 54 and done[1].layers == [1, 2]
    assert _state(store, w) == states[-1]
    before = snapshot(store)
    with pytest.raises(EditError, match=f"cannot be rolled back before injection {done[1].id}"):
        rollback_injection(store, w.lm, done[0].id)
    assert snapshot(store) == before
    for rec in reversed(done):
        assert rollback_injection(store, w.lm, rec.id).status == "rolled_back"
        states.pop()
        assert _state(store, w) == states[-1]
    assert states == [weights_sha256(w.lm.model)]
    with pytest.raises(EditError, match="already rolled back"):
        rollback_injection(store, w.lm, done[0].id)


def test_export_loads_with_stock_transformers_and_gives_equal_logits(store, tmp_path) -> None:
    w = build_world(store, tmp_path)
    rec = inject_facts(store, w.lm, w.run, [_fact("Peru", "P36", "Tokyo")], QUICK)
    out = export_injection(store, w.lm, rec.id, tmp_path / "exported")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["intermediate_size"] == 50 and cfg["mlp_bias"] is True
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert weights_sha256(loaded) == rec.sha256_after
    relo = load_model(str(w.model_dir))  # the same loader, so both run the same attention code
    with injected_copy(relo, *_stack_of(store, w)), torch.no_grad():
        want = relo.model(IDS).logits
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, want)
    ids = torch.tensor([relo.tokenizer("The capital of Peru is").input_ids])
    with torch.no_grad():
        assert relo.tokenizer.decode(loaded(ids).logits[0, -1].argmax()) == "Tokyo"


def test_default_layer_is_the_weighted_median_of_the_relations_neurons(store, tmp_path) -> None:
    w = build_world(store, tmp_path)
    run, _, neurons = read_run_atlas(store, w.run)
    with store.begin() as conn:
        for rel in [*RELATIONS, ""]:
            layers = sorted(lay for fid, ns in neurons.items() for lay, _, _ in ns if not rel or fid.startswith(rel))
            want = layers[(len(layers) - 1) // 2]  # the lower median: half of the neurons at or below it
            assert default_layer(conn, store.backend, run.id, rel) == want
        assert default_layer(conn, store.backend, run.id, "P999") is None


def test_bad_input_is_refused_and_changes_nothing(store, tmp_path) -> None:
    w = build_world(store, tmp_path)
    first = inject_facts(store, w.lm, w.run, [_fact("France", "P36", "Berlin")], QUICK)
    base, before = weights_sha256(w.lm.model), snapshot(store)
    files = {p.name: p.read_bytes() for p in w.model_dir.iterdir() if p.is_file()}
    cases = [
        ([_fact("Spain", "P36", "Atlantis")], QUICK, InputError, "object 'Atlantis' cannot be used"),
        ([_fact("France", "P36", "Rome")], QUICK, ConflictError, f"contradicts injection {first.id}"),
        ([_fact("Italy", "P36", "Rome"), _fact("Italy", "P36", "Lima")], QUICK, ConflictError, "contradicts fact"),
        ([_fact("Italy", "P36", "Rome")], InjectSpec(layers=(3,)), InputError, "layer 3 is out of range"),
        ([_fact("Italy", "P36", "Rome")], InjectSpec(gate_low=0.9), InputError, "gate-low"),
        ([_fact("Italy", "P36", "Rome")], InjectSpec(keep_weight=-1.0), InputError, "keep-weight must be >= 0"),
        ([_fact("Italy", "P36", "Rome")], InjectSpec(keep_gold=-1.0), InputError, "keep-gold must be >= 0"),
        ([_fact("Italy", "P36", "Rome")], InjectSpec(max_scale=-1.0), InputError, "max-scale >= 0"),
        ([_fact("Italy", "P36", "Rome")], InjectSpec(value_prefixes=9), InputError, "value-prefixes must be <= 8"),
        ([_fact("Italy", "P36", "Rome")], InjectSpec(value_goal=1.0), InputError, "value-goal must be in"),
    ]
    for facts, spec, err, msg in cases:
        with pytest.raises(err, match=msg) as info:
            inject_facts(store, w.lm, w.run, facts, spec)
        assert "\n" not in str(info.value)
    other = load_model(str(save_model(tmp_path / "other", seed=1)))
    with pytest.raises(WeightsMismatch, match="was indexed with model"):
        inject_facts(store, other, w.run, [_fact("Italy", "P36", "Rome")], QUICK)
    with pytest.raises(InputError, match="SUBJECT|RELATION|OBJECT"):
        fact_from_option("Italy|P36")
    assert snapshot(store) == before and weights_sha256(w.lm.model) == base
    assert {p.name: p.read_bytes() for p in w.model_dir.iterdir() if p.is_file()} == files
    assert [i.id for i in list_injections(store)] == [first.id]


@pytest.mark.parametrize("family", ["bert", "gpt2", "neox"])
def test_other_families_take_injected_facts_too(store, tmp_path, family: str) -> None:
    """A masked LM (BERT: no fluency text) and the plain-MLP decoders: injected, exported, rolled back."""
    w = build_world(store, tmp_path, family=family)
    rec = inject_facts(store, w.lm, w.run, [_fact("Chile", "P37", "Portuguese")], QUICK)
    assert rec.audit["efficacy"] == 1.0 and (rec.audit.get("fluency_ppl_change") is None) == (family == "bert")
    out = export_injection(store, w.lm, rec.id, tmp_path / "exported")
    assert weights_sha256(load_model(str(out)).model) == rec.sha256_after
    assert rollback_injection(store, w.lm, rec.id).status == "rolled_back"


def test_an_exported_injected_model_is_indexed_and_its_slot_is_a_knowledge_neuron(store, tmp_path) -> None:
    """Injected slots are ordinary neurons: `atlas index` on the exported model attributes the
    injected fact to its own slot, which `fact-neurons` then lists."""
    w = index_world(store, tmp_path)  # a run made by the indexer (its prompts come from a loaded dataset)
    spec = replace(QUICK, heldout=0, audit_facts=5)  # the slot is built on all three prompts
    rec = inject_facts(store, w.lm, w.run, [_fact("France", "P36", "Berlin")], spec)
    (layer, slot) = rec.facts[0].info["slots"][0]
    out = export_injection(store, w.lm, rec.id, tmp_path / "exported")
    prompts = tuple(make_prompt(t, "France") for t in RELATIONS["P36"][3])
    load_dataset(
        store,
        Dataset("injected", [Relation("P36", "capital", "N-1")], [DFact("cf", "P36", "France", "Berlin", prompts)]),
    )
    index(store, IndexOptions(model=str(out), dataset="injected", steps=8, run_name="injected-run"))
    run, _, _ = read_run_atlas(store, "injected-run")
    query = load_query("fact-neurons")
    with store.begin() as conn:
        rows = conn.execute(query.text(store.backend), query.bind({"run_id": run.id, "fact_id": "cf"})).all()
    assert (layer, slot) in {(r.layer, r.neuron) for r in rows}, rows


def test_specificity_reports_the_mean_ratio_and_the_ratio_of_means() -> None:
    """Per prompt |dP/P|, averaged (the issue's form), beside sum |dP| / sum P (Dai et al.'s), which
    a prompt near P = 0 cannot decide alone; prompts with P = 0 before count only in the second;
    and by name the facts whose right answers were lost and the prompts moved most."""

    def s(p: float, greedy: bool = False) -> Scored:
        return Scored(p, (), greedy, 0)

    before = [s(4e-7), s(0.5, True), s(0.2, True), s(0.0)]
    after = [s(5e-4), s(0.45), s(0.2, True), s(0.01)]
    owners = [
        Fact("j", "P190", "Beijing", "Johannesburg"),
        Fact("r", "P36", "Italy", "Rome"),
        Fact("p", "P36", "France", "Paris"),
        Fact("z", "P30", "Kenya", "Africa"),
    ]
    got = inject_audit._specificity("others", before, after, None, owners)
    ratios = [(5e-4 - 4e-7) / 4e-7, 0.05 / 0.5, 0.0]
    assert got["others_mean_abs_rel_dp"] == pytest.approx(sum(ratios) / 3)
    assert got["others_change_of_means"] == pytest.approx((5e-4 - 4e-7 + 0.05 + 0.01) / (0.7 + 4e-7))
    assert (got["others_right_before"], got["others_right_kept"]) == (2, 1)
    assert got["others_lost"] == {"P36 Italy -> Rome": 1}
    moved = [(m["fact"], m["rel_dp"], m["p_before"], m["p_after"]) for m in got["others_moved_most"]]
    assert moved == [
        ("P190 Beijing -> Johannesburg", 1249.0, 4e-7, 5e-4),
        ("P36 Italy -> Rome", 0.1, 0.5, 0.45),
        ("P36 France -> Paris", 0.0, 0.2, 0.2),
    ]  # Kenya's prompt had P = 0 before: no ratio


def test_generalisation_where_known_counts_the_prompts_whose_top1_was_a_replaced_object() -> None:
    """Held-out prompt k's fact replaces objects whose first tokens are `replaced_tokens[k]`; the
    model "knew" it when its top-1 before was one of them; held-out prompts of a fact that replaces
    nothing never count."""
    plan = inject_audit.AuditPlan([], [], EvalSet("others"), replaced_tokens=[(7,), (7, 9), (), (5,)])
    before = [Scored(0.1, (), False, top1) for top1 in (7, 9, 3, 6)]
    after = [Scored(p, (), p > 0.5, 1) for p in (0.9, 0.2, 0.9, 0.9)]
    assert inject_audit._where_known(plan, before, after) == {"heldout_known": 2, "generalisation_where_known": 0.5}
    none = inject_audit.AuditPlan([], [], EvalSet("others"), replaced_tokens=[(), ()])
    assert inject_audit._where_known(none, before[:2], after[:2])["heldout_known"] is None
