"""Facts in the store: loading datasets idempotently, listing and showing them.

A load is one transaction. The dataset is bulk-copied into temporary staging tables (COPY on
PostgreSQL, Arrow on DuckDB), checked against what the database already holds, and only the rows
that are missing are inserted with ``INSERT ... SELECT ... WHERE NOT EXISTS``: loading the same data
twice adds nothing, and any conflict (a fact id whose relation, subject or object differ from the
stored one) aborts the load before it changes anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from atlas.db.datasets import Dataset, Fact, Relation, describe
from atlas.db.schema import dataset_facts, facts, prompts, relations
from atlas.db.store import Store
from atlas.errors import InputError, NotFound

LOAD_STEPS = ("relations", "stage facts", "check facts", "insert facts", "stage prompts", "insert prompts")

_stage = sa.MetaData()
stage_facts = sa.Table(
    "_atlas_stage_facts",
    _stage,
    sa.Column("ord", sa.Integer),
    sa.Column("id", sa.Text),
    sa.Column("relation_id", sa.Text),
    sa.Column("subject", sa.Text),
    sa.Column("object", sa.Text),
    prefixes=["TEMPORARY"],
)
stage_prompts = sa.Table(
    "_atlas_stage_prompts",
    _stage,
    sa.Column("ord", sa.Integer),
    sa.Column("fact_id", sa.Text),
    sa.Column("template", sa.Text),
    sa.Column("text", sa.Text),
    sa.Column("causal", sa.Boolean),
    sa.Column("masked", sa.Boolean),
    prefixes=["TEMPORARY"],
)


@dataclass(frozen=True)
class LoadReport:
    dataset: str
    n_facts: int
    n_prompts: int
    new_facts: int
    new_prompts: int
    new_relations: int
    new_memberships: int  # facts that joined the dataset (possibly loaded before by another one)

    def __str__(self) -> str:
        return (
            f"{self.dataset}: {self.n_facts:,} facts, {self.n_prompts:,} prompts "
            f"({self.new_facts:,} new facts, {self.new_prompts:,} new prompts)"
        )


@dataclass(frozen=True)
class FactRow:
    id: str
    relation_id: str
    subject: str
    object: str
    dataset: str  # the dataset that first loaded it
    n_prompts: int
    n_causal: int


@dataclass(frozen=True)
class PromptRow:
    id: int
    template: str
    text: str
    causal: bool
    masked: bool


@dataclass(frozen=True)
class FactDetail:
    fact: FactRow
    relation: Relation
    datasets: list[str]
    prompts: list[PromptRow]


def load_dataset(store: Store, dataset: Dataset, on_step: Callable[[str], None] | None = None) -> LoadReport:
    """Add ``dataset``'s relations, facts, memberships and prompts that the database lacks (one transaction)."""
    step = on_step or (lambda _name: None)
    with store.begin() as conn:
        new_relations = _add_relations(conn, dataset.relations)
        step(LOAD_STEPS[0])
        stage_facts.create(conn)
        store.bulk_insert(conn, stage_facts, _fact_columns(dataset.facts))
        step(LOAD_STEPS[1])
        _refuse_conflicts(conn, dataset.facts)
        step(LOAD_STEPS[2])
        new_facts = _insert_new_facts(conn, dataset.name)
        new_memberships = _insert_new_memberships(conn, dataset.name)
        step(LOAD_STEPS[3])
        stage_prompts.create(conn)
        store.bulk_insert(conn, stage_prompts, _prompt_columns(dataset.facts))
        step(LOAD_STEPS[4])
        new_prompts = _insert_new_prompts(conn)
        stage_prompts.drop(conn)
        stage_facts.drop(conn)
        step(LOAD_STEPS[5])
    return LoadReport(
        dataset.name, len(dataset.facts), dataset.n_prompts, new_facts, new_prompts, new_relations, new_memberships
    )


def _add_relations(conn: Connection, wanted: list[Relation]) -> int:
    """Insert the relations the database lacks; one stored with another label or type is an error."""
    stored = {
        r.id: Relation(r.id, r.label, r.type)
        for r in conn.execute(sa.select(relations).where(relations.c.id.in_([r.id for r in wanted])))
    }
    for rel in wanted:
        if rel.id in stored and stored[rel.id] != rel:
            old = stored[rel.id]
            where = f"{rel.where}: " if rel.where else ""
            raise InputError(
                f"{where}relation {rel.id} is {rel.label!r} ({rel.type}) here but {old.label!r} ({old.type}) "
                "in the database"
            )
    missing = [{"id": r.id, "label": r.label, "type": r.type} for r in wanted if r.id not in stored]
    if missing:
        conn.execute(relations.insert(), missing)
    return len(missing)


def _fact_columns(items: list[Fact]) -> dict[str, list]:
    return {
        "ord": list(range(len(items))),
        "id": [f.id for f in items],
        "relation_id": [f.relation_id for f in items],
        "subject": [f.subject for f in items],
        "object": [f.object for f in items],
    }


def _prompt_columns(items: list[Fact]) -> dict[str, list]:
    rows = [(f.id, p) for f in items for p in f.prompts]
    return {
        "ord": list(range(len(rows))),
        "fact_id": [fid for fid, _ in rows],
        "template": [p.template for _, p in rows],
        "text": [p.text for _, p in rows],
        "causal": [p.causal for _, p in rows],
        "masked": [p.masked for _, p in rows],
    }


def _refuse_conflicts(conn: Connection, items: list[Fact]) -> None:
    """A staged fact whose id is stored with another relation, subject or object aborts the load."""
    s, f = stage_facts.c, facts.c
    differs = sa.or_(f.relation_id != s.relation_id, f.subject != s.subject, f.object != s.object)
    row = conn.execute(
        sa.select(s.id, f.relation_id, f.subject, f.object)
        .join_from(stage_facts, facts, f.id == s.id)
        .where(differs)
        .order_by(s.ord)
        .limit(1)
    ).first()
    if row is None:
        return
    new = next(x for x in items if x.id == row.id)
    old = Fact(row.id, row.relation_id, row.subject, row.object, ())
    where = f"{new.where}: " if new.where else ""
    raise InputError(f"{where}fact {new.id} is {describe(new)} but the database has {describe(old)}")


def _insert_new_facts(conn: Connection, dataset: str) -> int:
    s = stage_facts.c
    missing = (
        sa.select(s.id, s.relation_id, s.subject, s.object, sa.literal(dataset))
        .where(~sa.exists().where(facts.c.id == s.id))
        .order_by(s.ord)
    )
    insert = facts.insert().from_select(["id", "relation_id", "subject", "object", "dataset"], missing)
    return len(conn.execute(insert.returning(facts.c.id)).all())


def _insert_new_memberships(conn: Connection, dataset: str) -> int:
    s, d = stage_facts.c, dataset_facts.c
    missing = (
        sa.select(sa.literal(dataset), s.id)
        .where(~sa.exists().where(d.dataset == dataset, d.fact_id == s.id))
        .order_by(s.ord)
    )
    insert = dataset_facts.insert().from_select(["dataset", "fact_id"], missing)
    return len(conn.execute(insert.returning(dataset_facts.c.fact_id)).all())


def _insert_new_prompts(conn: Connection) -> int:
    """Insert the staged prompts not yet stored, in dataset order (ids come from ``prompts_id_seq``)."""
    s, p = stage_prompts.c, prompts.c
    missing = (
        sa.select(s.fact_id, s.template, s.text, s.causal, s.masked)
        .where(~sa.exists().where(p.fact_id == s.fact_id, p.template == s.template))
        .order_by(s.ord)
    )
    insert = prompts.insert().from_select(["fact_id", "template", "text", "causal", "masked"], missing)
    return len(conn.execute(insert.returning(prompts.c.id)).all())


# ----------------------------------------------------------------------------------------------
# reading


def _fact_rows() -> sa.Select:
    """Facts with their prompt counts (all prompts, and those a left-to-right LM can use)."""
    p = prompts.c
    counts = (
        sa.select(
            p.fact_id,
            sa.func.count().label("n_prompts"),
            sa.func.sum(sa.case((p.causal, 1), else_=0)).label("n_causal"),
        )
        .group_by(p.fact_id)
        .subquery()
    )
    return sa.select(
        facts.c.id,
        facts.c.relation_id,
        facts.c.subject,
        facts.c.object,
        facts.c.dataset,
        sa.func.coalesce(counts.c.n_prompts, 0),
        sa.func.coalesce(counts.c.n_causal, 0),
    ).join_from(facts, counts, counts.c.fact_id == facts.c.id, isouter=True)


def list_facts(
    store: Store, relation: str | None = None, dataset: str | None = None, limit: int | None = 20
) -> list[FactRow]:
    """Facts ordered by relation and subject, optionally of one relation and/or one dataset's members."""
    query = _fact_rows().order_by(facts.c.relation_id, facts.c.subject, facts.c.id).limit(limit)
    if relation is not None:
        query = query.where(facts.c.relation_id == relation)
    if dataset is not None:
        query = query.where(
            sa.exists().where(dataset_facts.c.fact_id == facts.c.id, dataset_facts.c.dataset == dataset)
        )
    with store.begin() as conn:
        return [FactRow(*row) for row in conn.execute(query)]


def show_fact(store: Store, fact_id: str) -> FactDetail:
    """One fact with its relation, the datasets it belongs to and its prompts (by id)."""
    with store.begin() as conn:
        row = conn.execute(_fact_rows().where(facts.c.id == fact_id)).first()
        if row is None:
            raise NotFound(f"no fact with id {fact_id!r}")
        fact = FactRow(*row)
        rel = conn.execute(sa.select(relations).where(relations.c.id == fact.relation_id)).first()
        member_of = (
            conn.execute(
                sa.select(dataset_facts.c.dataset)
                .where(dataset_facts.c.fact_id == fact_id)
                .order_by(dataset_facts.c.dataset)
            )
            .scalars()
            .all()
        )
        rows = conn.execute(
            sa.select(prompts.c.id, prompts.c.template, prompts.c.text, prompts.c.causal, prompts.c.masked)
            .where(prompts.c.fact_id == fact_id)
            .order_by(prompts.c.id)
        ).all()
    relation = Relation(rel.id, rel.label, rel.type) if rel else Relation(fact.relation_id, "?", "?")
    return FactDetail(fact, relation, list(member_of), [PromptRow(*r) for r in rows])
