"""Injections in the database: one row per `atlas inject` (run, layers, method, FFN width and weight
sha256 before and after, its stored audit), its facts, and the exact bytes of every slot pair's key
and value with its gate. Torch-free: vectors travel as bytes with their dtype's name.

As with edits (`atlas.db.edits`), the rows are the only state of an injected model: the run's base
weights, the applied edits replayed, then every applied injection's pairs widened in, oldest first
(`atlas.jobs.inject_weights`). Applied injections form a stack per model; a rollback is one UPDATE
of the newest.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from atlas.db.schema import injection_facts, injection_slots, injections
from atlas.db.sqlfile import sql_text
from atlas.db.store import Store
from atlas.errors import ConflictError, NotFound

APPLIED, ROLLED_BACK = "applied", "rolled_back"


@dataclass(frozen=True)
class PairBytes:
    """One slot pair (neurons `neuron`, `neuron + 1` of `layer`) of the fact at `position`."""

    layer: int
    neuron: int
    position: int
    key: bytes
    value: bytes
    dtype: str
    threshold: float
    slope: float
    sharpness: float


@dataclass(frozen=True)
class InjectedFact:
    """A fact an injection added: its NEW object, training and held-out prompts, how it was built."""

    position: int
    fact_id: str
    relation_id: str
    subject: str
    object: str
    prompts: list[str]
    heldout: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    injection_id: int = 0
    status: str = APPLIED


@dataclass
class InjectionRows:
    """An injection with its pairs, as stored (for replay, rollback and export)."""

    id: int
    status: str
    width_before: int
    width_after: int
    sha256_before: str
    sha256_after: str
    pairs: list[PairBytes] = field(default_factory=list)


@dataclass(frozen=True)
class NewInjection:
    run_id: int
    model_id: int
    layers: list[int]
    params: dict[str, Any]
    width_before: int
    width_after: int
    sha256_before: str
    sha256_after: str
    facts: Sequence[InjectedFact]
    pairs: Sequence[PairBytes]


@dataclass(frozen=True)
class InjectionRecord:
    """One injection as `atlas inject show` and the report present it."""

    id: int
    run: str
    run_id: int
    model_id: int
    status: str
    layers: list[int]
    params: dict[str, Any]
    width_before: int
    width_after: int
    sha256_before: str
    sha256_after: str
    audit: dict[str, Any]
    created_at: datetime | None
    rolled_back_at: datetime | None
    n_facts: int
    facts: list[InjectedFact] = field(default_factory=list)


def model_injections(conn: Connection, backend: str, model_id: int) -> list[InjectionRows]:
    """Every injection of the model with its pairs, oldest first."""
    out: dict[int, InjectionRows] = {}
    for r in conn.execute(sql_text("model_injections", backend), {"model_id": model_id}):
        i = out.setdefault(
            int(r.id),
            InjectionRows(
                int(r.id), r.status, int(r.width_before), int(r.width_after), r.sha256_before, r.sha256_after
            ),
        )
        i.pairs.append(
            PairBytes(
                int(r.layer),
                int(r.neuron),
                int(r.position),
                bytes(r.key),
                bytes(r.value),
                r.dtype,
                float(r.threshold),
                float(r.slope),
                float(r.sharpness),
            )
        )
    return list(out.values())


def applied_injections(conn: Connection, backend: str, model_id: int) -> list[InjectionRows]:
    """The model's applied injections, oldest first: widened in, in this order, they give its state."""
    return [i for i in model_injections(conn, backend, model_id) if i.status == APPLIED]


def injected_facts(conn: Connection, backend: str, model_id: int) -> list[InjectedFact]:
    """The facts of every injection of the model (rolled back ones included, with their status)."""
    return [
        InjectedFact(
            int(r.position),
            r.fact_id,
            r.relation_id,
            r.subject,
            r.object,
            json.loads(r.prompts),
            json.loads(r.heldout),
            json.loads(r.info),
            int(r.injection_id),
            r.status,
        )
        for r in conn.execute(sql_text("injected_facts", backend), {"model_id": model_id})
    ]


def check_injections(conn: Connection, backend: str, model_id: int, expected: Sequence[InjectionRows]) -> None:
    """Refuse to write when the applied injections changed since they were read."""
    now = [i.id for i in applied_injections(conn, backend, model_id)]
    if now != [i.id for i in expected]:
        raise ConflictError(
            f"the applied injections of model {model_id} changed while this one was computed "
            f"({[i.id for i in expected]} -> {now}); run the command again"
        )


def default_layer(conn: Connection, backend: str, run_id: int, relation_id: str) -> int | None:
    """The weighted median layer of the relation's knowledge neurons in the run ('' = all relations)."""
    row = conn.execute(
        sql_text("inject_default_layer", backend), {"run_id": run_id, "relation_id": relation_id}
    ).first()
    return None if row is None else int(row.layer)


def insert_injection(store: Store, conn: Connection, new: NewInjection) -> int:
    """Record `new`, its facts and pairs inside the caller's transaction; returns its id."""
    injection_id = int(
        conn.execute(
            injections.insert()
            .values(
                run_id=new.run_id,
                model_id=new.model_id,
                status=APPLIED,
                layers=json.dumps(new.layers),
                params=json.dumps(new.params, sort_keys=True),
                width_before=new.width_before,
                width_after=new.width_after,
                sha256_before=new.sha256_before,
                sha256_after=new.sha256_after,
            )
            .returning(injections.c.id)
        ).scalar_one()
    )
    cols = ("position", "fact_id", "relation_id", "subject", "object")
    facts: dict[str, list] = {c: [getattr(f, c) for f in new.facts] for c in cols}
    facts |= {c: [json.dumps(getattr(f, c)) for f in new.facts] for c in ("prompts", "heldout", "info")}
    facts["injection_id"] = [injection_id] * len(new.facts)
    store.bulk_insert(conn, injection_facts, facts)
    store.insert_records(conn, injection_slots, new.pairs, injection_id=injection_id)
    return injection_id


def injection_row(conn: Connection, injection_id: int) -> sa.Row:
    row = conn.execute(sa.select(injections).where(injections.c.id == injection_id)).first()
    if row is None:
        raise NotFound(f"unknown injection {injection_id}")
    return row


def mark_rolled_back(conn: Connection, injection_id: int) -> None:
    conn.execute(
        injections.update()
        .where(injections.c.id == injection_id)
        .values(status=ROLLED_BACK, rolled_back_at=datetime.now(UTC))
    )


def set_audit(conn: Connection, injection_id: int, audit: dict[str, Any]) -> None:
    conn.execute(
        injections.update().where(injections.c.id == injection_id).values(audit=json.dumps(audit, sort_keys=True))
    )


def list_injections(store: Store, run: str | None = None) -> list[InjectionRecord]:
    """Injections, newest first, optionally of one run (name or id); facts are not read here."""
    with store.begin() as conn:
        rows = conn.execute(sql_text("injection_list", store.backend), {"run": run or ""}).all()
    return [
        InjectionRecord(
            int(r.id),
            r.run_name,
            int(r.run_id),
            int(r.model_id),
            r.status,
            json.loads(r.layers),
            json.loads(r.params),
            int(r.width_before),
            int(r.width_after),
            r.sha256_before,
            r.sha256_after,
            json.loads(r.audit),
            r.created_at,
            r.rolled_back_at,
            int(r.n_facts),
        )
        for r in rows
    ]


def get_injection(store: Store, injection_id: int) -> InjectionRecord:
    """One injection with its facts; `NotFound` otherwise."""
    found = [i for i in list_injections(store) if i.id == injection_id]
    if not found:
        raise NotFound(f"unknown injection {injection_id}")
    with store.begin() as conn:
        facts = [f for f in injected_facts(conn, store.backend, found[0].model_id) if f.injection_id == injection_id]
    found[0].facts.extend(facts)
    return found[0]
