"""Editing a model through its knowledge neurons: update a fact, erase a relation, roll back, export.

Every function is read -> compute -> write: one transaction reads the run, its facts, neurons and
the applied edits; the model then runs with no transaction open (on DuckDB an open one blocks the
only writer); one transaction writes the edit, after checking that the applied edits did not
change meanwhile. How the edited weights are derived and checked is `atlas.jobs.weights`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from atlas.db.edits import (
    APPLIED,
    TRIAL,
    EditRecord,
    EditRows,
    NewEdit,
    applied_stack,
    check_stack,
    get_edit,
    insert_edit,
)
from atlas.db.neurons import Fact, SlotStat, relation_neurons, run_atlas
from atlas.db.runs import Run
from atlas.db.store import Store
from atlas.errors import EditError, NotFound
from atlas.jobs import metrics as m
from atlas.jobs.evaluate import EvalSet, measure, sample, summary
from atlas.jobs.weights import ModelArg, Slot, resolve_model, slots_written, working_copy
from atlas.model.loading import LoadedModel, weights_sha256
from atlas.model.scoring import Scored, single_token_id
from atlas.model.slots import read_slots, update_slots

__all__ = ["APPLIED", "TRIAL", "erase_relation", "update_fact", "update_metrics"]


@dataclass
class Workset:
    """What an edit reads, in one transaction: the run, its facts and neurons, the applied edits,
    and the neuron statistics of the relation concerned."""

    run: Run
    facts: dict[str, Fact]
    neurons: dict[str, list[tuple[int, int, float]]]
    stack: list[EditRows]
    relation: list[SlotStat]


def read_workset(
    store: Store, run_name: str | int, relation_of: Callable[[Run, dict[str, Fact], dict], str]
) -> Workset:
    """`relation_of(facts)` names the relation whose neuron statistics are read (or raises)."""
    with store.begin() as conn:
        run, facts, neurons = run_atlas(conn, store.backend, run_name)
        relation = relation_of(run, facts, neurons)
        stats = relation_neurons(conn, run.id, relation, store.backend)
        stack = applied_stack(conn, store.backend, run.model_id)
    return Workset(run, facts, neurons, stack, stats)


@dataclass
class Outcome:
    """What computing an edit gave: its slots, the weights' hashes around it, the measurements."""

    slots: list[Slot]
    sha_before: str
    sha_after: str
    before: dict[str, list[Scored]]
    after: dict[str, list[Scored]]


def apply_and_measure(
    lm: LoadedModel, ws: Workset, make_slots: Callable[[LoadedModel], list[Slot]], sets: list[EvalSet], status: str
) -> Outcome:
    """On the working copy (the base weights for a trial edit): `make_slots(lm)` reads the current
    slots and returns the edited ones; `sets` are measured before and after."""
    with working_copy(lm, ws.run, [] if status == TRIAL else ws.stack) as sha_before:
        slots = make_slots(lm)
        evals = sets
        before = measure(lm, evals)
        with slots_written(lm, slots):
            sha_after = weights_sha256(lm.model)
            after = measure(lm, evals)
    return Outcome(slots, sha_before, sha_after, before, after)


def record(
    store: Store, ws: Workset, kind: str, target: str, params: dict, out: Outcome, metrics: dict, status: str
) -> EditRecord:
    """Write the edit (an applied one only if the applied edits are still those it started from)."""
    with store.begin() as conn:
        if status == APPLIED:
            check_stack(conn, store.backend, ws.run.model_id, ws.stack)
        edit_id = insert_edit(
            store,
            conn,
            NewEdit(
                ws.run.id,
                ws.run.model_id,
                kind,
                target,
                params,
                status,
                out.sha_before,
                out.sha_after,
                [s.to_bytes() for s in out.slots],
                metrics,
            ),
        )
    return get_edit(store, edit_id)


def _token(lm: LoadedModel, text: str, what: str) -> int:
    try:
        return single_token_id(lm.tokenizer, text)
    except ValueError as exc:
        raise EditError(f"unknown {what} token {text!r}: {exc}") from None


# --- update --------------------------------------------------------------------------------------


def update_fact(
    store: Store,
    lm: ModelArg,
    run_name: str | int,
    fact_id: str,
    new_object: str,
    *,
    l1_scale: float = 1.0,
    l2_scale: float = 8.0,
    max_share: float = 0.1,
    eval_facts: int = 20,
    status: str = APPLIED,
) -> EditRecord:
    """Rewrite fact <h, r, t> to <h, r, t'> with the paper's rule on its knowledge neurons.

    Neurons present in more than `max_share` of the relation's facts are left alone (they carry the
    relation, not the fact); a neuron of this fact alone is never "shared", however few facts the
    relation has in the run (with < 10 facts, one fact is already > 10 %). Metrics, all on greedy
    decoding of the answer after the prompt: change_rate = share of the target's prompts answered t
    before whose answer is no longer t after (None if none was answered t); success_rate = share of
    the target's prompts answered t' after; intra/inter perplexity = perplexity of the gold object
    tokens over the prompts of up to `eval_facts` other facts of the same relation / of other
    relations, before and after.
    """

    ws = read_workset(store, run_name, _relation_of_fact(fact_id))
    lm = resolve_model(store, lm, ws.run)
    fact = ws.facts[fact_id]
    target = EvalSet.of("target", lm, [fact])
    old_tok, new_tok = _update_tokens(lm, fact, target, new_object)
    chosen = _fact_specific_neurons(ws, fact, max_share)

    def make_slots(lm: LoadedModel) -> list[Slot]:
        emb = lm.adapter.unembedding().detach()
        out = []
        for layer, neuron in chosen:
            v = read_slots(lm.adapter, layer, [neuron])
            out.append(Slot(layer, neuron, v[0], update_slots(v, emb[old_tok], emb[new_tok], l1_scale, l2_scale)[0]))
        return out

    sets = _update_sets(lm, ws, fact, target, new_object, eval_facts)
    out = apply_and_measure(lm, ws, make_slots, sets, status)
    params = {
        "new_object": new_object,
        "new_token": new_tok,
        "old_token": old_tok,
        "l1_scale": l1_scale,
        "l2_scale": l2_scale,
        "max_share": max_share,
        "eval_facts": eval_facts,
        "dropped_hub_neurons": len(ws.neurons[fact_id]) - len(chosen),
        "relation": fact.relation_id,
    }
    return record(store, ws, "update", fact_id, params, out, update_metrics(out.before, out.after), status)


def _relation_of_fact(fact_id: str) -> Callable[[Run, dict[str, Fact], dict], str]:
    """The fact's relation, once the fact is known to be in the run and to have knowledge neurons."""

    def relation_of(run: Run, facts: dict[str, Fact], neurons: dict) -> str:
        if fact_id not in facts:
            raise NotFound(f"unknown fact {fact_id!r} in run {run.name!r}")
        if fact_id not in neurons:
            raise EditError(f"fact {fact_id!r} has no knowledge neurons in run {run.name!r}")
        return facts[fact_id].relation_id

    return relation_of


def _update_sets(
    lm: LoadedModel, ws: Workset, fact: Fact, target: EvalSet, new_object: str, eval_facts: int
) -> list[EvalSet]:
    """The target's prompts (gold and new object) and samples of its relation's and other relations' facts."""
    same = [f for f in ws.facts.values() if f.relation_id == fact.relation_id and f.id != fact.id]
    other = [f for f in ws.facts.values() if f.relation_id != fact.relation_id]
    return [
        target,
        EvalSet.of("new", lm, [fact], new_object),
        EvalSet.of("intra", lm, sample(same, eval_facts, fact.id)),
        EvalSet.of("inter", lm, sample(other, eval_facts, fact.id)),
    ]


def _update_tokens(lm: LoadedModel, fact: Fact, target: EvalSet, new_object: str) -> tuple[int, int]:
    """The first tokens of the gold and the new object; refused when the new one is not a single
    token, a prompt cannot be encoded, or both start alike."""
    new_tok = _token(lm, new_object, "object")
    if not target.items:
        raise EditError(f"no prompt of fact {fact.id!r} can be encoded for {lm.name!r}")
    old_tok = target.items[0].answer_ids[0]
    if new_tok == old_tok:
        raise EditError(f"new object {new_object!r} starts with the same token as the gold object {fact.object!r}")
    return old_tok, new_tok


def _fact_specific_neurons(ws: Workset, fact: Fact, max_share: float) -> list[tuple[int, int]]:
    """The fact's knowledge neurons minus those in more than `max_share` of its relation's facts."""
    hubs = {(s.layer, s.neuron) for s in ws.relation if s.share > max_share and s.n_facts >= 2}
    chosen = [(layer, n) for layer, n, _ in ws.neurons[fact.id] if (layer, n) not in hubs]
    if not chosen:
        raise EditError(
            f"all {len(ws.neurons[fact.id])} knowledge neurons of fact {fact.id!r} are shared by more "
            f"than {max_share:.0%} of relation {fact.relation_id}'s facts; nothing fact-specific to edit"
        )
    return chosen


def _before_after(out: Outcome, names: Sequence[str], with_accuracy: bool) -> dict[str, Any]:
    """Perplexity (and greedy accuracy) of each evaluation set before and after, and the change."""
    metrics: dict[str, Any] = {}
    for name in names:
        b, a = summary(out.before[name]), summary(out.after[name])
        if with_accuracy:
            metrics[f"{name}_accuracy_before"], metrics[f"{name}_accuracy_after"] = b["accuracy"], a["accuracy"]
        metrics[f"{name}_ppl_before"], metrics[f"{name}_ppl_after"] = b["perplexity"], a["perplexity"]
        metrics[f"{name}_ppl_change"] = m.ratio_change(b["perplexity"], a["perplexity"])
        metrics[f"{name}_prompts"] = b["n_prompts"]
    return metrics


def update_metrics(before: dict[str, list[Scored]], after: dict[str, list[Scored]]) -> dict[str, Any]:
    """The paper's update metrics from per-prompt outcomes (see `update_fact`)."""
    was_right = [a.greedy for b, a in zip(before["target"], after["target"]) if b.greedy]
    out: dict[str, Any] = {
        "change_rate": (sum(not ok for ok in was_right) / len(was_right)) if was_right else None,
        "success_rate": sum(s.greedy for s in after["new"]) / len(after["new"]),
        "success_rate_before": sum(s.greedy for s in before["new"]) / len(before["new"]),
        "n_target_prompts": len(before["target"]),
        "n_target_correct_before": len(was_right),
        "p_gold_before": summary(before["target"])["p_gold"],
        "p_gold_after": summary(after["target"])["p_gold"],
        "p_new_before": summary(before["new"])["p_gold"],
        "p_new_after": summary(after["new"])["p_gold"],
    }
    out.update(_before_after(Outcome([], "", "", before, after), ("intra", "inter"), with_accuracy=False))
    return out


# --- erase ---------------------------------------------------------------------------------------


def erase_relation(
    store: Store,
    lm: ModelArg,
    run_name: str | int,
    relation: str,
    *,
    top: int | None = 20,
    min_facts: int | None = None,
    value: str = "zero",
    eval_facts: int = 50,
) -> EditRecord:
    """Erase relation `relation`: overwrite the value slots of its most frequent knowledge neurons.

    `top` takes the N neurons present in the most facts (the ACL paper: 20); `min_facts` instead
    takes every neuron present in at least m facts (arXiv v1). `value`: zero | unk (the unknown
    token's output embedding) | token:T (that token's output embedding). Metrics: accuracy
    (greedy decoding reproduces the gold object) and perplexity of the gold object tokens, on the
    erased relation's facts and on up to `eval_facts` facts of other relations, before and after.
    """
    ws = read_workset(store, run_name, lambda run, facts, neurons: relation)
    if not ws.relation:
        raise NotFound(f"unknown relation {relation!r}: no knowledge neurons for it in run {ws.run.name!r}")
    stats = ws.relation
    chosen = [s for s in stats if s.n_facts >= min_facts] if min_facts is not None else stats[: top or 20]
    if not chosen:
        raise EditError(
            f"no knowledge neuron of {relation} is shared by {min_facts} or more facts "
            f"(the most shared is in {stats[0].n_facts})"
        )
    lm = resolve_model(store, lm, ws.run)
    fill = fill_vector(lm, value)

    def make_slots(lm: LoadedModel) -> list[Slot]:
        return [
            Slot(s.layer, s.neuron, v, fill.to(v.dtype).clone())
            for s in chosen
            for v in [read_slots(lm.adapter, s.layer, [s.neuron])[0]]
        ]

    erased = [f for f in ws.facts.values() if f.relation_id == relation]
    other = [f for f in ws.facts.values() if f.relation_id != relation]
    sets = [
        EvalSet.of("erased", lm, sample(erased, eval_facts, relation)),
        EvalSet.of("other", lm, sample(other, eval_facts, relation)),
    ]
    out = apply_and_measure(lm, ws, make_slots, sets, APPLIED)
    metrics = _before_after(out, ("erased", "other"), with_accuracy=True)
    params = {
        "top": top if min_facts is None else None,
        "min_facts": min_facts,
        "value": value,
        "eval_facts": eval_facts,
        "n_neurons": len(chosen),
    }
    return record(store, ws, "erase", relation, params, out, metrics, APPLIED)


def fill_vector(lm: LoadedModel, value: str) -> torch.Tensor:
    """What erased slots become: zero, the unknown token's or a given token's output embedding."""
    emb = lm.adapter.unembedding().detach()
    if value == "zero":
        return torch.zeros(emb.shape[1], dtype=emb.dtype)
    if value == "unk":
        unk = getattr(lm.tokenizer, "unk_token_id", None)
        if unk is None:
            raise EditError(f"the tokenizer of {lm.name!r} has no unknown token; use --value zero or token:T")
        return emb[unk].clone()
    if value.startswith("token:") and value[6:]:
        return emb[_token(lm, value[6:], "value")].clone()
    raise EditError(f"unknown --value {value!r}: use zero, unk or token:T")
