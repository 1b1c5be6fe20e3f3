"""The atlas schema: one SQLAlchemy ``metadata`` for PostgreSQL and DuckDB.

Why it looks the way it does:

* Ids that the database hands out use a ``Sequence`` with ``server_default=seq.next_value()``:
  DuckDB has neither SERIAL nor IDENTITY columns, and PostgreSQL is happy with a sequence too.
* There are no FOREIGN KEYs: on DuckDB they block later ``ALTER TABLE``s, and one schema must serve
  both backends. The store keeps references consistent inside its transactions.
* Bulk tables (``prompt_scores``, ``knowledge_neurons``) are narrow and use REAL scores: they hold
  tens of millions of rows and are loaded through COPY / Arrow.
* JSON documents (run parameters, edit metrics) are stored as TEXT so that both backends and
  every driver read them the same way.
"""

from __future__ import annotations

import sqlalchemy as sa

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


def _id_column(table: str) -> tuple[sa.Sequence, sa.Column]:
    """An integer primary key drawn from ``{table}_id_seq`` (works on DuckDB and PostgreSQL)."""
    seq = sa.Sequence(f"{table}_id_seq", metadata=metadata)
    return seq, sa.Column("id", sa.BigInteger, seq, server_default=seq.next_value(), primary_key=True)


def _created_at() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())


models_id_seq, _models_id = _id_column("models")
models = sa.Table(
    "models",
    metadata,
    _models_id,
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("source", sa.Text, nullable=False),  # where the weights came from (path, package, hub id)
    sa.Column("architecture", sa.Text, nullable=False),  # Hugging Face class name
    sa.Column("n_layers", sa.Integer, nullable=False),
    sa.Column("n_neurons", sa.Integer, nullable=False),  # FFN neurons per layer
    sa.Column("sha256", sa.Text, nullable=False, unique=True),  # of the weights: the model's identity
    _created_at(),
)

runs_id_seq, _runs_id = _id_column("runs")
runs = sa.Table(
    "runs",
    metadata,
    _runs_id,
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("model_id", sa.BigInteger, nullable=False),
    sa.Column("dataset", sa.Text, nullable=False),
    sa.Column("method", sa.Text, nullable=False),  # "ig"
    sa.Column("params", sa.Text, nullable=False),  # canonical JSON of every parameter that changes results
    sa.Column("params_key", sa.Text, nullable=False),  # sha256 of (model sha, dataset, params): resume key
    sa.Column("code_version", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),  # running | done | failed
    sa.Column("stats", sa.Text, nullable=False, server_default="{}"),  # JSON: timings, counts
    _created_at(),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Index(None, "params_key"),
)

relations = sa.Table(
    "relations",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),  # Wikidata property id, e.g. P19
    sa.Column("label", sa.Text, nullable=False),
    sa.Column("type", sa.Text, nullable=False),  # 1-1 | N-1 | N-M
)

facts = sa.Table(
    "facts",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),  # stable: the dataset's uuid
    sa.Column("relation_id", sa.Text, nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("object", sa.Text, nullable=False),
    sa.Column("dataset", sa.Text, nullable=False),  # the dataset that first loaded the fact
    sa.Index(None, "relation_id"),
)

dataset_facts = sa.Table(
    "dataset_facts",
    metadata,
    sa.Column("dataset", sa.Text, primary_key=True),
    sa.Column("fact_id", sa.Text, primary_key=True),
)

prompts_id_seq, _prompts_id = _id_column("prompts")
prompts = sa.Table(
    "prompts",
    metadata,
    _prompts_id,
    sa.Column("fact_id", sa.Text, nullable=False),
    sa.Column("template", sa.Text, nullable=False),  # with [X] and [Y] slots
    sa.Column("text", sa.Text, nullable=False),  # subject filled in, the literal [Y] slot kept
    sa.Column("causal", sa.Boolean, nullable=False),  # usable by a left-to-right LM ([Y] ends it)
    sa.Column("masked", sa.Boolean, nullable=False),  # usable by a masked LM
    sa.UniqueConstraint("fact_id", "template"),
)

prompt_outputs = sa.Table(
    "prompt_outputs",
    metadata,
    sa.Column("run_id", sa.BigInteger, primary_key=True),
    sa.Column("prompt_id", sa.BigInteger, primary_key=True),
    sa.Column("status", sa.Text, nullable=False),  # ok | skipped
    sa.Column("skip_reason", sa.Text),
    sa.Column("p_gold", sa.REAL),  # P(gold answer) of the unedited model
    sa.Column("gold_rank", sa.Integer),  # 1 = top-1 (the model's own answer)
    sa.Column("max_score", sa.REAL),  # max attribution over all layers and neurons
    sa.Column("n_answer_tokens", sa.Integer),
)

prompt_scores = sa.Table(
    "prompt_scores",
    metadata,
    sa.Column("run_id", sa.BigInteger, nullable=False),
    sa.Column("prompt_id", sa.BigInteger, nullable=False),
    sa.Column("layer", sa.SmallInteger, nullable=False),
    sa.Column("neuron", sa.Integer, nullable=False),
    sa.Column("score", sa.REAL, nullable=False),
    sa.Index(None, "run_id", "prompt_id"),
)

prompt_sketches = sa.Table(
    "prompt_sketches",
    metadata,
    sa.Column("run_id", sa.BigInteger, primary_key=True),
    sa.Column("layer", sa.SmallInteger, primary_key=True),
    sa.Column("prompt_id", sa.BigInteger, primary_key=True),
    # top-r triplets of the prompt's gradient on the layer's value slots (indexer.attribution.sketch)
    sa.Column("sketch", sa.LargeBinary, nullable=False),
)

knowledge_neurons = sa.Table(
    "knowledge_neurons",
    metadata,
    sa.Column("run_id", sa.BigInteger, primary_key=True),
    sa.Column("fact_id", sa.Text, primary_key=True),
    sa.Column("layer", sa.SmallInteger, primary_key=True),
    sa.Column("neuron", sa.Integer, primary_key=True),
    sa.Column("score", sa.REAL, nullable=False),  # mean attribution over the fact's prompts
    sa.Column("n_prompts", sa.Integer, nullable=False),  # prompts in which it was a coarse neuron
    sa.Index(None, "run_id", "layer", "neuron"),
)

relation_thresholds = sa.Table(
    "relation_thresholds",
    metadata,
    sa.Column("run_id", sa.BigInteger, primary_key=True),
    sa.Column("relation_id", sa.Text, primary_key=True),
    sa.Column("p", sa.REAL, nullable=False),  # the adapted refining share
    sa.Column("mean_neurons", sa.REAL, nullable=False),
    sa.Column("n_facts", sa.Integer, nullable=False),
)

work_items = sa.Table(
    "work_items",
    metadata,
    sa.Column("run_id", sa.BigInteger, primary_key=True),
    sa.Column("item_id", sa.Integer, primary_key=True),
    sa.Column("relation_id", sa.Text, nullable=False),
    sa.Column("fact_ids", sa.Text, nullable=False),  # JSON list
    sa.Column("status", sa.Text, nullable=False),  # pending | claimed | done
    sa.Column("lease_owner", sa.Text),
    sa.Column("lease_expires", sa.DateTime(timezone=True)),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
)

edits_id_seq, _edits_id = _id_column("edits")
edits = sa.Table(
    "edits",
    metadata,
    _edits_id,
    sa.Column("run_id", sa.BigInteger, nullable=False),
    sa.Column("model_id", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),  # update | erase
    sa.Column("target", sa.Text, nullable=False),  # fact id or relation id
    sa.Column("params", sa.Text, nullable=False),  # JSON
    sa.Column("status", sa.Text, nullable=False),  # applied | rolled_back
    sa.Column("sha256_before", sa.Text, nullable=False),
    sa.Column("sha256_after", sa.Text, nullable=False),
    sa.Column("metrics", sa.Text, nullable=False, server_default="{}"),  # JSON
    _created_at(),
    sa.Column("rolled_back_at", sa.DateTime(timezone=True)),
)

edit_slots = sa.Table(
    "edit_slots",
    metadata,
    sa.Column("edit_id", sa.BigInteger, primary_key=True),
    sa.Column("layer", sa.SmallInteger, primary_key=True),
    sa.Column("neuron", sa.Integer, primary_key=True),
    sa.Column("original", sa.LargeBinary, nullable=False),  # the value slot before the edit (raw bytes)
    sa.Column("edited", sa.LargeBinary, nullable=False),
    sa.Column("dtype", sa.Text, nullable=False),
    sa.Column("factor", sa.REAL),  # (v . dv) / |v|^2: -1 zeroed, -(1 - F) damped by F (edit-impact reads it)
)

probe_results = sa.Table(
    "probe_results",
    metadata,
    sa.Column("run_id", sa.BigInteger, primary_key=True),
    sa.Column("fact_id", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, primary_key=True),  # suppress | amplify
    sa.Column("neurons", sa.Text, primary_key=True),  # knowledge | other_fact | random
    sa.Column("n_neurons", sa.Integer, nullable=False),
    sa.Column("p_before", sa.REAL, nullable=False),  # mean over the fact's prompts
    sa.Column("p_after", sa.REAL, nullable=False),
)

audit_results = sa.Table(
    "audit_results",
    metadata,
    sa.Column("edit_id", sa.BigInteger, primary_key=True),
    sa.Column("fact_id", sa.Text, primary_key=True),
    sa.Column("role", sa.Text, primary_key=True),  # target | predicted | random
    sa.Column("predicted_score", sa.REAL, nullable=False),  # edit-interference: share of attribution mass hit
    sa.Column("predicted_dp", sa.REAL),  # edit-impact: first-order estimate of the change of P(gold)
    sa.Column("predicted_sketch_dp", sa.REAL),  # the same from the run's gradient sketches (migration 0007)
    sa.Column("p_before", sa.REAL, nullable=False),
    sa.Column("p_after", sa.REAL, nullable=False),
)

# --- knowledge injection (migration 0004): facts added as new FFN slot pairs -----------------------

injections_id_seq, _injections_id = _id_column("injections")
injections = sa.Table(
    "injections",
    metadata,
    _injections_id,
    sa.Column("run_id", sa.BigInteger, nullable=False),  # the run the injection is audited against
    sa.Column("model_id", sa.BigInteger, nullable=False),
    sa.Column("status", sa.Text, nullable=False),  # applied | rolled_back
    sa.Column("layers", sa.Text, nullable=False),  # JSON list of the layers holding its slots
    sa.Column("params", sa.Text, nullable=False),  # JSON: method and parameters
    sa.Column("width_before", sa.Integer, nullable=False),  # FFN neurons per layer before / after
    sa.Column("width_after", sa.Integer, nullable=False),
    sa.Column("sha256_before", sa.Text, nullable=False),
    sa.Column("sha256_after", sa.Text, nullable=False),
    sa.Column("audit", sa.Text, nullable=False, server_default="{}"),  # JSON: the stored audit
    _created_at(),
    sa.Column("rolled_back_at", sa.DateTime(timezone=True)),
)

injection_facts = sa.Table(
    "injection_facts",
    metadata,
    sa.Column("injection_id", sa.BigInteger, primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),  # order of building (each on the earlier ones)
    sa.Column("fact_id", sa.Text, nullable=False),
    sa.Column("relation_id", sa.Text, nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("object", sa.Text, nullable=False),  # the NEW object
    sa.Column("prompts", sa.Text, nullable=False),  # JSON: training prompts (the slot is built on them)
    sa.Column("heldout", sa.Text, nullable=False),  # JSON: held-out prompts (generalisation)
    sa.Column("info", sa.Text, nullable=False, server_default="{}"),  # JSON: tokens, gates, value search
)

neuron_tokens = sa.Table(
    "neuron_tokens",
    metadata,
    sa.Column("model_id", sa.BigInteger, primary_key=True),
    sa.Column("layer", sa.SmallInteger, primary_key=True),
    sa.Column("neuron", sa.Integer, primary_key=True),
    sa.Column("rank", sa.SmallInteger, primary_key=True),  # 1 = the token the slot writes most strongly
    sa.Column("token_id", sa.Integer, nullable=False),
    sa.Column("token", sa.Text, nullable=False),
    sa.Column("logit", sa.REAL, nullable=False),  # value slot . unembedding row of the token
)

injection_slots = sa.Table(
    "injection_slots",
    metadata,
    sa.Column("injection_id", sa.BigInteger, primary_key=True),
    sa.Column("layer", sa.SmallInteger, primary_key=True),
    sa.Column("neuron", sa.Integer, primary_key=True),  # the first of the pair (neuron, neuron + 1)
    sa.Column("position", sa.Integer, nullable=False),  # the fact (injection_facts.position)
    sa.Column("key", sa.LargeBinary, nullable=False),  # w, raw bytes of `dtype`
    sa.Column("value", sa.LargeBinary, nullable=False),  # v
    sa.Column("dtype", sa.Text, nullable=False),
    sa.Column("threshold", sa.Double, nullable=False),  # b
    sa.Column("slope", sa.Double, nullable=False),  # a
    sa.Column("sharpness", sa.Double, nullable=False),  # k
)
