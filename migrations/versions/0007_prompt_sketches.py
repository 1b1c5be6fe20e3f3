"""Gradient sketches: what lets an audit predict any edit form from the atlas alone.

prompt_sketches: per prompt of a run indexed with `--sketch-rank r` (r > 0) and per layer, the top-r
singular triplets of M_l = sum over positions of g a^T (the gradient of log P(gold) on the value-slot
weights; `indexer.attribution.sketch`), packed as bytes: s (float32 x r), u (float16 x r x hidden),
w (float16 x r x neurons). audit_results.predicted_sketch_dp: the change of P(gold) they predict.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from atlas.db.reader import grant_select

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: every table this revision creates (grants and downgrades read this one list)
TABLES = ("prompt_sketches",)


def upgrade() -> None:
    op.create_table(
        "prompt_sketches",
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("prompt_id", sa.BigInteger(), nullable=False),
        sa.Column("layer", sa.SmallInteger(), nullable=False),
        sa.Column("sketch", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "layer", "prompt_id", name=op.f("pk_prompt_sketches")),
    )
    op.add_column("audit_results", sa.Column("predicted_sketch_dp", sa.REAL(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":  # what `atlas sql` may read (migration 0004's role)
        op.execute(grant_select(TABLES))


def downgrade() -> None:
    op.drop_column("audit_results", "predicted_sketch_dp")
    for table in reversed(TABLES):
        op.drop_table(table)
