"""Probe results in the database: per run, fact, kind (suppress | amplify) and neuron set, mean
P(gold) before and after. Torch-free."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from atlas.db.runs import resolve_run
from atlas.db.schema import probe_results
from atlas.db.sqlfile import sql_text
from atlas.db.store import Store


def write_probe(store: Store, run_id: int, kind: str, rows: Mapping[str, Sequence[Any]]) -> None:
    """Replace the probe rows of the run, kind and facts in `rows` (column-shaped), in one transaction."""
    with store.begin() as conn:
        done = sorted(set(rows.get("fact_id", [])))
        if done:
            conn.execute(
                probe_results.delete().where(
                    probe_results.c.run_id == run_id, probe_results.c.kind == kind, probe_results.c.fact_id.in_(done)
                )
            )
        store.bulk_insert(conn, probe_results, rows)


def probe_summary(store: Store, run: str | int, kind: str) -> list[sa.Row]:
    """Per relation and neuron set: facts probed, mean P(gold) before and after, mean neurons."""
    with store.begin() as conn:
        run_id = resolve_run(conn, run).id
        return conn.execute(sql_text("probe_summary", store.backend), {"run_id": run_id, "kind": kind}).all()
