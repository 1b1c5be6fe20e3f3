"""Suppress and amplify knowledge neurons and measure P(gold), against two controls.

For each fact with knowledge neurons, the probe scores the fact's causal prompts four times on the
run's BASE weights (applied edits do not matter here: the atlas describes the indexed model):
unchanged, then with activations at the answer position scaled (x0 suppress, x2 amplify) for

* ``knowledge``: the fact's own knowledge neurons;
* ``other_fact``: as many neurons from a fact of ANOTHER relation (its best-scored ones), the
  paper's control;
* ``random``: random neurons matched by layer (one per knowledge neuron, in the same layer,
  never one of the fact's own).

Per-fact means over its prompts go to ``probe_results`` (replacing earlier rows of the same run,
kind and facts, in one transaction); the summary is the paper's relative change of P(gold),
mean delta p / mean p0, per relation and overall.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from atlas.db.neurons import Fact, read_run_atlas
from atlas.db.probes import probe_summary, write_probe
from atlas.db.runs import Run
from atlas.db.store import Store
from atlas.errors import InputError, NotFound
from atlas.jobs import metrics as m
from atlas.jobs.evaluate import EvalSet
from atlas.jobs.weights import ModelArg, check_weights, resolve_model
from atlas.model.interventions import ScaleNeurons
from atlas.model.scoring import score

KINDS = {"suppress": 0.0, "amplify": 2.0}
NEURON_SETS = ("knowledge", "other_fact", "random")


@dataclass(frozen=True)
class SummaryRow:
    """Relative change of P(gold) for one relation (or ``ALL``) and one neuron set."""

    relation_id: str
    neurons: str
    n_facts: int
    mean_neurons: float
    mean_p_before: float
    mean_p_after: float
    relative_change: float | None


def control_neurons(
    fact_id: str,
    own: list[tuple[int, int, float]],
    facts: dict[str, Fact],
    neurons: dict[str, list[tuple[int, int, float]]],
    n_neurons: int,
    rng: random.Random,
) -> dict[str, list[tuple[int, int]]]:
    """The three neuron sets of one fact (see the module docstring)."""
    relation = facts[fact_id].relation_id
    others = sorted(f for f in neurons if f in facts and facts[f].relation_id != relation)
    k = len(own)
    chosen: list[tuple[int, int]] = []
    if others:
        big = [f for f in others if len(neurons[f]) >= k] or others
        donor = rng.choice(big)
        chosen = [(l, n) for l, n, _ in neurons[donor][:k]]
    own_set = {(l, n) for l, n, _ in own}
    matched = []
    for layer, _, _ in own:
        while True:
            cand = (layer, rng.randrange(n_neurons))
            if cand not in own_set and cand not in matched:
                matched.append(cand)
                break
    return {"knowledge": [(l, n) for l, n, _ in own], "other_fact": chosen, "random": matched}


def probe(
    store: Store,
    lm: ModelArg,
    run_name: str | int,
    kind: str,
    relation: str | None = None,
    seed: int = 0,
    on_fact: Callable[[], None] | None = None,
) -> list[SummaryRow]:
    """Run the probe `kind` (suppress|amplify) over the run's facts; store and summarise it."""
    if kind not in KINDS:
        raise InputError(f"unknown probe {kind!r}: use suppress or amplify")
    run, facts, neurons = read_run_atlas(store, run_name)
    if relation is not None and not any(f.relation_id == relation for f in facts.values()):
        raise NotFound(f"unknown relation {relation!r} in run {run.name!r}")
    lm = resolve_model(store, lm, run)
    check_weights(lm, run)
    rng = random.Random(seed)
    rows: dict[str, list] = defaultdict(list)
    for fact in facts.values():
        if fact.id in neurons and (relation is None or fact.relation_id == relation):
            _probe_fact(lm, run, fact, facts, neurons, kind, rng, rows)
            if on_fact:
                on_fact()
    write_probe(store, run.id, kind, rows)
    return summary(store, run.name, kind, relation)


def _probe_fact(
    lm,
    run: Run,
    fact: Fact,
    facts: dict[str, Fact],
    neurons: dict,
    kind: str,
    rng: random.Random,
    rows: dict[str, list],
) -> None:
    """Score one fact's prompts unchanged and with each neuron set scaled; append its rows."""
    items = EvalSet.of(fact.id, lm, [fact]).items
    if not items:
        return
    base = score(lm.model, lm.adapter, items)
    p0 = sum(s.p_gold for s in base) / len(base)
    sets = control_neurons(fact.id, neurons[fact.id], facts, neurons, lm.adapter.n_neurons, rng)
    for name in NEURON_SETS:
        if not sets[name]:
            continue
        after = score(lm.model, lm.adapter, items, ScaleNeurons(tuple(sets[name]), KINDS[kind]))
        for col, val in (
            ("run_id", run.id),
            ("fact_id", fact.id),
            ("kind", kind),
            ("neurons", name),
            ("n_neurons", len(sets[name])),
            ("p_before", p0),
            ("p_after", sum(s.p_gold for s in after) / len(after)),
        ):
            rows[col].append(val)


def count_facts(store: Store, run_name: str | int, relation: str | None = None) -> int:
    """How many facts a probe would visit (for progress bars)."""
    _, facts, neurons = read_run_atlas(store, run_name)
    return sum(1 for f in facts.values() if f.id in neurons and (relation is None or f.relation_id == relation))


def summary(store: Store, run_name: str | int, kind: str, relation: str | None = None) -> list[SummaryRow]:
    """The per-relation and overall table of the stored probe results of `kind`."""
    rows = [r for r in probe_summary(store, run_name, kind) if relation is None or r.relation_id == relation]
    out = [_row(r.relation_id, r.neurons, [(r.n_facts, r.mean_p_before, r.mean_p_after, r.mean_neurons)]) for r in rows]
    for name in NEURON_SETS:
        parts = [(r.n_facts, r.mean_p_before, r.mean_p_after, r.mean_neurons) for r in rows if r.neurons == name]
        if parts:
            out.append(_row("ALL", name, parts))
    return out


def _row(relation: str, name: str, parts: list[tuple[int, float, float, float]]) -> SummaryRow:
    """Pool per-relation means weighted by their fact counts (= the mean over all facts)."""
    n = sum(int(p[0]) for p in parts)
    pb = sum(p[0] * p[1] for p in parts) / n
    pa = sum(p[0] * p[2] for p in parts) / n
    nn = sum(p[0] * p[3] for p in parts) / n
    return SummaryRow(relation, name, n, nn, pb, pa, m.relative_change([pb], [pa]))
