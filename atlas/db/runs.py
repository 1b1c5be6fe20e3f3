"""Indexing runs in the database: create or resume a run, write batch results atomically,
store each relation's knowledge neurons, and report on runs. Torch-free.

A run is identified by its parameters: ``params_key`` is the SHA-256 of the model's weight hash,
the dataset, the fact selection and every parameter that changes results. Running the same
command again therefore finds the unfinished run and resumes it instead of starting over.

Atomicity is what makes SIGKILL harmless: a batch's prompt outputs and scores are written in the
SAME transaction that marks its work item done (after deleting anything an earlier attempt might
have left), and a relation's knowledge neurons are replaced (delete + insert) in one transaction.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import sqlalchemy as sa

from atlas.db.models import ModelInfo, register_model
from atlas.db.schema import (dataset_facts, facts, knowledge_neurons, prompt_outputs, prompt_scores, prompts, relation_thresholds, runs,
                     work_items)
from atlas.db.sqlfile import sql_text
from atlas.db.store import Store
from atlas.db.workqueue import WorkItem, WorkQueue, batches, create_items

# "no limit" per relation; DuckDB turns `ROW_NUMBER() <= n` into a top-n aggregate that refuses n >= 1e6
NO_LIMIT = 999_999


class SelectionError(ValueError):
    """The dataset, relations or limits select nothing to index (the message says why)."""


class RunConflict(ValueError):
    """A run of that name exists with other parameters."""


class LeaseLost(RuntimeError):
    """Our lease on a work item expired and another worker took it over; our results are dropped."""


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a run's results (and so its ``params_key``)."""

    model: ModelInfo  # registered in the models table when the run is created
    dataset: str
    relations: tuple[str, ...] | None  # None: every relation of the dataset
    limit_per_relation: int | None
    causal: bool  # left-to-right model (prompts.causal) or masked LM (prompts.masked)
    params: dict[str, Any]  # attribution and storage parameters (steps, precision, thresholds, ...)
    code_version: str = "0"

    def document(self) -> dict[str, Any]:
        return {
            "model_sha256": self.model.sha256,
            "dataset": self.dataset,
            "selection": {"relations": sorted(self.relations) if self.relations else None,
                          "limit_per_relation": self.limit_per_relation, "causal": self.causal},
            "params": self.params,
        }

    @property
    def params_key(self) -> str:
        return hashlib.sha256(_canonical(self.document()).encode()).hexdigest()


@dataclass
class Run:
    id: int
    name: str
    model_id: int
    dataset: str
    params: dict[str, Any]
    params_key: str
    status: str
    stats: dict[str, Any]
    created_at: datetime
    finished_at: datetime | None


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


def _canonical(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


# --- creating and resuming ---------------------------------------------------------------------

def check_selection(store: Store, dataset: str, relations: tuple[str, ...] | None) -> list[str]:
    """The relations to index; a `SelectionError` for an unknown dataset or a relation it lacks.
    Cheap, so the indexer calls it before spending seconds on loading a model."""
    with store.begin() as conn:
        in_dataset = conn.execute(sql_text("dataset_relations", store.backend), {"dataset": dataset}).scalars().all()
        if not in_dataset:
            loaded = conn.execute(sa.select(dataset_facts.c.dataset).distinct().order_by(dataset_facts.c.dataset)).scalars().all()
            hint = f"loaded datasets: {', '.join(loaded)}" if loaded else "no dataset is loaded"
            raise SelectionError(f"unknown dataset {dataset!r}: {hint} (load one with `atlas facts load`)")
    wanted = list(relations) if relations else list(in_dataset)
    missing = sorted(set(wanted) - set(in_dataset))
    if missing:
        raise SelectionError(f"relation(s) {', '.join(missing)} have no facts in dataset {dataset!r}")
    return wanted


def select_facts(store: Store, dataset: str, relations: tuple[str, ...] | None, limit: int | None,
                 causal: bool) -> list[tuple[str, str]]:
    """(relation_id, fact_id) pairs a run would index; a `SelectionError` when that is nothing."""
    wanted = check_selection(store, dataset, relations)
    with store.begin() as conn:
        rows = conn.execute(sql_text("select_facts", store.backend, ("relations",)), {
            "dataset": dataset, "relations": wanted, "causal": causal,
            "limit_per_relation": NO_LIMIT if limit is None else limit}).all()
    if not rows:
        kind = "left-to-right" if causal else "masked-LM"
        raise SelectionError(f"empty selection: no fact of dataset {dataset!r} in {', '.join(wanted)} has a {kind} prompt"
                             + (f" (limit {limit} per relation)" if limit is not None else ""))
    return [(r.relation_id, r.fact_id) for r in rows]


def open_run(store: Store, spec: RunSpec, name: str | None = None, facts_per_item: int = 8) -> tuple[Run, bool]:
    """The run for ``spec``: the existing one with the same parameters, or a new one with its work
    items (in one transaction). Returns (run, created)."""
    key = spec.params_key
    existing = find_run(store, name=name) if name else find_run(store, params_key=key)
    if existing is not None:
        if existing.params_key != key:
            raise RunConflict(f"run {existing.name!r} exists with other parameters; choose another --run name")
        return existing, False
    selected = select_facts(store, spec.dataset, spec.relations, spec.limit_per_relation, spec.causal)  # may refuse: nothing written yet
    model, _ = register_model(store, spec.model)
    items = batches(selected, facts_per_item)
    name = name or f"{model.name}-{spec.dataset}-{key[:8]}"
    try:
        with store.begin() as conn:
            run_id = conn.execute(runs.insert().values(
                name=name, model_id=model.id, dataset=spec.dataset, method="ig",
                params=_canonical(spec.document()), params_key=key, code_version=spec.code_version,
                status="running", stats="{}").returning(runs.c.id)).scalar_one()
            create_items(store, conn, run_id, items)
    except sa.exc.IntegrityError:  # another process created it a moment ago
        existing = find_run(store, name=name)
        if existing is None or existing.params_key != key:
            raise
        return existing, False
    return get_run(store, run_id), True


def find_run(store: Store, *, name: str | None = None, params_key: str | None = None) -> Run | None:
    q = sa.select(runs)
    q = q.where(runs.c.name == name) if name is not None else q.where(runs.c.params_key == params_key)
    with store.begin() as conn:
        row = conn.execute(q.order_by(runs.c.id.desc()).limit(1)).first()
    return _run(row) if row else None


def get_run(store: Store, run: int | str) -> Run:
    """A run by id or name; ``LookupError`` naming the value otherwise."""
    col = runs.c.id if isinstance(run, int) or str(run).isdigit() else runs.c.name
    value = int(run) if col is runs.c.id else run
    with store.begin() as conn:
        row = conn.execute(sa.select(runs).where(col == value)).first()
    if row is None:
        raise LookupError(f"no run {run!r} (see `atlas runs list`)")
    return _run(row)


def list_runs(store: Store) -> list[Run]:
    with store.begin() as conn:
        return [_run(r) for r in conn.execute(sa.select(runs).order_by(runs.c.id))]


def _run(r: sa.Row) -> Run:
    return Run(int(r.id), r.name, int(r.model_id), r.dataset, json.loads(r.params), r.params_key, r.status,
               json.loads(r.stats or "{}"), r.created_at, r.finished_at)


# --- batches -----------------------------------------------------------------------------------

def item_prompts(store: Store, fact_ids: tuple[str, ...], causal: bool) -> list[sa.Row]:
    """(prompt_id, fact_id, text, object) of the usable prompts of a batch of facts."""
    with store.begin() as conn:
        return conn.execute(sql_text("item_prompts", store.backend, ("fact_ids",)),
                            {"fact_ids": list(fact_ids), "causal": causal}).all()


def write_batch(store: Store, queue: WorkQueue, result: BatchResult) -> None:
    """Write the item's rows and mark it done, all in one transaction (`LeaseLost` rolls back).

    Nothing to delete first: an item's rows are only ever written by the transaction that marks
    it done, and a done item is never claimed again, so an item being written has no rows yet
    (and the primary key of `prompt_outputs` would refuse a second copy). Deleting by prompt id
    anyway cost a scan of the growing score table per item."""
    run_id = queue.run_id
    ids = [o.prompt_id for o in result.outputs]
    with store.begin() as conn:
        store.bulk_insert(conn, prompt_outputs, {
            "run_id": [run_id] * len(ids),
            "prompt_id": ids,
            "status": [o.status for o in result.outputs],
            "skip_reason": [o.skip_reason for o in result.outputs],
            "p_gold": [o.p_gold for o in result.outputs],
            "gold_rank": [o.gold_rank for o in result.outputs],
            "max_score": [o.max_score for o in result.outputs],
            "n_answer_tokens": [o.n_answer_tokens for o in result.outputs],
        })
        store.bulk_insert(conn, prompt_scores, {
            "run_id": np.full(len(result.score_prompt), run_id, np.int64),
            "prompt_id": result.score_prompt,
            "layer": result.score_layer,
            "neuron": result.score_neuron,
            "score": result.score_value,
        })
        if not queue.complete(conn, result.item):
            raise LeaseLost(f"lease on item {result.item.item_id} of run {run_id} was lost; another worker redoes it")


# --- relations ---------------------------------------------------------------------------------

def relation_facts(store: Store, run_id: int, relation_id: str) -> list[str]:
    """The facts of a relation that the run indexes (from its work items), sorted."""
    with store.begin() as conn:
        docs = conn.execute(sa.select(work_items.c.fact_ids).where(work_items.c.run_id == run_id,
                                                                   work_items.c.relation_id == relation_id)).scalars().all()
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
    bounds = dict(zip(fact[starts].tolist(), zip(starts.tolist(), np.r_[starts[1:], len(fact)].tolist())))  # rows come by fact
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
            conn.execute(sql_text("lock_relation_items", store.backend), {"run_id": run_id, "relation_id": rel.relation_id})
        rel_facts = sa.select(facts.c.id).where(facts.c.relation_id == rel.relation_id)
        conn.execute(knowledge_neurons.delete().where(knowledge_neurons.c.run_id == run_id,
                                                      knowledge_neurons.c.fact_id.in_(rel_facts)))
        conn.execute(relation_thresholds.delete().where(relation_thresholds.c.run_id == run_id,
                                                        relation_thresholds.c.relation_id == rel.relation_id))
        n = len(rel.fact_id)
        store.bulk_insert(conn, knowledge_neurons, {
            "run_id": [run_id] * n, "fact_id": rel.fact_id, "layer": rel.layer, "neuron": rel.neuron,
            "score": rel.score, "n_prompts": rel.n_prompts})
        conn.execute(relation_thresholds.insert().values(run_id=run_id, relation_id=rel.relation_id, p=rel.p,
                                                         mean_neurons=rel.mean_neurons, n_facts=rel.n_facts))


# --- status and stats --------------------------------------------------------------------------

def add_stats(store: Store, run_id: int, delta: dict[str, float]) -> None:
    """Add timing/count figures to ``runs.stats`` (row-locked on PostgreSQL: workers add concurrently)."""
    with store.begin() as conn:
        q = sa.select(runs.c.stats).where(runs.c.id == run_id)
        if store.backend == "postgresql":
            q = q.with_for_update()
        stats = json.loads(conn.execute(q).scalar_one() or "{}")
        for k, v in delta.items():
            stats[k] = stats.get(k, 0) + v
        conn.execute(runs.update().where(runs.c.id == run_id).values(stats=_canonical(stats)))


def mark_done(store: Store, run_id: int) -> None:
    with store.begin() as conn:
        conn.execute(runs.update().where(runs.c.id == run_id, runs.c.status != "done")
                     .values(status="done", finished_at=sa.func.now()))


@dataclass
class RunCounts:
    facts: int
    prompts: int
    ok: int
    skipped: int
    skip_reasons: dict[str, int]
    neurons: int
    facts_with_neurons: int
    relations: int
    relations_done: int
    items: int
    items_done: int


def run_counts(store: Store, run_id: int) -> RunCounts:
    """Counts for summaries and `atlas runs show`, computed from the rows themselves."""
    with store.begin() as conn:
        docs = conn.execute(sa.select(work_items.c.fact_ids, work_items.c.status).where(work_items.c.run_id == run_id)).all()
        statuses = conn.execute(sa.select(prompt_outputs.c.status, prompt_outputs.c.skip_reason, sa.func.count())
                                .where(prompt_outputs.c.run_id == run_id)
                                .group_by(prompt_outputs.c.status, prompt_outputs.c.skip_reason)).all()
        kn = conn.execute(sa.select(sa.func.count(), sa.func.count(sa.distinct(knowledge_neurons.c.fact_id)))
                          .where(knowledge_neurons.c.run_id == run_id)).one()
        rels = conn.execute(sa.select(sa.func.count()).select_from(relation_thresholds)
                            .where(relation_thresholds.c.run_id == run_id)).scalar_one()
        n_rel = conn.execute(sa.select(sa.func.count(sa.distinct(work_items.c.relation_id)))
                             .where(work_items.c.run_id == run_id)).scalar_one()
    reasons: dict[str, int] = {}
    ok = skipped = 0
    for status, reason, n in statuses:
        if status == "ok":
            ok += int(n)
        else:
            skipped += int(n)
            reasons[reason or "?"] = reasons.get(reason or "?", 0) + int(n)
    return RunCounts(
        facts=sum(len(json.loads(d.fact_ids)) for d in docs), prompts=ok + skipped, ok=ok, skipped=skipped,
        skip_reasons=reasons, neurons=int(kn[0]), facts_with_neurons=int(kn[1]), relations=int(n_rel),
        relations_done=int(rels), items=len(docs), items_done=sum(d.status == "done" for d in docs))


def run_prompt_total(store: Store, run_id: int, causal: bool) -> int:
    """How many prompts the run attributes in all (for the progress bar's total)."""
    with store.begin() as conn:
        docs = conn.execute(sa.select(work_items.c.fact_ids).where(work_items.c.run_id == run_id)).scalars().all()
        ids = [f for d in docs for f in json.loads(d)]
        usable = prompts.c.causal if causal else prompts.c.masked
        total = 0
        for i in range(0, len(ids), 10_000):
            total += conn.execute(sa.select(sa.func.count()).select_from(prompts)
                                  .where(prompts.c.fact_id.in_(ids[i:i + 10_000]), usable)).scalar_one()
    return int(total)


def run_prompts_done(store: Store, run_id: int) -> int:
    with store.begin() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(prompt_outputs)
                                .where(prompt_outputs.c.run_id == run_id)).scalar_one())
