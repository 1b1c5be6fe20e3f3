"""A synthetic atlas with realistic neuron sharing, for query tests and benchmarks.

The query layer must be fast and correct on an atlas the size of PARAREL before the real indexer
has produced one. Uniformly random neurons would make every query trivially cheap (facts would
share almost nothing), so sharing is modelled on what indexing BERT produced:

* each relation has its own pool of neurons, mostly in the top layers, with Zipf-like popularity:
  a few relation-level neurons appear in a large part of the relation's facts, most rarely;
* a few hub neurons are relation-level neurons of several relations at once (EleutherAI's BERT
  neurons have one in ~99% of the facts of four relations);
* the rest of a fact's neurons are its own (random over the whole model).

Prompt scores are sparse: each prompt stores ``scores_per_prompt`` (layer, neuron, score) rows,
most of its fact's knowledge neurons among them (strong) plus weaker others.

Everything is written through ``store.bulk_insert`` in one transaction; the function returns the
ids it created.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa

from atlas.cli.progress import progress_bar
from atlas.db import schema
from atlas.db.store import Store

N_LAYERS = 12  # BERT-base shape
N_NEURONS = 3072
LAYER_SCALE = 3.0  # layer l holds a share ~ exp(l / LAYER_SCALE) of the neurons
POOL_SIZE = 300  # neurons in a relation's pool
ZIPF_S = 0.9  # popularity exponent inside a pool
POOL_SHARE = 0.15  # part of a fact's neurons drawn from its relation's pool
N_HUBS = 5
HUB_RELATIONS = (2, 4)  # each hub serves this many relations (inclusive range)
HUB_COVERAGE = (0.1, 0.6)  # share of a served relation's facts that have the hub


@dataclass(frozen=True)
class SyntheticAtlas:
    """What :func:`build_synthetic_atlas` created."""

    model_id: int
    run_id: int
    fact_ids: list[str]
    relation_ids: list[str]
    n_knowledge_neurons: int
    n_prompts: int
    n_prompt_scores: int


def build_synthetic_atlas(
    store: Store,
    n_facts: int = 27_738,
    n_relations: int = 34,
    neurons_per_fact: int = 20,
    prompts: int = 250_000,
    scores_per_prompt: int = 50,
    seed: int = 0,
    run_name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SyntheticAtlas:
    """Write a synthetic model, run, relations, facts, prompts, knowledge neurons and prompt scores.

    ``progress(done, total)`` is called as the prompt scores (most of the work) are written.
    """
    rng = np.random.default_rng(seed)
    rel_ids = [f"S{seed}R{i:02d}" for i in range(n_relations)]
    fact_rel = _fact_relations(rng, n_facts, n_relations)
    fact_ids = [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n_facts)]
    kn_fact, kn_neuron, kn_score = _knowledge_neurons(rng, fact_rel, n_relations, neurons_per_fact)
    prompt_fact = _prompt_facts(rng, n_facts, prompts)
    name = run_name or f"synthetic-{seed}-{n_facts}"
    with store.begin() as conn:
        model_id, run_id = _model_and_run(store, conn, name, seed, n_facts, neurons_per_fact)
        store.bulk_insert(
            conn,
            schema.relations,
            {
                "id": rel_ids,
                "label": [f"synthetic relation {i}" for i in range(n_relations)],
                "type": [("1-1", "N-1", "N-M")[i % 3] for i in range(n_relations)],
            },
        )
        store.bulk_insert(
            conn,
            schema.facts,
            {
                "id": fact_ids,
                "relation_id": [rel_ids[r] for r in fact_rel],
                "subject": [f"subject {i}" for i in range(n_facts)],
                "object": [f"object {i % 997}" for i in range(n_facts)],
                "dataset": ["synthetic"] * n_facts,
            },
        )
        store.bulk_insert(
            conn,
            schema.knowledge_neurons,
            {
                "run_id": np.full(len(kn_fact), run_id, dtype=np.int64),
                "fact_id": [fact_ids[f] for f in kn_fact],
                "layer": (kn_neuron // N_NEURONS).astype(np.int16),
                "neuron": (kn_neuron % N_NEURONS).astype(np.int32),
                "score": kn_score,
                "n_prompts": rng.integers(3, 10, len(kn_fact)).astype(np.int32),
            },
        )
        prompt_ids = _insert_prompts(store, conn, prompt_fact, fact_ids, fact_rel)
        _insert_prompt_outputs(store, conn, rng, run_id, prompt_ids)
        n_scores = _insert_prompt_scores(
            store, conn, rng, run_id, prompt_ids, prompt_fact, kn_fact, kn_neuron, scores_per_prompt, progress
        )
    return SyntheticAtlas(model_id, run_id, fact_ids, rel_ids, len(kn_fact), len(prompt_fact), n_scores)


def _fact_relations(rng: np.random.Generator, n_facts: int, n_relations: int) -> np.ndarray:
    """Relation index per fact; relation sizes vary (PARAREL's range from ~200 to ~1000 facts)."""
    weights = rng.uniform(0.3, 1.7, n_relations)
    first = np.arange(min(n_facts, n_relations))  # every relation gets a fact before any gets two
    rest = rng.choice(n_relations, n_facts - len(first), p=weights / weights.sum())
    return np.sort(np.concatenate([first, rest]))


def _layer_weights() -> np.ndarray:
    """Knowledge neurons sit mostly in the top layers (Dai et al., figure 3)."""
    w = np.exp(np.arange(N_LAYERS) / LAYER_SCALE)
    return w / w.sum()


def _knowledge_neurons(
    rng: np.random.Generator, fact_rel: np.ndarray, n_relations: int, per_fact: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fact index, flat neuron id, score) rows: hubs, then relation-pool neurons, then own ones."""
    space = N_LAYERS * N_NEURONS
    layer_p = _layer_weights()
    pools = [
        rng.choice(N_LAYERS, POOL_SIZE, p=layer_p) * N_NEURONS + rng.choice(N_NEURONS, POOL_SIZE, replace=False)
        for _ in range(n_relations)
    ]
    pool_p = 1.0 / np.arange(1, POOL_SIZE + 1) ** ZIPF_S
    pool_p /= pool_p.sum()
    hubs = rng.choice(N_LAYERS, N_HUBS, p=layer_p) * N_NEURONS + rng.choice(N_NEURONS, N_HUBS, replace=False)
    hub_cover: dict[int, list[tuple[int, float]]] = {r: [] for r in range(n_relations)}
    for hub in hubs:
        served = min(n_relations, int(rng.integers(HUB_RELATIONS[0], HUB_RELATIONS[1] + 1)))
        for r in rng.choice(n_relations, served, replace=False):
            hub_cover[int(r)].append((int(hub), rng.uniform(*HUB_COVERAGE)))
    facts, neurons = [], []
    sizes = np.clip(rng.normal(per_fact, per_fact / 5, len(fact_rel)).round().astype(int), 1, None)
    for f, (r, size) in enumerate(zip(fact_rel, sizes)):
        shared = [h for h, cover in hub_cover[int(r)] if rng.random() < cover]
        n_pool = min(POOL_SIZE, int(rng.binomial(size, POOL_SHARE)))
        shared.extend(int(n) for n in pools[r][rng.choice(POOL_SIZE, n_pool, replace=False, p=pool_p)])
        chosen = list(dict.fromkeys(shared))
        own = rng.choice(N_LAYERS, size, p=layer_p) * N_NEURONS + rng.integers(0, N_NEURONS, size)
        taken = set(chosen)
        chosen.extend([n for n in dict.fromkeys(int(n) for n in own) if n not in taken][: max(0, size - len(chosen))])
        facts.extend([f] * len(chosen))
        neurons.extend(chosen)
    kn_fact = np.asarray(facts, dtype=np.int64)
    kn_neuron = np.asarray(neurons, dtype=np.int64) % space
    kn_score = rng.uniform(0.2, 1.0, len(kn_fact)).astype(np.float32)
    return kn_fact, kn_neuron, kn_score


def _prompt_facts(rng: np.random.Generator, n_facts: int, n_prompts: int) -> np.ndarray:
    """Fact index per prompt: every fact gets ``n_prompts // n_facts`` paraphrases, some one more."""
    base = np.repeat(np.arange(n_facts), n_prompts // n_facts)
    extra = rng.choice(n_facts, n_prompts - len(base), replace=False) if n_prompts > len(base) else []
    return np.sort(np.concatenate([base, np.asarray(extra, dtype=np.int64)])).astype(np.int64)


def _model_and_run(
    store: Store, conn: sa.Connection, name: str, seed: int, n_facts: int, per_fact: int
) -> tuple[int, int]:
    params = json.dumps(
        {"synthetic": True, "seed": seed, "n_facts": n_facts, "neurons_per_fact": per_fact}, sort_keys=True
    )
    sha = hashlib.sha256(name.encode()).hexdigest()
    store.bulk_insert(
        conn,
        schema.models,
        {
            "name": [f"synthetic-bert-{name}"],
            "source": ["bench/synthetic_atlas.py"],
            "architecture": ["BertForMaskedLM"],
            "n_layers": [N_LAYERS],
            "n_neurons": [N_NEURONS],
            "sha256": [sha],
        },
    )
    model_id = conn.execute(sa.select(schema.models.c.id).where(schema.models.c.sha256 == sha)).scalar_one()
    store.bulk_insert(
        conn,
        schema.runs,
        {
            "name": [name],
            "model_id": [model_id],
            "dataset": ["synthetic"],
            "method": ["ig"],
            "params": [params],
            "params_key": [hashlib.sha256(f"{sha}{params}".encode()).hexdigest()],
            "code_version": ["synthetic"],
            "status": ["done"],
        },
    )
    run_id = conn.execute(sa.select(schema.runs.c.id).where(schema.runs.c.name == name)).scalar_one()
    return model_id, run_id


def _insert_prompts(
    store: Store, conn: sa.Connection, prompt_fact: np.ndarray, fact_ids: list[str], fact_rel: np.ndarray
) -> np.ndarray:
    """Insert the prompts (ids from the sequence) and return the id of each, in ``prompt_fact`` order."""
    first = np.searchsorted(prompt_fact, prompt_fact, side="left")
    k = np.arange(len(prompt_fact)) - first  # paraphrase number within the fact
    templates = [f"[X] paraphrase {j} of relation {fact_rel[f]} is [Y]." for f, j in zip(prompt_fact, k)]
    fids = [fact_ids[f] for f in prompt_fact]
    store.bulk_insert(
        conn,
        schema.prompts,
        {
            "fact_id": fids,
            "template": templates,
            "text": [t.replace("[X]", f"subject {f}") for t, f in zip(templates, prompt_fact)],
            "causal": np.ones(len(fids), dtype=bool),
            "masked": np.ones(len(fids), dtype=bool),
        },
    )
    wanted = set(fact_ids)
    rows = conn.execute(sa.select(schema.prompts.c.id, schema.prompts.c.fact_id, schema.prompts.c.template)).all()
    by_key = {(f, t): i for i, f, t in rows if f in wanted}
    return np.asarray([by_key[(f, t)] for f, t in zip(fids, templates)], dtype=np.int64)


def _insert_prompt_outputs(
    store: Store, conn: sa.Connection, rng: np.random.Generator, run_id: int, prompt_ids: np.ndarray
) -> None:
    """What the indexer stores per prompt besides its scores: every prompt ok, P(gold) spread as a
    small model's (most low, some near 1), its rank and max score."""
    n = len(prompt_ids)
    p_gold = rng.beta(0.4, 2.0, n).astype(np.float32)
    store.bulk_insert(
        conn,
        schema.prompt_outputs,
        {
            "run_id": np.full(n, run_id, dtype=np.int64),
            "prompt_id": prompt_ids,
            "status": ["ok"] * n,
            "skip_reason": [None] * n,
            "p_gold": p_gold,
            "gold_rank": np.maximum(1, (1.0 / np.maximum(p_gold, 1e-3)).astype(np.int32) - 1),
            "max_score": (p_gold * rng.uniform(0.5, 2.0, n)).astype(np.float32),
            "n_answer_tokens": np.ones(n, dtype=np.int32),
        },
    )


def _insert_prompt_scores(
    store: Store,
    conn: sa.Connection,
    rng: np.random.Generator,
    run_id: int,
    prompt_ids: np.ndarray,
    prompt_fact: np.ndarray,
    kn_fact: np.ndarray,
    kn_neuron: np.ndarray,
    per_prompt: int,
    progress: Callable[[int, int], None] | None = None,
    chunk: int = 20_000,
) -> int:
    """Sparse scores: each prompt keeps ~80% of its fact's knowledge neurons (strong) plus weaker others."""
    order = np.argsort(kn_fact, kind="stable")
    starts = np.searchsorted(kn_fact[order], np.arange(kn_fact.max() + 2 if len(kn_fact) else 1))
    width = int(np.diff(starts).max()) if len(kn_fact) else 0
    space = N_LAYERS * N_NEURONS
    written = 0
    for lo in range(0, len(prompt_ids), chunk):
        pf = prompt_fact[lo : lo + chunk]
        n = len(pf)
        own = np.full((n, width), -1, dtype=np.int64)
        for j in range(width):  # column j holds each fact's j-th knowledge neuron, if any
            idx = starts[pf] + j
            has = idx < starts[pf + 1]
            own[has, j] = kn_neuron[order[idx[has]]]
        own[rng.random(own.shape) > 0.8] = -1
        cand = np.concatenate([own, rng.integers(0, space, (n, per_prompt + 10))], axis=1)
        strong = np.concatenate([np.ones_like(own, dtype=bool), np.zeros((n, per_prompt + 10), dtype=bool)], axis=1)
        keep = _first_unique(cand) & (cand >= 0)
        keep &= np.cumsum(keep, axis=1) <= per_prompt
        rows, cols = np.nonzero(keep)
        flat = cand[rows, cols]
        score = np.where(strong[rows, cols], rng.uniform(0.2, 1.0, len(rows)), rng.uniform(0.1, 0.3, len(rows)))
        written += store.bulk_insert(
            conn,
            schema.prompt_scores,
            {
                "run_id": np.full(len(rows), run_id, dtype=np.int64),
                "prompt_id": prompt_ids[lo + rows],
                "layer": (flat // N_NEURONS).astype(np.int16),
                "neuron": (flat % N_NEURONS).astype(np.int32),
                "score": score.astype(np.float32),
            },
        )
        if progress is not None:
            progress(min(lo + chunk, len(prompt_ids)), len(prompt_ids))
    return written


def _first_unique(matrix: np.ndarray) -> np.ndarray:
    """True where a value occurs for the first time in its row (earlier columns win)."""
    order = np.argsort(matrix, axis=1, kind="stable")
    ranked = np.take_along_axis(matrix, order, axis=1)
    first_sorted = np.ones_like(ranked, dtype=bool)
    first_sorted[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    out = np.empty_like(first_sorted)
    np.put_along_axis(out, order, first_sorted, axis=1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--facts", type=int, default=27_738)
    parser.add_argument("--prompts", type=int, default=250_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task("prompt scores", total=args.prompts, unit="prompts")
        atlas = build_synthetic_atlas(
            Store(args.db),
            n_facts=args.facts,
            prompts=args.prompts,
            seed=args.seed,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    print(
        f"run {atlas.run_id}: {len(atlas.fact_ids)} facts, {atlas.n_knowledge_neurons} knowledge neurons, "
        f"{atlas.n_prompt_scores} prompt scores in {time.perf_counter() - started:.1f} s"
    )


if __name__ == "__main__":
    main()
