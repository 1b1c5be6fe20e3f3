"""The `atlas_reader` role on PostgreSQL: user SQL logs in as it, with SELECT on the atlas tables only.

Created if the server lacks it (roles are cluster-wide), granted CONNECT on this database and
SELECT on the tables below; a no-op on DuckDB (user SQL runs on a locked-down read-only connection
there). A later migration that adds a table grants SELECT on it with `atlas.db.reader.grant_select`.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 22:00:00
"""

from __future__ import annotations

from alembic import op

from atlas.db.reader import CREATE_ROLE, DROP_ROLE, GRANT_CONNECT, grant_select

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# the atlas tables at this revision (alembic_version is not one of them)
TABLES = (
    "models",
    "runs",
    "relations",
    "facts",
    "dataset_facts",
    "prompts",
    "prompt_outputs",
    "prompt_scores",
    "knowledge_neurons",
    "relation_thresholds",
    "work_items",
    "edits",
    "edit_slots",
    "probe_results",
    "audit_results",
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(CREATE_ROLE)
    op.execute(GRANT_CONNECT)
    op.execute(grant_select(TABLES))


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(DROP_ROLE)
