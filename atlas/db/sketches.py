"""A run's gradient sketches (migration 0007), read back layer by layer for audits. Torch-free: the
bytes go to `atlas.jobs.predict`, which unpacks them (`indexer.attribution.sketch`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import sqlalchemy as sa

from atlas.db.schema import prompt_sketches
from atlas.db.sqlfile import sql_text
from atlas.db.store import Store

CHUNK = 4096  # prompts per batch handed to the caller: a few tens of MB of sketches


@dataclass(frozen=True)
class SketchRows:
    """One batch of a layer's sketches: per prompt its id, fact, unedited P(gold) and packed sketch."""

    prompt_ids: list[int]
    fact_ids: list[str]
    p_gold: list[float]
    blobs: list[bytes]


def has_sketches(store: Store, run_id: int) -> bool:
    with store.begin() as conn:
        first = conn.execute(sa.select(prompt_sketches.c.run_id).where(prompt_sketches.c.run_id == run_id).limit(1))
        return first.first() is not None


def layer_sketches(store: Store, run_id: int, layer: int) -> Iterator[SketchRows]:
    """The layer's sketches of every ok prompt of the run, `CHUNK` prompts at a time (one read
    transaction; the caller only unpacks and multiplies, it runs no model meanwhile)."""
    with store.begin() as conn:
        result = conn.execute(sql_text("layer_sketches", store.backend), {"run_id": run_id, "layer": layer})
        for rows in result.partitions(CHUNK):
            ids, facts, p, blobs = zip(*rows)
            yield SketchRows(list(ids), list(facts), [float(x) for x in p], [bytes(b) for b in blobs])
