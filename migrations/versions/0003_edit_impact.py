"""What the edit-impact prediction reads and writes: each changed slot's first-order factor, each
audited fact's predicted change of P(gold).

edit_slots.factor = (v . dv) / |v|^2 for the slot's change dv (-1: zeroed, -(1 - F): damped by F);
audit_results.predicted_dp = the `edit-impact` estimate of the fact's change of P(gold).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("edit_slots", sa.Column("factor", sa.REAL(), nullable=True))
    op.add_column("audit_results", sa.Column("predicted_dp", sa.REAL(), nullable=True))


def downgrade() -> None:
    op.drop_column("audit_results", "predicted_dp")
    op.drop_column("edit_slots", "factor")
