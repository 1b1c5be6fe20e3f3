"""Editing a model through its knowledge neurons: update a fact, erase a relation, roll back, export.

Design of the edited weights (the "working copy"): the database is the only state. Each edit
records the exact bytes of every value slot it changed, before and after (`edit_slots`), and
the SHA-256 of the whole weights before and after. The working copy of a model is re-derived on
demand by loading the run's base weights and replaying the still-applied edits oldest first;
the replay is checked against the newest edit's `sha256_after`, so a copy that does not
reproduce what was recorded is refused instead of silently used. Consequences:

* nothing to keep in sync on disk: a rollback is one UPDATE, and it is exact by construction
  (the original bytes go back; the result is checked against `sha256_before`);
* applied edits form a stack (each starts from the previous one's hash), so they are rolled
  back newest first;
* `atlas edit export` materialises one state as a Hugging Face safetensors directory;
* "trial" edits (made by `atlas audit --sample`) are measured against the base weights and
  never join the stack.

Every function takes a LoadedModel holding the run's BASE weights (checked by hash) and leaves
it holding them again when it returns or fails: edits live in the database, not in the caller's
model.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import torch
from sqlalchemy.engine import Connection

from atlas.jobs import metrics as m
from atlas.model.interventions import dtype_name, read_slots, slots_bytes, slots_from_bytes, update_slots, write_slots
from atlas.model.loading import LoadedModel, load_model, weights_sha256
from atlas.db.schema import edit_slots, edits
from atlas.model.scoring import Scored, encode, score, single_token_id
from atlas.db.sqlfile import sql_text
from atlas.db.store import Store
from atlas.db.workset import Fact, RunInfo, UnknownName, default_model_spec, get_run, relation_neurons, run_facts, run_neurons

ModelArg = LoadedModel | str | None  # a loaded model, a load_model spec, or None: the run's own model

APPLIED, ROLLED_BACK, TRIAL = "applied", "rolled_back", "trial"


class EditError(ValueError):
    """An edit, rollback or export that cannot be done as asked (the message says why)."""


class WeightsMismatch(EditError):
    """The loaded weights are not those the run was indexed with."""


@dataclass
class Slot:
    """One value slot an edit changes: its exact bytes before and after."""

    layer: int
    neuron: int
    original: torch.Tensor
    edited: torch.Tensor


@dataclass
class StoredEdit:
    """An edit as the database holds it, with its slots (for replay, rollback and export)."""

    id: int
    status: str
    sha256_before: str
    sha256_after: str
    slots: list[Slot] = field(default_factory=list)


@dataclass(frozen=True)
class EditRecord:
    """One row of `atlas edit list`."""

    id: int
    run: str
    kind: str
    target: str
    status: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    sha256_before: str
    sha256_after: str
    n_slots: int
    created_at: datetime | None
    rolled_back_at: datetime | None


# --- weights -----------------------------------------------------------------------------------


def resolve_model(store: Store, lm: ModelArg, run: str | int | None = None, edit_id: int | None = None) -> LoadedModel:
    """`lm` itself, or the model `lm` names, or (None) the model the run (or the edit's run) was indexed with.

    Loading is only a convenience: every operation still checks the weights' hash against the run.
    """
    if isinstance(lm, LoadedModel):
        return lm
    if lm is None:
        with store.begin() as conn:
            if edit_id is not None:
                row = conn.execute(sa.select(edits.c.run_id).where(edits.c.id == edit_id)).first()
                if row is None:
                    raise UnknownName(f"unknown edit {edit_id}")
                run = row.run_id
            lm = default_model_spec(get_run(conn, run, store.backend))
    return load_model(lm)


def check_weights(lm: LoadedModel, run: RunInfo) -> None:
    """Refuse weights other than the run's: attributions only describe the model they came from."""
    sha = weights_sha256(lm.model)
    if sha != run.model_sha256:
        raise WeightsMismatch(
            f"run {run.name!r} was indexed with model {run.model_name!r} (weights sha256 {run.model_sha256[:12]}…), "
            f"but the loaded weights of {lm.name!r} have sha256 {sha[:12]}…")


@contextmanager
def slots_written(lm: LoadedModel, slots: Sequence[Slot], which: str = "edited") -> Iterator[None]:
    """Write `which` (edited|original) bytes of `slots`, restoring what was there on exit."""
    saved: list[tuple[int, int, torch.Tensor]] = []
    try:
        for s in slots:
            saved.append((s.layer, s.neuron, read_slots(lm.adapter, s.layer, [s.neuron])))
            write_slots(lm.adapter, s.layer, [s.neuron], getattr(s, which)[None, :])
        yield
    finally:
        for layer, neuron, value in reversed(saved):
            write_slots(lm.adapter, layer, [neuron], value)


def stored_edits(conn: Connection, backend: str, model_id: int) -> list[StoredEdit]:
    """Every edit of the model with its slots, oldest first."""
    out: dict[int, StoredEdit] = {}
    for r in conn.execute(sql_text("model_edits", backend), {"model_id": model_id}):
        e = out.setdefault(int(r.id), StoredEdit(int(r.id), r.status, r.sha256_before, r.sha256_after))
        e.slots.append(Slot(int(r.layer), int(r.neuron), slots_from_bytes(bytes(r.original), r.dtype),
                            slots_from_bytes(bytes(r.edited), r.dtype)))
    return list(out.values())


@contextmanager
def working_copy(conn: Connection, backend: str, lm: LoadedModel, run: RunInfo,
                 upto: int | None = None) -> Iterator[str]:
    """The model with its applied edits (those with id <= `upto`) replayed; yields the weights' hash.

    The base weights are checked against the run's model, the replay against the newest replayed
    edit's recorded hash. Everything is undone on exit.
    """
    check_weights(lm, run)
    stack = [e for e in stored_edits(conn, backend, run.model_id)
             if e.status == APPLIED and (upto is None or e.id <= upto)]
    with slots_written(lm, [s for e in stack for s in e.slots]):
        sha = run.model_sha256
        if stack:
            sha = weights_sha256(lm.model)
            if sha != stack[-1].sha256_after:
                raise EditError(f"replaying the applied edits {[e.id for e in stack]} gives weights sha256 {sha[:12]}…, "
                                f"not the {stack[-1].sha256_after[:12]}… recorded by edit {stack[-1].id}")
        yield sha


# --- evaluation --------------------------------------------------------------------------------


@dataclass
class EvalSet:
    """Prompts of some facts, encoded, with the answer each is scored against."""

    name: str
    items: list = field(default_factory=list)

    @classmethod
    def of(cls, name: str, lm: LoadedModel, facts: Sequence[Fact], answer: str | None = None) -> "EvalSet":
        out = cls(name)
        for f in facts:
            for text in f.prompts:
                item = encode(lm.tokenizer, text, answer if answer is not None else f.object)
                if not isinstance(item, str):
                    out.items.append(item)
        return out


def _summary(scored: Sequence[Scored]) -> dict[str, float | None]:
    if not scored:
        return {"n_prompts": 0, "accuracy": None, "perplexity": None, "p_gold": None}
    return {"n_prompts": len(scored),
            "accuracy": sum(s.greedy for s in scored) / len(scored),
            "perplexity": m.perplexity([lp for s in scored for lp in s.logprobs]),
            "p_gold": sum(s.p_gold for s in scored) / len(scored)}


def _sample(facts: Sequence[Fact], k: int, seed: str) -> list[Fact]:
    facts = sorted(facts, key=lambda f: f.id)
    return random.Random(seed).sample(facts, k) if len(facts) > k else list(facts)


def _measure(lm: LoadedModel, sets: Sequence[EvalSet]) -> dict[str, list[Scored]]:
    return {s.name: score(lm.model, lm.adapter, s.items) for s in sets}


# --- recording ----------------------------------------------------------------------------------


def _record(conn: Connection, store: Store, run: RunInfo, kind: str, target: str, params: dict, slots: Sequence[Slot],
            sha_before: str, sha_after: str, metrics: dict, status: str) -> int:
    edit_id = conn.execute(edits.insert().values(
        run_id=run.id, model_id=run.model_id, kind=kind, target=target, params=json.dumps(params, sort_keys=True),
        status=status, sha256_before=sha_before, sha256_after=sha_after,
        metrics=json.dumps(metrics, sort_keys=True)).returning(edits.c.id)).scalar_one()
    store.bulk_insert(conn, edit_slots, {
        "edit_id": [edit_id] * len(slots), "layer": [s.layer for s in slots], "neuron": [s.neuron for s in slots],
        "original": [slots_bytes(s.original) for s in slots], "edited": [slots_bytes(s.edited) for s in slots],
        "dtype": [dtype_name(s.original) for s in slots]})
    return int(edit_id)


def _apply_and_measure(conn: Connection, store: Store, lm: LoadedModel, run: RunInfo, slots: list[Slot],
                       sets: Sequence[EvalSet], status: str) -> tuple[str, str, dict, dict]:
    """Measure `sets` before and after writing `slots` onto the working copy (base for trials)."""
    with working_copy(conn, store.backend, lm, run, upto=0 if status == TRIAL else None) as sha_before:
        before = _measure(lm, sets)
        with slots_written(lm, slots):
            sha_after = weights_sha256(lm.model)
            after = _measure(lm, sets)
    return sha_before, sha_after, before, after


def _run_and_facts(conn: Connection, store: Store, run_name: str | int) -> tuple[RunInfo, dict[str, Fact], dict]:
    run = get_run(conn, run_name, store.backend)
    return run, run_facts(conn, run.id, store.backend), run_neurons(conn, run.id, store.backend)


def _token(lm: LoadedModel, text: str, what: str) -> int:
    try:
        return single_token_id(lm.tokenizer, text)
    except ValueError as exc:
        raise EditError(f"unknown {what} token {text!r}: {exc}") from None


# --- update --------------------------------------------------------------------------------------


def update_fact(store: Store, lm: ModelArg, run_name: str | int, fact_id: str, new_object: str, *,
                l1_scale: float = 1.0, l2_scale: float = 8.0, max_share: float = 0.1, eval_facts: int = 20,
                status: str = APPLIED) -> EditRecord:
    """Rewrite fact <h, r, t> to <h, r, t'> with the paper's rule on its knowledge neurons.

    Neurons present in more than `max_share` of the relation's facts are left alone (they carry the
    relation, not the fact); a neuron of this fact alone is never "shared", however few facts the
    relation has in the run (with < 10 facts, one fact is already > 10 %). Metrics, all on greedy decoding of the answer after the prompt:
    change_rate = share of the target's prompts answered t before whose answer is no longer t after
    (None if none was answered t); success_rate = share of the target's prompts answered t' after;
    intra/inter perplexity = perplexity of the gold object tokens over the prompts of up to
    `eval_facts` other facts of the same relation / of other relations, before and after.
    """
    lm = resolve_model(store, lm, run_name)
    with store.begin() as conn:
        run, facts, neurons = _run_and_facts(conn, store, run_name)
        fact = facts.get(fact_id)
        if fact is None:
            raise UnknownName(f"unknown fact {fact_id!r} in run {run.name!r}")
        if fact_id not in neurons:
            raise EditError(f"fact {fact_id!r} has no knowledge neurons in run {run.name!r}")
        new_tok = _token(lm, new_object, "object")
        target = EvalSet.of("target", lm, [fact])
        if not target.items:
            raise EditError(f"no prompt of fact {fact_id!r} can be encoded for {lm.name!r}")
        old_tok = target.items[0].answer_ids[0]
        if new_tok == old_tok:
            raise EditError(f"new object {new_object!r} starts with the same token as the gold object {fact.object!r}")
        hubs = {(s.layer, s.neuron) for s in relation_neurons(conn, run.id, fact.relation_id, store.backend)
                if s.share > max_share and s.n_facts >= 2}
        chosen = [(l, n) for l, n, _ in neurons[fact_id] if (l, n) not in hubs]
        if not chosen:
            raise EditError(f"all {len(neurons[fact_id])} knowledge neurons of fact {fact_id!r} are shared by more than "
                            f"{max_share:.0%} of relation {fact.relation_id}'s facts; nothing fact-specific to edit")
        emb = lm.adapter.unembedding().detach()
        slots = []
        for layer, neuron in chosen:
            v = read_slots(lm.adapter, layer, [neuron])
            slots.append(Slot(layer, neuron, v[0], update_slots(v, emb[old_tok], emb[new_tok], l1_scale, l2_scale)[0]))
        same = [f for f in facts.values() if f.relation_id == fact.relation_id and f.id != fact_id]
        other = [f for f in facts.values() if f.relation_id != fact.relation_id]
        sets = [target, EvalSet.of("new", lm, [fact], new_object),
                EvalSet.of("intra", lm, _sample(same, eval_facts, fact_id)),
                EvalSet.of("inter", lm, _sample(other, eval_facts, fact_id))]
        sha_before, sha_after, before, after = _apply_and_measure(conn, store, lm, run, slots, sets, status)
        metrics = update_metrics(before, after)
        params = {"new_object": new_object, "new_token": new_tok, "old_token": old_tok, "l1_scale": l1_scale,
                  "l2_scale": l2_scale, "max_share": max_share, "eval_facts": eval_facts, "dropped_hub_neurons":
                  len(neurons[fact_id]) - len(chosen), "relation": fact.relation_id}
        edit_id = _record(conn, store, run, "update", fact_id, params, slots, sha_before, sha_after, metrics, status)
    return get_edit(store, edit_id)


def update_metrics(before: dict[str, list[Scored]], after: dict[str, list[Scored]]) -> dict[str, Any]:
    """The paper's update metrics from per-prompt outcomes (see `update_fact`)."""
    was_right = [a.greedy for b, a in zip(before["target"], after["target"]) if b.greedy]
    out: dict[str, Any] = {
        "change_rate": (sum(not ok for ok in was_right) / len(was_right)) if was_right else None,
        "success_rate": sum(s.greedy for s in after["new"]) / len(after["new"]),
        "success_rate_before": sum(s.greedy for s in before["new"]) / len(before["new"]),
        "n_target_prompts": len(before["target"]), "n_target_correct_before": len(was_right),
        "p_gold_before": _summary(before["target"])["p_gold"], "p_gold_after": _summary(after["target"])["p_gold"],
        "p_new_before": _summary(before["new"])["p_gold"], "p_new_after": _summary(after["new"])["p_gold"],
    }
    for name in ("intra", "inter"):
        b, a = _summary(before[name]), _summary(after[name])
        out.update({f"{name}_ppl_before": b["perplexity"], f"{name}_ppl_after": a["perplexity"],
                    f"{name}_ppl_change": m.ratio_change(b["perplexity"], a["perplexity"]),
                    f"{name}_prompts": b["n_prompts"]})
    return out


# --- erase ---------------------------------------------------------------------------------------


def erase_relation(store: Store, lm: ModelArg, run_name: str | int, relation: str, *, top: int | None = 20,
                   min_facts: int | None = None, value: str = "zero", eval_facts: int = 50) -> EditRecord:
    """Erase relation `relation`: overwrite the value slots of its most frequent knowledge neurons.

    `top` takes the N neurons present in the most facts (the ACL paper: 20); `min_facts` instead
    takes every neuron present in at least m facts (arXiv v1). `value`: zero | unk (the unknown
    token's output embedding) | token:T (that token's output embedding). Metrics: accuracy
    (greedy decoding reproduces the gold object) and perplexity of the gold object tokens, on the
    erased relation's facts and on up to `eval_facts` facts of other relations, before and after.
    """
    lm = resolve_model(store, lm, run_name)
    with store.begin() as conn:
        run, facts, _ = _run_and_facts(conn, store, run_name)
        stats = relation_neurons(conn, run.id, relation, store.backend)
        if not stats:
            raise UnknownName(f"unknown relation {relation!r}: no knowledge neurons for it in run {run.name!r}")
        chosen = [s for s in stats if s.n_facts >= min_facts] if min_facts is not None else stats[: top or 20]
        if not chosen:
            raise EditError(f"no knowledge neuron of {relation} is shared by {min_facts} or more facts "
                            f"(the most shared is in {stats[0].n_facts})")
        fill = _fill_vector(lm, value)
        slots = []
        for s in chosen:
            v = read_slots(lm.adapter, s.layer, [s.neuron])[0]
            slots.append(Slot(s.layer, s.neuron, v, fill.to(v.dtype).clone()))
        erased = [f for f in facts.values() if f.relation_id == relation]
        other = [f for f in facts.values() if f.relation_id != relation]
        sets = [EvalSet.of("erased", lm, _sample(erased, eval_facts, relation)),
                EvalSet.of("other", lm, _sample(other, eval_facts, relation))]
        sha_before, sha_after, before, after = _apply_and_measure(conn, store, lm, run, slots, sets, APPLIED)
        metrics = {}
        for name in ("erased", "other"):
            b, a = _summary(before[name]), _summary(after[name])
            metrics.update({f"{name}_accuracy_before": b["accuracy"], f"{name}_accuracy_after": a["accuracy"],
                            f"{name}_ppl_before": b["perplexity"], f"{name}_ppl_after": a["perplexity"],
                            f"{name}_ppl_change": m.ratio_change(b["perplexity"], a["perplexity"]),
                            f"{name}_prompts": b["n_prompts"]})
        params = {"top": top if min_facts is None else None, "min_facts": min_facts, "value": value,
                  "eval_facts": eval_facts, "n_neurons": len(chosen)}
        edit_id = _record(conn, store, run, "erase", relation, params, slots, sha_before, sha_after, metrics, APPLIED)
    return get_edit(store, edit_id)


def _fill_vector(lm: LoadedModel, value: str) -> torch.Tensor:
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


# --- rollback, export, list --------------------------------------------------------------------


def _edit_row(conn: Connection, edit_id: int) -> sa.Row:
    row = conn.execute(sa.select(edits).where(edits.c.id == edit_id)).first()
    if row is None:
        raise UnknownName(f"unknown edit {edit_id}")
    return row


def rollback(store: Store, lm: ModelArg, edit_id: int) -> EditRecord:
    """Undo edit `edit_id` (the newest applied edit of its model) and check the weights come back exactly."""
    lm = resolve_model(store, lm, edit_id=edit_id)
    with store.begin() as conn:
        row = _edit_row(conn, edit_id)
        if row.status == ROLLED_BACK:
            raise EditError(f"edit {edit_id} was already rolled back (at {row.rolled_back_at})")
        if row.status == TRIAL:
            raise EditError(f"edit {edit_id} is a trial edit (made by an audit sample); it was never applied")
        run = get_run(conn, row.run_id, store.backend)
        stack = [e for e in stored_edits(conn, store.backend, run.model_id) if e.status == APPLIED]
        if stack[-1].id != edit_id:
            raise EditError(f"edit {edit_id} cannot be rolled back before edit {stack[-1].id}: edits of model "
                            f"{run.model_name!r} are rolled back newest first")
        with working_copy(conn, store.backend, lm, run):
            with slots_written(lm, stack[-1].slots, "original"):
                sha = weights_sha256(lm.model)
        if sha != row.sha256_before:
            raise EditError(f"restoring edit {edit_id}'s original slots gives sha256 {sha[:12]}…, "
                            f"not the {row.sha256_before[:12]}… it started from")
        conn.execute(edits.update().where(edits.c.id == edit_id).values(
            status=ROLLED_BACK, rolled_back_at=datetime.now(timezone.utc)))
    return get_edit(store, edit_id)


def export(store: Store, lm: ModelArg, edit_id: int, out_dir: Path) -> Path:
    """Write the weights as of edit `edit_id` (its stack, or base + itself for a trial) as safetensors."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise EditError(f"output folder {str(out_dir)!r} exists and is not empty")
    lm = resolve_model(store, lm, edit_id=edit_id)
    with store.begin() as conn:
        row = _edit_row(conn, edit_id)
        if row.status == ROLLED_BACK:
            raise EditError(f"edit {edit_id} was rolled back; there is no such model to export")
        run = get_run(conn, row.run_id, store.backend)
        trial = [e for e in stored_edits(conn, store.backend, run.model_id) if e.id == edit_id and e.status == TRIAL]
        with working_copy(conn, store.backend, lm, run, upto=0 if trial else edit_id):
            with slots_written(lm, trial[0].slots if trial else []):
                sha = weights_sha256(lm.model)
                if sha != row.sha256_after:
                    raise EditError(f"the weights of edit {edit_id} hash to {sha[:12]}…, not the recorded {row.sha256_after[:12]}…")
                out_dir.mkdir(parents=True, exist_ok=True)
                lm.model.save_pretrained(out_dir, safe_serialization=True)
                lm.tokenizer.save_pretrained(out_dir)
                (out_dir / "kn_atlas_edit.json").write_text(json.dumps(
                    {"edit_id": edit_id, "run": run.name, "base_sha256": run.model_sha256, "sha256": sha}, indent=1))
    return out_dir


def get_edit(store: Store, edit_id: int) -> EditRecord:
    found = [e for e in list_edits(store) if e.id == edit_id]
    if not found:
        raise UnknownName(f"unknown edit {edit_id}")
    return found[0]


def list_edits(store: Store, run: str | None = None) -> list[EditRecord]:
    """Edits, newest first, optionally of one run."""
    with store.begin() as conn:
        rows = conn.execute(sql_text("edit_list", store.backend), {"run": run or ""}).all()
    return [EditRecord(int(r.id), r.run_name, r.kind, r.target, r.status, json.loads(r.params), json.loads(r.metrics),
                       r.sha256_before, r.sha256_after, int(r.n_slots), r.created_at, r.rolled_back_at) for r in rows]
