"""Database helpers for tests: a whole-database snapshot (equal snapshots = an unchanged database)."""

from __future__ import annotations

import sqlalchemy as sa

from atlas.db.schema import metadata
from atlas.db.store import Store


def snapshot(store: Store) -> dict[str, list[tuple]]:
    """Every row of every table, sorted: equal snapshots mean an unchanged database."""
    out = {}
    with store.begin() as conn:
        for table in metadata.sorted_tables:
            rows = conn.execute(sa.select(table)).all()
            out[table.name] = sorted((tuple(r) for r in rows), key=repr)
    return out
