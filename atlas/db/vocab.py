"""The neuron vocabulary cache (`neuron_tokens`): read a run's neurons, write their top tokens.

The projection depends on the weights only, so rows are keyed by model; writing a neuron's rows
replaces what was there (one transaction), so a rerun after a changed ``k`` leaves no stale ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from atlas.db.schema import neuron_tokens
from atlas.db.sqlfile import sql_text
from atlas.db.store import Store


def run_neuron_coords(store: Store, run_id: int) -> list[tuple[int, int]]:
    """Every (layer, neuron) that is a knowledge neuron of some fact of the run."""
    with store.begin() as conn:
        return [
            (int(r.layer), int(r.neuron))
            for r in conn.execute(sql_text("run_neuron_coords", store.backend), {"run_id": run_id})
        ]


def write_tokens(store: Store, model_id: int, rows: Sequence[dict[str, Any]]) -> int:
    """Store ``rows`` (layer, neuron, rank, token_id, token, logit) for ``model_id``, replacing
    the earlier rows of the same neurons."""
    by_layer: dict[int, set[int]] = {}
    for r in rows:
        by_layer.setdefault(r["layer"], set()).add(r["neuron"])
    with store.begin() as conn:
        for layer, neurons in sorted(by_layer.items()):  # one statement per layer, not per neuron
            conn.execute(
                sa.delete(neuron_tokens).where(
                    neuron_tokens.c.model_id == model_id,
                    neuron_tokens.c.layer == layer,
                    neuron_tokens.c.neuron.in_(sorted(neurons)),
                )
            )
        columns = {c: [r[c] for r in rows] for c in ("layer", "neuron", "rank", "token_id", "token", "logit")}
        return store.bulk_insert(conn, neuron_tokens, {"model_id": [model_id] * len(rows), **columns})
