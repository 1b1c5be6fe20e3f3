"""The work queue of an indexing run: batches of facts claimed under leases.

Why leases: on PostgreSQL any number of worker processes, on any number of machines, index one
run together. A worker claims a batch (``FOR UPDATE SKIP LOCKED``: concurrent claimers never get
the same row), which holds it for ``lease_s`` seconds. If the worker dies, the lease runs out and
the batch becomes claimable again, so another worker redoes it. A worker may only mark a batch
done while it still holds the lease (the results and the mark go in one transaction, see
`atlas.db.runs.write_batch`), so a slow worker that lost its lease cannot clobber the redo.

On DuckDB one process holds the file; the same statements run there (minus the row locks).
This module knows nothing of torch.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from atlas.db.schema import work_items
from atlas.db.sqlfile import sql_text
from atlas.db.store import Store

DEFAULT_LEASE_S = 120  # a live worker renews its lease every third of this


class LeaseLost(RuntimeError):
    """Our lease on a work item expired and another worker took it over; our results are dropped."""


@dataclass(frozen=True)
class WorkItem:
    """One batch of facts of one relation."""

    run_id: int
    item_id: int
    relation_id: str
    fact_ids: tuple[str, ...]
    attempts: int


@dataclass(frozen=True)
class RelationProgress:
    relation_id: str
    n_items: int
    n_done: int
    finalized: bool

    @property
    def complete(self) -> bool:
        return self.n_done == self.n_items


def default_owner() -> str:
    """A lease owner id unique across machines and restarts: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def batches(facts: list[tuple[str, str]], per_item: int) -> list[tuple[str, list[str]]]:
    """Split (relation_id, fact_id) pairs, sorted by relation, into items of <= per_item facts.

    An item never spans two relations: a relation is finalised once all its items are done.
    """
    out: list[tuple[str, list[str]]] = []
    for relation_id, fact_id in facts:
        if not out or out[-1][0] != relation_id or len(out[-1][1]) >= per_item:
            out.append((relation_id, []))
        out[-1][1].append(fact_id)
    return out


def create_items(store: Store, conn: Connection, run_id: int, items: list[tuple[str, list[str]]]) -> int:
    """Insert the run's work items (all pending) inside the caller's transaction."""
    return store.bulk_insert(
        conn,
        work_items,
        {
            "run_id": [run_id] * len(items),
            "item_id": list(range(len(items))),
            "relation_id": [r for r, _ in items],
            "fact_ids": [json.dumps(f) for _, f in items],
            "status": ["pending"] * len(items),
            "attempts": [0] * len(items),
        },
    )


class WorkQueue:
    """Claims, completes and releases the items of one run for one owner."""

    def __init__(self, store: Store, run_id: int, owner: str | None = None, lease_s: int = DEFAULT_LEASE_S) -> None:
        self.store = store
        self.run_id = run_id
        self.owner = owner or default_owner()
        self.lease_s = lease_s

    def claim(self) -> WorkItem | None:
        """The next pending (or lease-expired) item, now leased to this owner; None when none is left."""
        with self.store.begin() as conn:
            row = conn.execute(
                sql_text("claim_work_item", self.store.backend),
                {"run_id": self.run_id, "owner": self.owner, "lease_s": self.lease_s},
            ).first()
        if row is None:
            return None
        return WorkItem(
            self.run_id, int(row.item_id), row.relation_id, tuple(json.loads(row.fact_ids)), int(row.attempts)
        )

    def complete(self, conn: Connection, item: WorkItem) -> bool:
        """Mark ``item`` done inside ``conn``'s transaction; False when the lease is no longer ours."""
        res = conn.execute(
            sql_text("complete_work_item", self.store.backend),
            {"run_id": self.run_id, "item_id": item.item_id, "owner": self.owner},
        )
        return res.first() is not None  # RETURNING, not rowcount: DuckDB reports no rowcount

    def renew(self, item: WorkItem) -> bool:
        with self.store.begin() as conn:
            res = conn.execute(
                sql_text("renew_lease", self.store.backend),
                {"run_id": self.run_id, "item_id": item.item_id, "owner": self.owner, "lease_s": self.lease_s},
            )
            return res.first() is not None

    def release(self, item: WorkItem) -> None:
        with self.store.begin() as conn:
            conn.execute(
                sql_text("release_work_item", self.store.backend),
                {"run_id": self.run_id, "item_id": item.item_id, "owner": self.owner},
            )

    def reset_claims(self) -> None:
        """DuckDB only: claims left by a dead writer process become pending (see reset_claims.sql)."""
        if self.store.backend != "duckdb":
            raise RuntimeError("reset_claims is for DuckDB files, where one process writes; PostgreSQL leases expire")
        with self.store.begin() as conn:
            conn.execute(sql_text("reset_claims", self.store.backend), {"run_id": self.run_id})

    def remaining(self) -> int:
        """Items not yet done (pending, or claimed by someone)."""
        with self.store.begin() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(work_items)
                    .where(work_items.c.run_id == self.run_id, work_items.c.status != "done")
                ).scalar_one()
            )

    def progress(self) -> list[RelationProgress]:
        """Items done per relation, and which relations are finalised."""
        with self.store.begin() as conn:
            rows = conn.execute(sql_text("relation_progress", self.store.backend), {"run_id": self.run_id}).all()
        return [RelationProgress(r.relation_id, int(r.n_items), int(r.n_done), bool(r.finalized)) for r in rows]

    def counts(self) -> dict[str, int]:
        """Items per status (pending, claimed, done)."""
        with self.store.begin() as conn:
            rows = conn.execute(
                sa.select(work_items.c.status, sa.func.count())
                .where(work_items.c.run_id == self.run_id)
                .group_by(work_items.c.status)
            ).all()
        return {status: int(n) for status, n in rows}
