"""The models table: which weights an atlas was built from.

A model is identified by the SHA-256 of its weights (a fine-tuned or edited copy is another
model), and named for people. Torch-free: callers pass the facts about the model in.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from atlas.db.schema import models
from atlas.db.store import Store


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
    """
    with store.begin() as conn:
        existing = conn.execute(sa.select(models).where(models.c.sha256 == info.sha256)).first()
        if existing is not None:
            return _row(existing), False
        name = info.name
        if conn.execute(sa.select(models.c.id).where(models.c.name == name)).first() is not None:
            name = f"{info.name}-{info.sha256[:8]}"
        conn.execute(
            models.insert().values(
                name=name,
                source=info.source,
                architecture=info.architecture,
                n_layers=info.n_layers,
                n_neurons=info.n_neurons,
                sha256=info.sha256,
            )
        )
        row = conn.execute(sa.select(models).where(models.c.sha256 == info.sha256)).one()
    return _row(row), True


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
