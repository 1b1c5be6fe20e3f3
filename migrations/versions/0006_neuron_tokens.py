"""Neuron vocabulary projections: each value slot's top tokens, cached per model.

neuron_tokens: the tokens a neuron's value slot (its column of the FFN down projection) writes
most strongly, read through the model's unembedding (LM-Debugger's view of a neuron). They depend
on the weights only, so they are keyed by model, not by run; `atlas vocab` and `atlas serve` fill
them, the neuron page of `atlas serve` shows them.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 04:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from atlas.db.reader import grant_select

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

#: every table this revision creates (grants and downgrades read this one list)
TABLES = ("neuron_tokens",)


def upgrade() -> None:
    op.create_table(
        "neuron_tokens",
        sa.Column("model_id", sa.BigInteger(), nullable=False),
        sa.Column("layer", sa.SmallInteger(), nullable=False),
        sa.Column("neuron", sa.Integer(), nullable=False),
        sa.Column("rank", sa.SmallInteger(), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("token", sa.Text(), nullable=False),
        sa.Column("logit", sa.REAL(), nullable=False),
        sa.PrimaryKeyConstraint("model_id", "layer", "neuron", "rank", name=op.f("pk_neuron_tokens")),
    )
    if op.get_bind().dialect.name == "postgresql":  # what `atlas sql` may read (migration 0004's role)
        op.execute(grant_select(TABLES))


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_table(table)
