"""Knowledge injection: facts added to a model as new FFN slot pairs, recorded and reversible.

injections: one row per `atlas inject` (run, layers, method parameters, FFN width and weight sha256
before and after, stored audit); injection_facts: its facts with their training and held-out
prompts; injection_slots: each slot pair's key, value and gate, the exact bytes replayed to rebuild
the widened model.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 21:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from atlas.db.reader import grant_select

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SEQUENCES = ("injections_id_seq",)
#: every table this revision creates (grants and downgrades read this one list)
TABLES = ("injections", "injection_facts", "injection_slots")


def upgrade() -> None:
    for name in SEQUENCES:
        op.execute(sa.schema.CreateSequence(sa.Sequence(name)))
    op.create_table(
        "injections",
        sa.Column("id", sa.BigInteger(), server_default=sa.text("nextval('injections_id_seq')"), nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("model_id", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("layers", sa.Text(), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("width_before", sa.Integer(), nullable=False),
        sa.Column("width_after", sa.Integer(), nullable=False),
        sa.Column("sha256_before", sa.Text(), nullable=False),
        sa.Column("sha256_after", sa.Text(), nullable=False),
        sa.Column("audit", sa.Text(), server_default="{}", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("rolled_back_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_injections")),
    )
    op.create_table(
        "injection_facts",
        sa.Column("injection_id", sa.BigInteger(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("fact_id", sa.Text(), nullable=False),
        sa.Column("relation_id", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("object", sa.Text(), nullable=False),
        sa.Column("prompts", sa.Text(), nullable=False),
        sa.Column("heldout", sa.Text(), nullable=False),
        sa.Column("info", sa.Text(), server_default="{}", nullable=False),
        sa.PrimaryKeyConstraint("injection_id", "position", name=op.f("pk_injection_facts")),
    )
    op.create_table(
        "injection_slots",
        sa.Column("injection_id", sa.BigInteger(), nullable=False),
        sa.Column("layer", sa.SmallInteger(), nullable=False),
        sa.Column("neuron", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("key", sa.LargeBinary(), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.Column("dtype", sa.Text(), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("slope", sa.Double(), nullable=False),
        sa.Column("sharpness", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("injection_id", "layer", "neuron", name=op.f("pk_injection_slots")),
    )
    if op.get_bind().dialect.name == "postgresql":  # what `atlas sql` may read (migration 0004's role)
        op.execute(grant_select(TABLES))


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_table(table)
    for name in SEQUENCES:
        op.execute(sa.schema.DropSequence(sa.Sequence(name)))
