"""Slow, obviously correct Python versions of the named queries, for checking the SQL.

Each function reads the same rows the SQL reads (``AtlasRows``) and builds the expected result with
plain loops and sets: same columns, same order (the queries' ORDER BY written as a sort key).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa

from atlas.db import schema
from atlas.db.store import Store


@dataclass
class AtlasRows:
    kn: list[tuple]  # (run_id, fact_id, layer, neuron, score, n_prompts)
    facts: dict[str, tuple]  # id -> (relation_id, subject, object)
    relations: dict[str, str]  # id -> label
    prompts: dict[int, tuple]  # id -> (fact_id, template)
    scores: list[tuple]  # (run_id, prompt_id, layer, neuron, score)

    @classmethod
    def read(cls, store: Store) -> AtlasRows:
        t = schema
        with store.begin() as conn:
            kn = [
                (r.run_id, r.fact_id, r.layer, r.neuron, _f32(r.score), r.n_prompts)
                for r in conn.execute(sa.select(t.knowledge_neurons))
            ]
            facts = {r.id: (r.relation_id, r.subject, r.object) for r in conn.execute(sa.select(t.facts))}
            relations = {r.id: r.label for r in conn.execute(sa.select(t.relations))}
            prompts = {r.id: (r.fact_id, r.template) for r in conn.execute(sa.select(t.prompts))}
            scores = [
                (r.run_id, r.prompt_id, r.layer, r.neuron, _f32(r.score))
                for r in conn.execute(sa.select(t.prompt_scores))
            ]
        return cls(kn, facts, relations, prompts, scores)

    def neurons(self, run_id: int) -> dict[str, dict[tuple[int, int], float]]:
        """fact -> {(layer, neuron): score} for one run."""
        out: dict[str, dict[tuple[int, int], float]] = defaultdict(dict)
        for run, fact, layer, neuron, score, _ in self.kn:
            if run == run_id:
                out[fact][(layer, neuron)] = score
        return out

    def relation_of(self, fact: str) -> str | None:
        return self.facts[fact][0] if fact in self.facts else None


def _f32(value: float) -> float:
    return float(np.float32(value))


def fact_neurons(a: AtlasRows, run_id: int, fact_id: str) -> list[tuple]:
    count = defaultdict(int)
    for run, _, layer, neuron, _, _ in a.kn:
        if run == run_id:
            count[(layer, neuron)] += 1
    rows = [(l, n, s, p, count[(l, n)]) for run, f, l, n, s, p in a.kn if run == run_id and f == fact_id]
    return sorted(rows, key=lambda r: (-r[2], r[0], r[1]))


def neuron_facts(a: AtlasRows, run_id: int, layer: int, neuron: int) -> list[tuple]:
    rows = []
    for run, f, l, n, s, p in a.kn:
        if run == run_id and (l, n) == (layer, neuron):
            rel, subj, obj = a.facts.get(f, (None, None, None))
            rows.append((f, rel, a.relations.get(rel), subj, obj, s, p))
    return sorted(rows, key=lambda r: (-r[5], r[0]))


def _relation_sets(
    a: AtlasRows, run_id: int
) -> tuple[dict[str, set[str]], dict[tuple[str, tuple[int, int]], list[float]]]:
    """relation -> its facts with neurons; (relation, neuron) -> the scores of its facts."""
    facts_of: dict[str, set[str]] = defaultdict(set)
    per: dict[tuple[str, tuple[int, int]], list[float]] = defaultdict(list)
    for fact, neurons in a.neurons(run_id).items():
        rel = a.relation_of(fact)
        if rel is None:
            continue
        facts_of[rel].add(fact)
        for unit, score in neurons.items():
            per[(rel, unit)].append(score)
    return facts_of, per


def relation_neurons(
    a: AtlasRows, run_id: int, relation_id: str, min_facts: int = 2, min_share: float = 0.0
) -> list[tuple]:
    facts_of, per = _relation_sets(a, run_id)
    n = len(facts_of.get(relation_id, ()))
    rows = [
        (unit[0], unit[1], len(scores), n, len(scores) / n, sum(scores) / len(scores))
        for (rel, unit), scores in per.items()
        if rel == relation_id and len(scores) >= min_facts and len(scores) >= min_share * n
    ]
    return sorted(rows, key=lambda r: (-r[2], -r[5], r[0], r[1]))


def hub_neurons(a: AtlasRows, run_id: int, min_relations: int = 3, min_share: float = 0.1) -> list[tuple]:
    facts_of, per = _relation_sets(a, run_id)
    qualifying: dict[tuple[int, int], list[tuple[str, int]]] = defaultdict(list)
    for (rel, unit), scores in per.items():
        if len(scores) >= min_share * len(facts_of[rel]):
            qualifying[unit].append((rel, len(scores)))
    rows = []
    for unit, rels in qualifying.items():
        if len(rels) >= min_relations:
            total = sum(k for _, k in rels)
            for rel, k in rels:
                rows.append((unit[0], unit[1], len(rels), total, rel, k, len(facts_of[rel]), k / len(facts_of[rel])))
    return sorted(rows, key=lambda r: (-r[2], -r[3], r[0], r[1], -r[5], r[4]))


def _overlap(x: dict, y: dict) -> tuple[int, float, float]:
    shared = x.keys() & y.keys()
    union = x.keys() | y.keys()
    mins = sum(min(x[u], y[u]) for u in shared)
    maxs = sum(max(x.get(u, 0.0), y.get(u, 0.0)) for u in union)
    return len(shared), len(shared) / len(union), mins / maxs


def fact_interference(a: AtlasRows, run_id: int, fact_id: str, min_shared: int = 2) -> list[tuple]:
    neurons = a.neurons(run_id)
    target = neurons.get(fact_id, {})
    rows = []
    for other, theirs in neurons.items():
        if other == fact_id or not target:
            continue
        shared, jac, weighted = _overlap(target, theirs)
        if shared >= min_shared:
            rel, subj, obj = a.facts.get(other, (None, None, None))
            mine = a.relation_of(fact_id)
            same = None if rel is None or mine is None else rel == mine
            rows.append((other, rel, same, subj, obj, shared, len(theirs), jac, weighted))
    return sorted(rows, key=lambda r: (-r[5], -r[7], r[0]))


def interference_pairs(a: AtlasRows, run_id: int, min_shared: int = 2) -> list[tuple]:
    neurons = a.neurons(run_id)
    facts = sorted(neurons)
    rows = []
    for i, fa in enumerate(facts):
        for fb in facts[i + 1 :]:
            shared, jac, weighted = _overlap(neurons[fa], neurons[fb])
            if shared >= max(min_shared, 2):
                rows.append((fa, fb, a.relation_of(fa), a.relation_of(fb), shared, jac, weighted))
    return rows


def relation_overlap(a: AtlasRows, run_id: int, min_facts: int = 2, min_share: float = 0.0) -> list[tuple]:
    facts_of, per = _relation_sets(a, run_id)
    sets: dict[str, set] = {rel: set() for rel in facts_of}
    for (rel, unit), scores in per.items():
        if len(scores) >= min_facts and len(scores) >= min_share * len(facts_of[rel]):
            sets[rel].add(unit)
    rows = []
    for ra in sorted(sets):
        for rb in sorted(sets):
            shared = len(sets[ra] & sets[rb])
            union = len(sets[ra] | sets[rb])
            rows.append((ra, rb, shared, len(sets[ra]), len(sets[rb]), shared / union if union else 0.0))
    return rows


def layer_distribution(a: AtlasRows, run_id: int) -> list[tuple]:
    entries: dict[tuple[str, int], list[tuple[str, int]]] = defaultdict(list)
    total: dict[str, int] = defaultdict(int)
    for fact, neurons in a.neurons(run_id).items():
        rel = a.relation_of(fact)
        if rel is None:
            continue
        for layer, neuron in neurons:
            entries[(rel, layer)].append((fact, neuron))
            total[rel] += 1
    rows = [
        (rel, layer, len(e), len({n for _, n in e}), len({f for f, _ in e}), len(e) / total[rel])
        for (rel, layer), e in entries.items()
    ]
    return sorted(rows)


def run_diff(a: AtlasRows, run_a: int, run_b: int) -> list[tuple]:
    na, nb = a.neurons(run_a), a.neurons(run_b)
    rows = []
    for fact in sorted(na.keys() | nb.keys()):
        x, y = set(na.get(fact, {})), set(nb.get(fact, {}))
        kept, lost, gained = len(x & y), len(x - y), len(y - x)
        rows.append((fact, a.relation_of(fact), len(x), len(y), kept, lost, gained, kept / (kept + lost + gained)))
    return rows


def fact_prompt_scores(a: AtlasRows, run_id: int, fact_id: str, top: int = 20) -> list[tuple]:
    mine = {pid for pid, (f, _) in a.prompts.items() if f == fact_id}
    scores = [(p, l, n, s) for run, p, l, n, s in a.scores if run == run_id and p in mine]
    kn = set(a.neurons(run_id).get(fact_id, {}))
    totals: dict[tuple[int, int], float] = defaultdict(float)
    for _, l, n, s in scores:
        totals[(l, n)] += s
    ranked = sorted(totals, key=lambda u: (-(u in kn), -totals[u], u[0], u[1]))[:top]
    by_cell = {(p, l, n): s for p, l, n, s in scores}
    rows = []
    for p in sorted({p for p, _, _, _ in scores}):
        for rank, (l, n) in enumerate(ranked, start=1):
            rows.append((p, a.prompts[p][1], rank, l, n, (l, n) in kn, by_cell.get((p, l, n))))
    return rows


def assert_rows_match(got: list[tuple], expected: list[tuple], context: str) -> None:
    """Same rows in the same order; floats equal to 1e-8 relative (the SQL rounds to 10 digits)."""
    assert len(got) == len(expected), f"{context}: {len(got)} rows, expected {len(expected)}"
    for i, (g, e) in enumerate(zip(got, expected)):
        assert len(g) == len(e), f"{context} row {i}: {g} vs {e}"
        for gv, ev in zip(g, e):
            if isinstance(ev, float) and gv is not None:
                assert math.isclose(gv, ev, rel_tol=1e-8, abs_tol=1e-12), f"{context} row {i}: {g} != {e}"
            else:
                assert gv == ev, f"{context} row {i}: {g} != {e}"
