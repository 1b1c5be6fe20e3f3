"""Core schema: models, runs, facts, prompts, scores, knowledge neurons, work queue, edits, probes, audits.

Written by autogenerate against PostgreSQL, plus the id sequences (autogenerate does not emit them).

Revision ID: 0001
Revises:
Create Date: 2026-11-21 14:33:18.876963
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SEQUENCES = ("models_id_seq", "runs_id_seq", "prompts_id_seq", "edits_id_seq")


def upgrade() -> None:
    for name in SEQUENCES:
        op.execute(sa.schema.CreateSequence(sa.Sequence(name)))
    op.create_table(
        "audit_results",
        sa.Column("edit_id", sa.BigInteger(), nullable=False),
        sa.Column("fact_id", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("predicted_score", sa.REAL(), nullable=False),
        sa.Column("p_before", sa.REAL(), nullable=False),
        sa.Column("p_after", sa.REAL(), nullable=False),
        sa.PrimaryKeyConstraint("edit_id", "fact_id", "role", name=op.f("pk_audit_results")),
    )
    op.create_table(
        "dataset_facts",
        sa.Column("dataset", sa.Text(), nullable=False),
        sa.Column("fact_id", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("dataset", "fact_id", name=op.f("pk_dataset_facts")),
    )
    op.create_table(
        "edit_slots",
        sa.Column("edit_id", sa.BigInteger(), nullable=False),
        sa.Column("layer", sa.SmallInteger(), nullable=False),
        sa.Column("neuron", sa.Integer(), nullable=False),
        sa.Column("original", sa.LargeBinary(), nullable=False),
        sa.Column("edited", sa.LargeBinary(), nullable=False),
        sa.Column("dtype", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("edit_id", "layer", "neuron", name=op.f("pk_edit_slots")),
    )
    op.create_table(
        "edits",
        sa.Column("id", sa.BigInteger(), server_default=sa.text("nextval('edits_id_seq')"), nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("model_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("sha256_before", sa.Text(), nullable=False),
        sa.Column("sha256_after", sa.Text(), nullable=False),
        sa.Column("metrics", sa.Text(), server_default="{}", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("rolled_back_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_edits")),
    )
    op.create_table(
        "facts",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("relation_id", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("object", sa.Text(), nullable=False),
        sa.Column("dataset", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_facts")),
    )
    op.create_index(op.f("ix_facts_relation_id"), "facts", ["relation_id"], unique=False)
    op.create_table(
        "knowledge_neurons",
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("fact_id", sa.Text(), nullable=False),
        sa.Column("layer", sa.SmallInteger(), nullable=False),
        sa.Column("neuron", sa.Integer(), nullable=False),
        sa.Column("score", sa.REAL(), nullable=False),
        sa.Column("n_prompts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "fact_id", "layer", "neuron", name=op.f("pk_knowledge_neurons")),
    )
    op.create_index(
        op.f("ix_knowledge_neurons_run_id_layer_neuron"),
        "knowledge_neurons",
        ["run_id", "layer", "neuron"],
        unique=False,
    )
    op.create_table(
        "models",
        sa.Column("id", sa.BigInteger(), server_default=sa.text("nextval('models_id_seq')"), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("architecture", sa.Text(), nullable=False),
        sa.Column("n_layers", sa.Integer(), nullable=False),
        sa.Column("n_neurons", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("name", name=op.f("uq_models_name")),
        sa.UniqueConstraint("sha256", name=op.f("uq_models_sha256")),
    )
    op.create_table(
        "probe_results",
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("fact_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("neurons", sa.Text(), nullable=False),
        sa.Column("n_neurons", sa.Integer(), nullable=False),
        sa.Column("p_before", sa.REAL(), nullable=False),
        sa.Column("p_after", sa.REAL(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "fact_id", "kind", "neurons", name=op.f("pk_probe_results")),
    )
    op.create_table(
        "prompt_outputs",
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("prompt_id", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("skip_reason", sa.Text(), nullable=True),
        sa.Column("p_gold", sa.REAL(), nullable=True),
        sa.Column("gold_rank", sa.Integer(), nullable=True),
        sa.Column("max_score", sa.REAL(), nullable=True),
        sa.Column("n_answer_tokens", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "prompt_id", name=op.f("pk_prompt_outputs")),
    )
    op.create_table(
        "prompt_scores",
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("prompt_id", sa.BigInteger(), nullable=False),
        sa.Column("layer", sa.SmallInteger(), nullable=False),
        sa.Column("neuron", sa.Integer(), nullable=False),
        sa.Column("score", sa.REAL(), nullable=False),
    )
    op.create_index(op.f("ix_prompt_scores_run_id_prompt_id"), "prompt_scores", ["run_id", "prompt_id"], unique=False)
    op.create_table(
        "prompts",
        sa.Column("id", sa.BigInteger(), server_default=sa.text("nextval('prompts_id_seq')"), nullable=False),
        sa.Column("fact_id", sa.Text(), nullable=False),
        sa.Column("template", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("causal", sa.Boolean(), nullable=False),
        sa.Column("masked", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompts")),
        sa.UniqueConstraint("fact_id", "template", name=op.f("uq_prompts_fact_id_template")),
    )
    op.create_table(
        "relation_thresholds",
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("relation_id", sa.Text(), nullable=False),
        sa.Column("p", sa.REAL(), nullable=False),
        sa.Column("mean_neurons", sa.REAL(), nullable=False),
        sa.Column("n_facts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "relation_id", name=op.f("pk_relation_thresholds")),
    )
    op.create_table(
        "relations",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_relations")),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.BigInteger(), server_default=sa.text("nextval('runs_id_seq')"), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("model_id", sa.BigInteger(), nullable=False),
        sa.Column("dataset", sa.Text(), nullable=False),
        sa.Column("method", sa.Text(), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("params_key", sa.Text(), nullable=False),
        sa.Column("code_version", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("stats", sa.Text(), server_default="{}", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
        sa.UniqueConstraint("name", name=op.f("uq_runs_name")),
    )
    op.create_index(op.f("ix_runs_params_key"), "runs", ["params_key"], unique=False)
    op.create_table(
        "work_items",
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("relation_id", sa.Text(), nullable=False),
        sa.Column("fact_ids", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("lease_expires", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("run_id", "item_id", name=op.f("pk_work_items")),
    )


def downgrade() -> None:
    op.drop_table("work_items")
    op.drop_index(op.f("ix_runs_params_key"), table_name="runs")
    op.drop_table("runs")
    op.drop_table("relations")
    op.drop_table("relation_thresholds")
    op.drop_table("prompts")
    op.drop_index(op.f("ix_prompt_scores_run_id_prompt_id"), table_name="prompt_scores")
    op.drop_table("prompt_scores")
    op.drop_table("prompt_outputs")
    op.drop_table("probe_results")
    op.drop_table("models")
    op.drop_index(op.f("ix_knowledge_neurons_run_id_layer_neuron"), table_name="knowledge_neurons")
    op.drop_table("knowledge_neurons")
    op.drop_index(op.f("ix_facts_relation_id"), table_name="facts")
    op.drop_table("facts")
    op.drop_table("edits")
    op.drop_table("edit_slots")
    op.drop_table("dataset_facts")
    op.drop_table("audit_results")
    for name in SEQUENCES:
        op.execute(sa.schema.DropSequence(sa.Sequence(name)))
