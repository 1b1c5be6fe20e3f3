"""Updating a fact <h, r, t> -> <h, r, t'> through its own knowledge neurons.

Slots: the fact's knowledge neurons minus those in more than `max_share` of its relation's facts
(they carry the relation, not the fact; a neuron of this fact alone is never "shared"). Forms:

* `paper`: v <- v - l1 e_t + l2 e_t', l1 = |v|/|e_t| l1_scale, l2 = |v|/|e_t'| l2_scale (Dai et al.);
* `ls` (default): the smallest change of those slots whose effect at the fact's answer position is
  a step `beta * rms * u` along u, the direction in which a change of the layer's FFN output there
  raises logit(t') - logit(t) most (`target="swap"`; logit(t') alone with "new"), taken from the
  gradient on the fact's prompts (`atlas.model.forms.logit_gradients`): ridge least squares over the
  slots' mean activations a, dv_i = a_i step / (|a|^2 (1 + lam)) (a rank-one change per layer),
  with beta the smallest of 1/4, 1/2, 1, ..., `max_scale` that makes t' the greedy answer on at
  least half of the fact's prompts (if none does, the one that did best: a large step can
  overshoot through a norm). Other inputs see the change only in proportion to how
  much they use those same neurons. With `preserve="covariance"` (the default for `ls`, `auto`)
  each layer of those slots changes as a whole, by the least-squares change that makes the same move
  on the fact's prompts weighed against the answer-position activations of `preserve_facts` other
  facts of the model's runs (MEMIT's constraint; `atlas.model.forms.lsq_change`): on the real
  SmolLM2 it keeps the success rate and cuts the other relations' damage by an order of magnitude
  (BENCHMARKS.md). With `preserve="nullspace"` each layer's change is restricted to the null space
  of other relations' activations; `preserve="none"` is the rank-one change of the slots alone.

Metrics: the paper's success rate (the fact's prompts now answered t') and change rate (prompts
answered t before, no longer after), P(t) and P(t'), and the relation-level judgement of
`atlas.jobs.evaluate` (the fact's relation without the fact, every other relation, fluency).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from atlas.db.edits import APPLIED, EditRecord
from atlas.db.neurons import Fact, Workset, preserved_facts, read_workset
from atlas.db.runs import Run
from atlas.db.store import Store
from atlas.errors import EditError, NotFound
from atlas.jobs.edits import apply_and_measure, record, token_id
from atlas.jobs.evaluate import EvalSet, RelationPlan, judge, summary
from atlas.jobs.specs import UpdateSpec
from atlas.jobs.weights import ModelArg, Slot, layer_change, resolve_model, slots_written
from atlas.model import forms
from atlas.model.loading import LoadedModel
from atlas.model.scoring import Scored
from atlas.model.slots import read_slots, update_slots

STEPS = (0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256)


def update_fact(
    store: Store,
    lm: ModelArg,
    run_name: str | int,
    fact_id: str,
    new_object: str,
    spec: UpdateSpec | None = None,
    status: str = APPLIED,
) -> EditRecord:
    """Rewrite `fact_id`'s object to `new_object` (see the module docstring); recorded and reversible."""
    spec = spec or UpdateSpec()
    spec.check()
    with store.begin() as conn:
        ws = read_workset(store, run_name, _relation_of_fact(fact_id), conn)
        keep = _preserved(store, conn, ws, fact_id, spec)
    lm = resolve_model(store, lm, ws.run)
    fact = ws.facts[fact_id]
    target, new = EvalSet.of("target", lm, [fact]), EvalSet.of("new", lm, [fact], new_object)
    old_tok, new_tok = _update_tokens(lm, fact, target, new_object)
    chosen = _fact_specific_neurons(ws, fact, spec.max_share)
    others = {k: f for k, f in ws.facts.items() if k != fact_id}
    plan = RelationPlan.of(lm, others, fact.relation_id, 2 * spec.other_facts, spec.other_facts, f"{spec.seed}")
    preserve = [it for f in keep for it in EvalSet.of(f.id, lm, [f]).items]
    maker = _Maker(lm, spec, chosen, target, new, (old_tok, new_tok), preserve)

    def measure_fn(m: LoadedModel) -> dict[str, Any]:
        return {"target": target.measure(m), "new": new.measure(m), **plan.measure(m)}

    out = apply_and_measure(lm, ws, maker.slots, measure_fn, status)
    metrics = {
        "applied_edits": [e.id for e in ws.stack] if status == APPLIED else [],
        **update_metrics(out.before, out.after),
        **judge(plan, out.before, out.after),
    }
    params = {
        **spec.__dict__,
        "preserve": spec.preservation,
        "new_object": new_object,
        "new_token": new_tok,
        "old_token": old_tok,
        "relation": fact.relation_id,
        "neurons": chosen,
        "step": maker.step,
        "dropped_hub_neurons": len(ws.neurons[fact_id]) - len(chosen),
        "n_slots": len(out.slots),
    }
    return record(store, ws, "update", fact_id, params, out, metrics, status)


class _Maker:
    """The edited slots on the current weights: the paper's rule, or the scaled least-squares step."""

    def __init__(
        self,
        lm: LoadedModel,
        spec: UpdateSpec,
        chosen: list[tuple[int, int]],
        target: EvalSet,
        new: EvalSet,
        tokens: tuple[int, int],
        preserve: list,
    ) -> None:
        self.lm, self.spec, self.chosen, self.target, self.new = lm, spec, chosen, target, new
        self.old_tok, self.new_tok = tokens
        self.preserve = preserve
        self.step: float | None = None

    def slots(self, lm: LoadedModel) -> list[Slot]:
        if self.spec.form == "paper":
            emb = lm.adapter.unembedding().detach()
            e_old, e_new = emb[self.old_tok].cpu(), emb[self.new_tok].cpu()  # slots are read to the CPU
            out = []
            for layer, neuron in self.chosen:
                v = read_slots(lm.adapter, layer, [neuron])
                new = update_slots(v, e_old, e_new, self.spec.l1_scale, self.spec.l2_scale)
                out.append(Slot(layer, neuron, v[0], new[0]))
            return out
        return self._least_squares(lm)

    def _least_squares(self, lm: LoadedModel) -> list[Slot]:
        acts, rms = forms.answer_activations(lm.adapter, self.target.items, self.chosen)
        if float(acts @ acts) == 0.0:
            raise EditError("the fact's knowledge neurons are silent at its answer position; nothing to scale")
        layers = sorted({n[0] for n in self.chosen})
        down = self.old_tok if self.spec.target == "swap" else None
        units = forms.logit_gradients(lm.adapter, self.target.items, layers, self.new_tok, down)
        change = self._unit_change(lm, acts, rms, units, layers)
        projectors = {}
        if self.spec.preservation == "nullspace":
            moments = forms.activation_moments(lm.adapter, self.preserve, layers)
            projectors = {k: forms.nullspace_projector(*m, energy=self.spec.energy)[0] for k, m in moments.items()}
        best: tuple[tuple[int, float], float, list[Slot]] | None = None
        for step in [s for s in STEPS if s <= self.spec.max_scale]:
            slots = [
                slot
                for layer, deltas in change.items()
                for slot in layer_change(lm, layer, {n: d * step for n, d in deltas.items()}, projectors.get(layer))
            ]
            with slots_written(lm, slots):
                scored = self.new.measure(lm)
            gain = (sum(s.greedy for s in scored), sum(s.p_gold for s in scored))
            if best is None or gain > best[0]:
                best = (gain, step, slots)
            if 2 * gain[0] >= len(self.new.items):  # the smallest step that makes t' win on half the prompts
                break
        _, self.step, slots = best  # else the step that did best (a large one can overshoot a norm)
        return slots

    def _unit_change(
        self, lm: LoadedModel, acts: torch.Tensor, rms: float, units: dict[int, torch.Tensor], layers: list[int]
    ) -> dict[int, dict[int, torch.Tensor]]:
        """Per layer, the slot changes (`{neuron: [hidden]}`) of a unit step: each layer's output at
        the fact's answer moves by `rms / (1 + lam)` along its direction. Rank-one on the chosen
        slots; with `covariance`, the whole layer's least-squares change on the fact's prompts
        weighed against the preserved activations (`forms.lsq_change`)."""
        if self.spec.preservation != "covariance":
            rows = [
                forms.rank_one_change(acts, units[layer] * rms, self.spec.lam)[i]
                for i, (layer, _) in enumerate(self.chosen)
            ]
            out: dict[int, dict[int, torch.Tensor]] = {layer: {} for layer in layers}
            for (layer, neuron), row in zip(self.chosen, rows):
                out[layer][neuron] = row
            return out
        keys = forms.answer_keys(lm.adapter, self.target.items, layers)
        moments = forms.activation_moments(lm.adapter, self.preserve, layers, answer_only=True)
        out = {}
        for layer in layers:
            step = (units[layer] * rms / (1 + self.spec.lam)).double()
            target = step[:, None].expand(-1, len(keys[layer]))  # [hidden, n]: the same move on every prompt
            kept = forms.preservation_moment(*moments[layer], len(keys[layer]), self.spec.preserve_weight)
            dw = forms.lsq_change(keys[layer], target, preserved=kept, lam=self.spec.lam)
            out[layer] = dict(enumerate(dw.T))
        return out


def _preserved(store: Store, conn: Any, ws: Workset, fact_id: str, spec: UpdateSpec) -> list[Fact]:
    """The facts whose activations an update preserves, `preserve_facts` of them from every run of
    the model: of other relations for the null space (it must leave room for the change), of any
    relation but the fact itself for `covariance` (a weight, not a wall)."""
    if spec.preservation == "none":
        return []
    relation = ws.facts[fact_id].relation_id if spec.preservation == "nullspace" else ""
    keep = preserved_facts(conn, store.backend, ws.run.model_id, relation, spec.preserve_facts + 1)
    return [f for f in keep if f.id != fact_id][: spec.preserve_facts]


def _relation_of_fact(fact_id: str) -> Callable[[Run, dict[str, Fact], dict], str]:
    """The fact's relation, once the fact is known to be in the run and to have knowledge neurons."""

    def relation_of(run: Run, facts: dict[str, Fact], neurons: dict) -> str:
        if fact_id not in facts:
            raise NotFound(f"unknown fact {fact_id!r} in run {run.name!r}")
        if fact_id not in neurons:
            raise EditError(f"fact {fact_id!r} has no knowledge neurons in run {run.name!r}")
        return facts[fact_id].relation_id

    return relation_of


def _update_tokens(lm: LoadedModel, fact: Fact, target: EvalSet, new_object: str) -> tuple[int, int]:
    """The first tokens of the gold and the new object; refused when the new one is not a single
    token, a prompt cannot be encoded, or both start alike."""
    new_tok = token_id(lm, new_object, "object")
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


def update_metrics(before: dict[str, list[Scored]], after: dict[str, list[Scored]]) -> dict[str, Any]:
    """The paper's update metrics from per-prompt outcomes (see the module docstring)."""
    was_right = [a.greedy for b, a in zip(before["target"], after["target"]) if b.greedy]
    return {
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
