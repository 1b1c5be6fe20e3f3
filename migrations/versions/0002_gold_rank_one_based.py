"""prompt_outputs.gold_rank counts from 1 (1 = the model's top answer), as users and the engine do.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 19:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE prompt_outputs SET gold_rank = gold_rank + 1 WHERE gold_rank IS NOT NULL")


def downgrade() -> None:
    op.execute("UPDATE prompt_outputs SET gold_rank = gold_rank - 1 WHERE gold_rank IS NOT NULL")
