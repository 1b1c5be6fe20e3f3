"""The models table: which weights an atlas was built from.

A model is identified by the SHA-256 of its weights (a fine-tuned or edited copy is another
model), and named for people. Torch-free: callers pass the facts about the model in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from atlas.db.schema import models
from atlas.db.sqlfile import sql_text
from atlas.db.store import Store
from atlas.errors import ConflictError


@dataclass(frozen=True)
class ModelInfo:
    name: str
    source: str
    architecture: str
    n_layers: int
    n_neurons: int
    sha256: str


@dataclass(frozen=True)
class ModelRow(ModelInfo):
    """A registered model: its facts plus the id runs refer to."""

    id: int


def register_model(store: Store, info: ModelInfo) -> tuple[ModelRow, bool]:
    """The model's row, inserted if its weights are new; returns (row, created).

    The same weights loaded from two places are one model. A name already taken by other weights
    gets the weight hash's first 8 hex digits appended, so names stay unique and readable.
    Idempotent under concurrency: ``INSERT ... ON CONFLICT DO NOTHING``, then read the row back
    (processes registering the same weights at once all get the one row; none fails).
    """
    with store.begin() as conn:
        existing = _by_sha(conn, info.sha256)
        if existing is not None:
            return existing, False
        for name in (info.name, f"{info.name}-{info.sha256[:8]}"):
            new_id = conn.execute(sql_text("insert_model", store.backend), {**asdict(info), "name": name}).scalar()
            row = _by_sha(conn, info.sha256)
            if row is not None:  # ours, or another process's that committed first: the same weights
                return row, new_id is not None
    raise ConflictError(f"model names {info.name!r} and {info.name}-{info.sha256[:8]} are taken by other weights")


def _by_sha(conn: Connection, sha256: str) -> ModelRow | None:
    row = conn.execute(sa.select(models).where(models.c.sha256 == sha256)).first()
    return _row(row) if row is not None else None


def list_models(store: Store) -> list[ModelRow]:
    with store.begin() as conn:
        return [_row(r) for r in conn.execute(sa.select(models).order_by(models.c.id))]


def _row(r: sa.Row) -> ModelRow:
    return ModelRow(
        name=r.name,
        source=r.source,
        architecture=r.architecture,
        n_layers=int(r.n_layers),
        n_neurons=int(r.n_neurons),
        sha256=r.sha256,
        id=int(r.id),
    )
