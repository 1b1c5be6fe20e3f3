"""Erasing a relation: choose its neurons in SQL, change their value slots, judge the change.

Selection (`select`), each a named query over the atlas:
* `frequent`: the relation's knowledge neurons present in the most facts (`relation-neurons`;
  the paper's erase takes the top 20 and zeroes them);
* `specific`: the neurons most of its facts use and few facts of any other relation do
  (`relation-specific-neurons`: share minus the largest other relation's share, hub exclusion).

Form (`form`, see `atlas.model.forms`): `zero`, `unk`, `token:T`, `damp:F` (slots x F) or `project`
(remove the relation's answer directions from each slot) on the chosen neurons; or `lsq`, which
edits whole layers instead: the last layer and the `layers` - 1 others (above the lowest third)
holding most of the relation's stored attribution (`relation-layers`), each by the least-squares
change that removes `strength` of what it writes along the answer directions on the relation's own
prompts.
Preservation (`preserve`): `covariance` (the default of `lsq`, MEMIT's soft constraint) weighs each
edited layer's change against the activations that other relations' prompts produce there at their
answer position; `nullspace` (AlphaEdit's hard one, neuron forms too) restricts it to the null space
of their activations at every position. Either spreads the change over every slot of those layers.

Judged on every relation of the run (`atlas.jobs.evaluate.RelationPlan`), before and after, and
against a control edit of the same form on as many layer-matched random neurons.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from atlas.db.edits import APPLIED, EditRecord
from atlas.db.neurons import Fact, Workset, preserved_facts, read_workset
from atlas.db.queries import run_query
from atlas.db.store import Store
from atlas.errors import EditError, NotFound
from atlas.jobs.edits import apply_and_measure, record, token_id
from atlas.jobs.evaluate import EvalSet, RelationPlan, judge, object_candidates
from atlas.jobs.specs import EraseSpec
from atlas.jobs.weights import ModelArg, Slot, layer_change, resolve_model
from atlas.model import forms
from atlas.model.loading import LoadedModel
from atlas.model.slots import read_slots


def select_neurons(store: Store, conn: Any, ws: Workset, relation: str, spec: EraseSpec) -> list[dict[str, Any]]:
    """The chosen neurons with their statistics, or an `EditError` naming the best candidate."""
    if spec.select == "frequent":
        stats = ws.relation
        chosen = [s for s in stats if s.n_facts >= spec.min_facts] if spec.min_facts is not None else stats[: spec.top]
        if not chosen:
            if not stats:
                raise EditError(
                    f"relation {relation} has no knowledge neurons in run {ws.run.name!r}: nothing to erase"
                )
            best = f"the most shared is in {stats[0].n_facts} facts"
            raise EditError(f"no knowledge neuron of {relation} is shared by {spec.min_facts} or more facts ({best})")
        return [{"layer": s.layer, "neuron": s.neuron, "n_facts": s.n_facts, "share": s.share} for s in chosen]
    params = {
        "run_id": ws.run.id,
        "relation_id": relation,
        "max_other_share": spec.max_other_share,
        "min_facts": spec.min_facts or 2,
        "top_k": spec.top,
        "min_layer": spec.min_layer or 0,
        "max_layer": spec.max_layer,
    }
    rows = run_query(store, "relation-specific-neurons", params, via="native", conn=conn)
    if not rows.rows:
        loose = run_query(
            store,
            "relation-specific-neurons",
            {**params, "max_other_share": 1.0, "min_facts": 1, "top_k": 1},
            via="native",
            conn=conn,
        )
        raise EditError(
            f"no neuron of {relation} is used by >= {spec.min_facts or 2} of its facts and by <= "
            f"{spec.max_other_share:.0%} of any other relation's facts in the chosen layers; "
            + _best(loose.rows, relation)
        )
    return [dict(zip(rows.columns, r)) for r in rows.rows]


def _best(rows: list[tuple], relation: str) -> str:
    if not rows:
        return f"{relation} has no stored scores in the chosen layers"
    layer, neuron, n_facts, share, other_share, other_relation, _ = rows[0]
    other = f", {other_share:.0%} of {other_relation}'s" if other_relation else ""
    return f"the most specific candidate is L{layer}.{neuron} ({share:.0%} of {relation}'s facts{other})"


def random_neurons(chosen: list[dict[str, Any]], n_neurons: int, seed: str) -> list[tuple[int, int]]:
    """As many neurons as `chosen`, each in the same layer as one of them, never one of them."""
    rng = random.Random(seed)
    taken = {(c["layer"], c["neuron"]) for c in chosen}
    out: list[tuple[int, int]] = []
    for c in chosen:
        while (cand := (c["layer"], rng.randrange(n_neurons))) in taken:
            pass
        taken.add(cand)
        out.append(cand)
    return out


def select_layers(store: Store, conn: Any, ws: Workset, relation: str, spec: EraseSpec) -> list[dict[str, Any]]:
    """Every layer in range with the relation's attribution mass, the largest first (the layer floor
    that depends on the model's depth is applied once it is loaded, by `top_layers`)."""
    params = {"run_id": ws.run.id, "relation_id": relation, "top_k": 100_000, "min_layer": spec.min_layer or 0}
    rows = run_query(store, "relation-layers", {**params, "max_layer": spec.max_layer}, via="native", conn=conn)
    return [dict(zip(rows.columns, r)) for r in rows.rows]


def top_layers(layers: list[dict[str, Any]], spec: EraseSpec, n_layers: int, relation: str) -> list[dict[str, Any]]:
    """`spec.layers` of the `select_layers` rows at or above the floor, the most attribution first;
    with `spec.last_layer` the last layer in range leads whatever its rank. Attribution alone is not
    enough: on SmolLM2 it ranked P937's layers 28, 20, 21, and the erase there moved held-out P937
    facts +3.6 % where 28, 29, 20 moved them +6,267 % (BENCHMARKS.md): a later layer restores what
    an earlier one loses, and nothing comes after the last."""
    floor, last = spec.layer_floor(n_layers), min(spec.max_layer, n_layers - 1)
    ranked = [row for row in layers if row["layer"] >= floor]
    if not ranked:
        raise EditError(f"{relation} has no stored attribution in layers {floor}..{last}")
    if spec.last_layer:
        lead = next((row for row in ranked if row["layer"] == last), {"layer": last, "mass": 0.0, "share": 0.0})
        ranked = [lead] + [row for row in ranked if row is not lead]
    return ranked[: spec.layers]


def random_layers(chosen: list[int], n_layers: int, floor: int, seed: str) -> list[int]:
    """As many other layers as `chosen`, at or above `floor` where there are enough of them."""
    pool = [layer for layer in range(floor, n_layers) if layer not in chosen]
    if len(pool) < len(chosen):
        pool = [layer for layer in range(n_layers) if layer not in chosen]
    return sorted(random.Random(seed).sample(pool, min(len(chosen), len(pool))))


def preserved(store: Store, conn: Any, ws: Workset, relation: str, spec: EraseSpec) -> list[Fact]:
    """The other relations' facts an erase preserves: any the model's runs scored, not only this
    run's (none when the spec preserves nothing)."""
    if not spec.preserving:
        return []
    return preserved_facts(conn, store.backend, ws.run.model_id, relation, spec.preserve_facts)


class LayerForm:
    """The `lsq` form: least-squares erase of whole layers on the current weights (the working copy)."""

    def __init__(self, lm: LoadedModel, spec: EraseSpec, directions: torch.Tensor, keys: list, preserve: list) -> None:
        self.lm, self.spec, self.directions, self.key_items, self.preserve_items = lm, spec, directions, keys, preserve

    def slots(self, layers: list[int]) -> list[Slot]:
        """Each layer's output projection changed by `forms.lsq_erase`, weighed against (covariance)
        or kept out of (nullspace) the activations of other relations' prompts; every changed slot
        recorded."""
        keys = forms.answer_keys(self.lm.adapter, self.key_items, layers)
        how = self.spec.preservation
        moments = (
            forms.activation_moments(self.lm.adapter, self.preserve_items, layers, answer_only=how == "covariance")
            if self.spec.preserving
            else {}
        )
        out = []
        for layer in layers:
            slots = self.lm.adapter.value_slots(layer)  # [N, hidden]
            keep: dict[str, Any] = {}
            if how == "nullspace":
                keep["projector"] = forms.nullspace_projector(*moments[layer], energy=self.spec.energy)[0]
            elif how == "covariance":
                n_keys = len(keys[layer])
                keep["preserved"] = forms.preservation_moment(*moments[layer], n_keys, self.spec.preserve_weight)
            dw = forms.lsq_erase(slots.T, keys[layer], self.directions, self.spec.strength, **keep)
            out += layer_change(self.lm, layer, dict(enumerate(dw.T)), None)
        if not out:
            raise EditError("the edit changes no slot (the null-space projection left nothing: lower --energy)")
        return out


class SlotForm:
    """Turns chosen neurons into edited slots on the current weights (the working copy)."""

    def __init__(self, lm: LoadedModel, spec: EraseSpec, directions: torch.Tensor, preserve_items: list) -> None:
        self.lm, self.spec, self.directions, self.preserve_items = lm, spec, directions, preserve_items
        self.fill = (
            self._fill_vector().cpu() if spec.form in ("zero", "unk") or spec.form.startswith("token:") else None
        )
        self._moments: dict[int, tuple[torch.Tensor, int]] = {}

    def _fill_vector(self) -> torch.Tensor:
        emb = self.lm.adapter.unembedding().detach()
        if self.spec.form == "zero":
            return torch.zeros(emb.shape[1], dtype=emb.dtype)
        if self.spec.form == "unk":
            unk = getattr(self.lm.tokenizer, "unk_token_id", None)
            if unk is None:
                raise EditError(f"the tokenizer of {self.lm.name!r} has no unknown token; use --form zero or token:T")
            return emb[unk].clone()
        return emb[token_id(self.lm, self.spec.form[6:], "value")].clone()

    def new_values(self, v: torch.Tensor) -> torch.Tensor:
        if self.fill is not None:
            return forms.fill(v, self.fill)
        if self.spec.form.startswith("damp:"):
            return forms.damp(v, float(self.spec.form[5:]))
        return forms.project_out(v, self.directions, self.spec.ridge)

    def slots(self, neurons: list[tuple[int, int]]) -> list[Slot]:
        """Each layer's chosen slots in this form; with preservation, the layer's change restricted to
        the null space of the preserved activations (every slot of an edited layer may then change;
        all are recorded, so rollback stays exact)."""
        by_layer: dict[int, list[int]] = {}
        for layer, neuron in neurons:
            by_layer.setdefault(layer, []).append(neuron)
        missing = [layer for layer in by_layer if layer not in self._moments]
        if self.spec.preserving and missing:  # the control is layer-matched: same moments
            self._moments.update(forms.activation_moments(self.lm.adapter, self.preserve_items, missing))
        out = []
        for layer, idx in sorted(by_layer.items()):
            v = read_slots(self.lm.adapter, layer, idx)
            delta = dict(zip(idx, self.new_values(v).double() - v.double()))
            projector = None
            if self.spec.preserving:
                projector = forms.nullspace_projector(*self._moments[layer], energy=self.spec.energy)[0]
            out += layer_change(self.lm, layer, delta, projector)
        if not out:
            raise EditError("the edit changes no slot (the null-space projection left nothing: lower --energy)")
        return out


@dataclass
class EraseMaker:
    """An erase ready to be made on the current weights: its form, its targets (neurons, or layers
    for `lsq`) and the control's (as many layer-matched random neurons, or other layers)."""

    form: LayerForm | SlotForm
    chosen: list[dict[str, Any]]
    targets: list
    control_targets: list

    @classmethod
    def of(
        cls,
        lm: LoadedModel,
        ws: Workset,
        relation: str,
        spec: EraseSpec,
        chosen: list[dict[str, Any]],
        keep: list[Fact],
    ) -> EraseMaker:
        """From the selection's rows (`select_neurons` or `select_layers`) and the facts whose
        activations are preserved (`preserved`)."""
        rel_facts = [f for f in ws.facts.values() if f.relation_id == relation]
        directions = lm.adapter.answer_directions(object_candidates(lm, rel_facts))
        preserve = [it for f in keep for it in EvalSet.of(f.id, lm, [f]).items]
        seed = f"{spec.seed}:{relation}:control"
        if not spec.whole_layers:
            targets = [(c["layer"], c["neuron"]) for c in chosen]
            control = random_neurons(chosen, lm.adapter.n_neurons, seed)
            return cls(SlotForm(lm, spec, directions, preserve), chosen, targets, control)
        chosen = top_layers(chosen, spec, lm.adapter.n_layers, relation)
        keys = [it for f in rel_facts for it in EvalSet.of(f.id, lm, [f]).items]
        layers = [c["layer"] for c in chosen]
        control = random_layers(layers, lm.adapter.n_layers, spec.layer_floor(lm.adapter.n_layers), seed)
        return cls(LayerForm(lm, spec, directions, keys, preserve), chosen, layers, control)

    def edit(self) -> list[Slot]:
        return self.form.slots(self.targets)

    def control(self) -> list[Slot]:
        return self.form.slots(self.control_targets)


def erase_relation(
    store: Store, lm: ModelArg, run_name: str | int, relation: str, spec: EraseSpec | None = None
) -> EditRecord:
    """Erase `relation` (see the module docstring); the edit is recorded, applied and reversible."""
    spec = spec or EraseSpec()
    spec.check()
    with store.begin() as conn:
        ws = read_workset(store, run_name, lambda run, facts, neurons: relation, conn=conn)
        if not any(f.relation_id == relation for f in ws.facts.values()):
            raise NotFound(f"unknown relation {relation!r}: no facts of it in run {ws.run.name!r}")
        chosen = (select_layers if spec.whole_layers else select_neurons)(store, conn, ws, relation, spec)
        keep = preserved(store, conn, ws, relation, spec)
    lm = resolve_model(store, lm, ws.run)
    plan = RelationPlan.of(lm, ws.facts, relation, spec.eval_facts, spec.other_facts, f"{spec.seed}")
    made = EraseMaker.of(lm, ws, relation, spec, chosen, keep)
    out = apply_and_measure(
        lm,
        ws,
        lambda _lm: made.edit(),
        plan.measure,
        APPLIED,
        control=(lambda _lm: made.control()) if spec.control else None,
    )
    metrics: dict[str, Any] = {"applied_edits": [e.id for e in ws.stack], **judge(plan, out.before, out.after)}
    if out.control_after is not None:
        metrics["control"] = judge(plan, out.before, out.control_after)
        metrics["control"].pop("others")
    unit = "edited_layers" if spec.whole_layers else "neurons"
    params = {
        **spec.__dict__,
        "preserve": spec.preservation,
        "relation": relation,
        f"n_{unit.removeprefix('edited_')}": len(made.chosen),
        unit: made.chosen,
        f"control_{unit.removeprefix('edited_')}": made.control_targets if spec.control else None,
        "n_slots": len(out.slots),
    }
    return record(store, ws, "erase", relation, params, out, metrics, APPLIED)
