"""An indexing run's results in the database: prompt outputs and kept scores written per work item,
each relation's knowledge neurons, and what refining reads back. Torch-free.

Atomicity is what makes SIGKILL harmless: an item's prompt outputs and scores are written in the
SAME transaction that marks its work item done, and a relation's knowledge neurons are replaced
(delete + insert) in one transaction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import duckdb
import numpy as np
import psycopg
import sqlalchemy as sa

from atlas.db.schema import (
    facts,
    knowledge_neurons,
    prompt_outputs,
    prompt_scores,
    prompt_sketches,
    prompts,
    relation_thresholds,
    work_items,
)
from atlas.db.sqlfile import sql_text
from atlas.db.store import Store
from atlas.db.workqueue import LeaseLost, WorkItem, WorkQueue


@dataclass
class PromptOutput:
    """What the indexer learned about one prompt (status ``ok`` or ``skipped`` with a reason)."""

    prompt_id: int
    status: str
    skip_reason: str | None = None
    p_gold: float | None = None
    gold_rank: int | None = None
    max_score: float | None = None
    n_answer_tokens: int | None = None


@dataclass
class BatchResult:
    """The results of one work item, ready to be written in one transaction."""

    item: WorkItem
    outputs: list[PromptOutput]
    # sparse prompt-level scores, column-shaped
    score_prompt: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    score_layer: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    score_neuron: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    score_value: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    # gradient sketches (runs with a sketch rank), one row per prompt and layer
    sketch_prompt: list[int] = field(default_factory=list)
    sketch_layer: list[int] = field(default_factory=list)
    sketch_blob: list[bytes] = field(default_factory=list)
    model_s: float = 0.0


@dataclass
class CoarseTally:
    """One fact's coarse neurons over its ok prompts: per neuron, in how many prompts it is coarse
    and the sum of its scores there (column-shaped), and how many ok prompts the fact has."""

    n_prompts: int
    layers: np.ndarray
    neurons: np.ndarray
    counts: np.ndarray
    sums: np.ndarray


def item_prompts(store: Store, fact_ids: tuple[str, ...], causal: bool) -> list[sa.Row]:
    """(prompt_id, fact_id, text, object) of the usable prompts of a batch of facts."""
    with store.begin() as conn:
        return conn.execute(
            sql_text("item_prompts", store.backend), {"fact_ids": list(fact_ids), "causal": causal}
        ).all()


def write_batch(store: Store, queue: WorkQueue, result: BatchResult) -> None:
    """Write the item's rows and mark it done, all in one transaction; `LeaseLost` (nothing written)
    when the lease is no longer ours.

    The done mark comes FIRST: it only succeeds while this worker still holds the lease, and it
    locks the item's row (PostgreSQL), so a worker that was paused past its lease and whose item
    was redone by another one stops here instead of colliding with the redo's rows. Nothing to
    delete first: an item's rows are only ever written by the transaction that marks it done, and
    a done item is never claimed again. Should rows be there anyway, the primary key of
    `prompt_outputs` refuses them and the result is dropped the same way."""
    run_id = queue.run_id
    lost = LeaseLost(f"lease on item {result.item.item_id} of run {run_id} was lost; another worker redoes it")
    try:
        with store.begin() as conn:
            if not queue.complete(conn, result.item):
                raise lost
            store.insert_records(conn, prompt_outputs, result.outputs, run_id=run_id)
            store.bulk_insert(
                conn,
                prompt_scores,
                {
                    "run_id": np.full(len(result.score_prompt), run_id, np.int64),
                    "prompt_id": result.score_prompt,
                    "layer": result.score_layer,
                    "neuron": result.score_neuron,
                    "score": result.score_value,
                },
            )
            store.bulk_insert(
                conn,
                prompt_sketches,
                {
                    "run_id": [run_id] * len(result.sketch_prompt),
                    "prompt_id": result.sketch_prompt,
                    "layer": result.sketch_layer,
                    "sketch": result.sketch_blob,
                },
            )
    except sa.exc.IntegrityError as exc:
        raise lost from exc
    except (psycopg.errors.UniqueViolation, duckdb.ConstraintException) as exc:  # raised by COPY / Arrow inserts
        raise lost from exc


def relation_facts(store: Store, run_id: int, relation_id: str) -> list[str]:
    """The facts of a relation that the run indexes (from its work items), sorted."""
    with store.begin() as conn:
        docs = (
            conn.execute(
                sa.select(work_items.c.fact_ids).where(
                    work_items.c.run_id == run_id, work_items.c.relation_id == relation_id
                )
            )
            .scalars()
            .all()
        )
    return sorted(f for d in docs for f in json.loads(d))


def relation_tallies(store: Store, run_id: int, relation_id: str, t: float) -> dict[str, CoarseTally]:
    """Per fact of the relation with ok prompts: its coarse tally at threshold ``t`` (see
    relation_coarse_tally.sql). Aggregated by the database: a relation's coarse scores run to
    millions of rows when attributions are diffuse, its tally to one row per fact and neuron."""
    params = {"run_id": run_id, "relation_id": relation_id}
    with store.begin() as conn:
        ok = conn.execute(sql_text("relation_ok_prompts", store.backend), params).all()
        rows = conn.execute(sql_text("relation_coarse_tally", store.backend), {**params, "t": t}).all()
    cols = list(zip(*rows)) or [(), (), (), (), ()]
    fact = np.array(cols[0], dtype=object)
    layer, neuron, count = (np.array(c, np.int64) for c in cols[1:4])
    total = np.array(cols[4], np.float64)
    starts = np.flatnonzero(np.r_[True, fact[1:] != fact[:-1]]) if len(fact) else np.zeros(0, np.int64)
    bounds = dict(
        zip(fact[starts].tolist(), zip(starts.tolist(), np.r_[starts[1:], len(fact)].tolist()))
    )  # rows come by fact
    out = {}
    for fact_id, n in ok:
        a, b = bounds.get(fact_id, (0, 0))
        out[fact_id] = CoarseTally(int(n), layer[a:b], neuron[a:b], count[a:b], total[a:b])
    return out


@dataclass
class RelationNeurons:
    """A relation's refined knowledge neurons (column-shaped) and its adapted threshold."""

    relation_id: str
    fact_id: list[str]
    layer: list[int]
    neuron: list[int]
    score: list[float]
    n_prompts: list[int]
    p: float
    mean_neurons: float
    n_facts: int


def write_relation(store: Store, run_id: int, rel: RelationNeurons) -> None:
    """Replace the relation's knowledge neurons and threshold row in one transaction (idempotent)."""
    with store.begin() as conn:
        if store.backend == "postgresql":
            conn.execute(
                sql_text("lock_relation_items", store.backend), {"run_id": run_id, "relation_id": rel.relation_id}
            )
        rel_facts = sa.select(facts.c.id).where(facts.c.relation_id == rel.relation_id)
        conn.execute(
            knowledge_neurons.delete().where(
                knowledge_neurons.c.run_id == run_id, knowledge_neurons.c.fact_id.in_(rel_facts)
            )
        )
        conn.execute(
            relation_thresholds.delete().where(
                relation_thresholds.c.run_id == run_id, relation_thresholds.c.relation_id == rel.relation_id
            )
        )
        n = len(rel.fact_id)
        store.bulk_insert(
            conn,
            knowledge_neurons,
            {
                "run_id": [run_id] * n,
                "fact_id": rel.fact_id,
                "layer": rel.layer,
                "neuron": rel.neuron,
                "score": rel.score,
                "n_prompts": rel.n_prompts,
            },
        )
        conn.execute(
            relation_thresholds.insert().values(
                run_id=run_id, relation_id=rel.relation_id, p=rel.p, mean_neurons=rel.mean_neurons, n_facts=rel.n_facts
            )
        )


def run_prompt_total(store: Store, run_id: int, causal: bool) -> int:
    """How many prompts the run attributes in all (for the progress bar's total)."""
    with store.begin() as conn:
        docs = conn.execute(sa.select(work_items.c.fact_ids).where(work_items.c.run_id == run_id)).scalars().all()
        ids = [f for d in docs for f in json.loads(d)]
        usable = prompts.c.causal if causal else prompts.c.masked
        total = 0
        for i in range(0, len(ids), 10_000):
            total += conn.execute(
                sa.select(sa.func.count())
                .select_from(prompts)
                .where(prompts.c.fact_id.in_(ids[i : i + 10_000]), usable)
            ).scalar_one()
    return int(total)


def run_prompts_done(store: Store, run_id: int) -> int:
    with store.begin() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).select_from(prompt_outputs).where(prompt_outputs.c.run_id == run_id)
            ).scalar_one()
        )


@dataclass
class FactKnowledge:
    """How well a run's model knows one fact, over its ok prompts."""

    n_ok: int
    mean_p_gold: float
    n_top1: int  # prompts whose top-1 answer is the gold one
    best_rank: int

    @property
    def known(self) -> bool:
        """Ranked first on most of its prompts."""
        return 2 * self.n_top1 > self.n_ok


def fact_knowledge(store: Store, run_id: int) -> dict[str, FactKnowledge]:
    """`FactKnowledge` of every fact of the run with ok prompts."""
    with store.begin() as conn:
        rows = conn.execute(sql_text("fact_knowledge", store.backend), {"run_id": run_id}).all()
    return {r.fact_id: FactKnowledge(int(r.n_ok), float(r.mean_p_gold), int(r.n_top1), int(r.best_rank)) for r in rows}
