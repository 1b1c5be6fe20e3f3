"""Audit results in the database: per edit and fact, the predicted score and P(gold) before and after.

An audit's rows replace any earlier audit of the same edit, and its summary goes into the edit's
metrics, in one transaction. Torch-free.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from atlas.db.edits import set_metrics
from atlas.db.schema import audit_results
from atlas.db.store import Store

#: the audit's predictors of the change of P(gold): the audit_results column each fills
DP_COLUMNS = {"sketch": "predicted_sketch_dp", "impact": "predicted_dp"}
PREDICTOR_NAMES = {"sketch": "gradient sketches", "impact": "edit-impact", "interference": "edit-interference"}


def predictor_of(sketch_dps: Iterable[float | None]) -> str:
    """The audit's predictor of rows with these sketch predictions: the gradient sketches where
    every row has one (a run indexed with `--sketch-rank`), else edit-impact."""
    dps = list(sketch_dps)
    return "sketch" if dps and all(d is not None for d in dps) else "impact"


@dataclass(frozen=True)
class AuditRow:
    """One audited fact: its role (target | predicted | random), predicted score, P(gold) before and after."""

    fact_id: str
    role: str
    predicted_score: float  # edit-interference: share of the fact's attribution mass on changed slots
    p_before: float
    p_after: float
    predicted_dp: float | None = None  # edit-impact: first-order estimate of the change of P(gold)
    predicted_sketch_dp: float | None = None  # the same from the run's gradient sketches (None: it has none)


def write_audit(store: Store, edit_id: int, rows: list[AuditRow], metrics: dict[str, Any]) -> None:
    """Replace the edit's audit rows and store `metrics` (with the audit summary) on the edit."""
    with store.begin() as conn:
        conn.execute(audit_results.delete().where(audit_results.c.edit_id == edit_id))
        store.insert_records(conn, audit_results, rows, edit_id=edit_id)
        set_metrics(conn, edit_id, metrics)


def stored_rows(store: Store, edit_id: int) -> list[AuditRow]:
    """The rows of an audited edit (by fact), for re-summarising."""
    with store.begin() as conn:
        rows = conn.execute(
            sa.select(audit_results).where(audit_results.c.edit_id == edit_id).order_by(audit_results.c.fact_id)
        ).all()
    return [
        AuditRow(
            r.fact_id,
            r.role,
            float(r.predicted_score),
            float(r.p_before),
            float(r.p_after),
            float(r.predicted_dp or 0.0),
            None if r.predicted_sketch_dp is None else float(r.predicted_sketch_dp),
        )
        for r in rows
    ]
