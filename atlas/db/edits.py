"""Edits in the database: one row per edit (what, why, its weights' hashes before and after, its
metrics) and the exact bytes of every value slot it changed, before and after. Torch-free: slots
travel as bytes with their dtype's name (`atlas.model.slots` turns them into tensors).

The rows are the only state of an edited model: the weights of any state are the base weights
with the applied edits' slots replayed oldest first, which makes a rollback one UPDATE.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from atlas.db.schema import edit_slots, edits
from atlas.db.sqlfile import sql_text
from atlas.db.store import Store
from atlas.errors import ConflictError, NotFound

APPLIED, ROLLED_BACK, TRIAL = "applied", "rolled_back", "trial"


@dataclass(frozen=True)
class SlotBytes:
    """One changed value slot: its exact bytes before and after, and their dtype (e.g. float32)."""

    layer: int
    neuron: int
    original: bytes
    edited: bytes
    dtype: str
    factor: float | None = None  # (v . dv) / |v|^2, the first-order share of the slot written away


@dataclass
class EditRows:
    """An edit with its slots, as stored (for replay, rollback and export)."""

    id: int
    status: str
    sha256_before: str
    sha256_after: str
    slots: list[SlotBytes] = field(default_factory=list)


@dataclass(frozen=True)
class EditRecord:
    """One edit as `atlas edit list` and `show` present it."""

    id: int
    run: str
    kind: str
    target: str
    status: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    sha256_before: str
    sha256_after: str
    n_slots: int
    created_at: datetime | None
    rolled_back_at: datetime | None


@dataclass(frozen=True)
class NewEdit:
    """An edit to record: what it is, the weights' hashes around it, its slots and metrics."""

    run_id: int
    model_id: int
    kind: str
    target: str
    params: dict[str, Any]
    status: str
    sha256_before: str
    sha256_after: str
    slots: Sequence[SlotBytes]
    metrics: dict[str, Any]


def model_edits(conn: Connection, backend: str, model_id: int) -> list[EditRows]:
    """Every edit of the model with its slots, oldest first."""
    out: dict[int, EditRows] = {}
    for r in conn.execute(sql_text("model_edits", backend), {"model_id": model_id}):
        e = out.setdefault(int(r.id), EditRows(int(r.id), r.status, r.sha256_before, r.sha256_after))
        e.slots.append(SlotBytes(int(r.layer), int(r.neuron), bytes(r.original), bytes(r.edited), r.dtype))
    return list(out.values())


def applied_stack(conn: Connection, backend: str, model_id: int) -> list[EditRows]:
    """The model's applied edits, oldest first: replayed on the base weights they give its state."""
    return [e for e in model_edits(conn, backend, model_id) if e.status == APPLIED]


def check_stack(conn: Connection, backend: str, model_id: int, expected: Sequence[EditRows]) -> None:
    """Refuse to write when the applied edits changed since they were read (another process edited
    the model while this one computed): the computed slots would start from stale weights."""
    now = [e.id for e in applied_stack(conn, backend, model_id)]
    if now != [e.id for e in expected]:
        raise ConflictError(
            f"the applied edits of model {model_id} changed while this edit was computed "
            f"({[e.id for e in expected]} -> {now}); run the command again"
        )


def insert_edit(store: Store, conn: Connection, edit: NewEdit) -> int:
    """Record `edit` and its slots inside the caller's transaction; returns its id."""
    edit_id = conn.execute(
        edits.insert()
        .values(
            run_id=edit.run_id,
            model_id=edit.model_id,
            kind=edit.kind,
            target=edit.target,
            params=json.dumps(edit.params, sort_keys=True),
            status=edit.status,
            sha256_before=edit.sha256_before,
            sha256_after=edit.sha256_after,
            metrics=json.dumps(edit.metrics, sort_keys=True),
        )
        .returning(edits.c.id)
    ).scalar_one()
    store.insert_records(conn, edit_slots, edit.slots, edit_id=edit_id)
    return int(edit_id)


def edit_row(conn: Connection, edit_id: int) -> sa.Row:
    """The `edits` row of `edit_id`; `NotFound` otherwise."""
    row = conn.execute(sa.select(edits).where(edits.c.id == edit_id)).first()
    if row is None:
        raise NotFound(f"unknown edit {edit_id}")
    return row


def mark_rolled_back(conn: Connection, edit_id: int) -> None:
    conn.execute(
        edits.update().where(edits.c.id == edit_id).values(status=ROLLED_BACK, rolled_back_at=datetime.now(UTC))
    )


def set_metrics(conn: Connection, edit_id: int, metrics: dict[str, Any]) -> None:
    conn.execute(edits.update().where(edits.c.id == edit_id).values(metrics=json.dumps(metrics, sort_keys=True)))


def list_edits(store: Store, run: str | None = None) -> list[EditRecord]:
    """Edits, newest first, optionally of one run (name or id)."""
    with store.begin() as conn:
        rows = conn.execute(sql_text("edit_list", store.backend), {"run": run or ""}).all()
    return [
        EditRecord(
            int(r.id),
            r.run_name,
            r.kind,
            r.target,
            r.status,
            json.loads(r.params),
            json.loads(r.metrics),
            r.sha256_before,
            r.sha256_after,
            int(r.n_slots),
            r.created_at,
            r.rolled_back_at,
        )
        for r in rows
    ]


def get_edit(store: Store, edit_id: int) -> EditRecord:
    found = [e for e in list_edits(store) if e.id == edit_id]
    if not found:
        raise NotFound(f"unknown edit {edit_id}")
    return found[0]
