"""``atlas edit``: update a fact, erase a relation, roll back, export and list edits."""

from __future__ import annotations

import json
from pathlib import Path

import click

from atlas.cli.common import db_option, model_option, open_store
from atlas.db.edits import EditRecord, list_edits


@click.group()
def edit() -> None:
    """Change the model through its knowledge neurons; every edit is recorded and reversible."""


def _show(e: EditRecord) -> None:
    click.echo(
        f"edit {e.id}: {e.kind} {e.target} on run {e.run} [{e.status}], {e.n_slots} value slots, "
        f"sha256 {e.sha256_before[:12]} -> {e.sha256_after[:12]}"
    )
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in e.metrics.items() if k != "audit"}
    click.echo(f"metrics {json.dumps(shown, sort_keys=True)}")


@edit.command()
@db_option
@click.argument("fact_id")
@click.option("--new-object", required=True, metavar="X", help="The new object t' (one token for the model).")
@click.option("--run", "run", required=True, metavar="RUN", help="Run whose knowledge neurons are edited.")
@click.option("--l1", "l1_scale", type=float, default=1.0, show_default=True, help="Scale of the e_t subtraction.")
@click.option("--l2", "l2_scale", type=float, default=8.0, show_default=True, help="Scale of the e_t' addition.")
@click.option(
    "--max-share",
    type=float,
    default=0.1,
    show_default=True,
    help="Leave neurons shared by more than this share of the relation's facts.",
)
@click.option(
    "--eval-facts",
    type=click.IntRange(1),
    default=20,
    show_default=True,
    help="Facts of the same / other relations whose perplexity is measured.",
)
@model_option
def update(db_url, fact_id, new_object, run, l1_scale, l2_scale, max_share, eval_facts, model) -> None:
    """Rewrite FACT_ID <h, r, t> to <h, r, t'> with the paper's value-slot update rule.

    \b
    Example:
        atlas edit update 854bca58-ca82-54a2-8f1c-e0d0ecd707b6 --new-object Paris --run smollm2-kn5
    """
    from atlas.jobs import edits as ed

    _show(
        ed.update_fact(
            open_store(db_url),
            model,
            run,
            fact_id,
            new_object,
            l1_scale=l1_scale,
            l2_scale=l2_scale,
            max_share=max_share,
            eval_facts=eval_facts,
        )
    )


@edit.command("erase-relation")
@db_option
@click.argument("relation")
@click.option("--run", "run", required=True, metavar="RUN", help="Run whose knowledge neurons are edited.")
@click.option("--top", type=click.IntRange(1), default=None, help="The N most frequent neurons (default 20).")
@click.option("--min-facts", type=click.IntRange(1), default=None, help="Instead: every neuron in >= m facts.")
@click.option("--value", default="zero", show_default=True, metavar="zero|unk|token:T", help="What the slots become.")
@click.option("--eval-facts", type=click.IntRange(1), default=50, show_default=True, help="Facts measured per side.")
@model_option
def erase_relation(db_url, relation, run, top, min_facts, value, eval_facts, model) -> None:
    """Erase RELATION: overwrite the value slots of its most shared knowledge neurons.

    \b
    Example:
        atlas edit erase-relation P36 --top 20 --value zero --run smollm2-kn5
    """
    if top is not None and min_facts is not None:
        raise click.UsageError("give --top or --min-facts, not both")
    from atlas.jobs import edits as ed

    _show(
        ed.erase_relation(
            open_store(db_url),
            model,
            run,
            relation,
            top=top or 20,
            min_facts=min_facts,
            value=value,
            eval_facts=eval_facts,
        )
    )


@edit.command()
@db_option
@click.argument("edit_id", type=int)
@model_option
def rollback(db_url, edit_id, model) -> None:
    """Undo EDIT_ID (newest first); the weights come back bit-exactly (checked by sha256).

    \b
    Example:
        atlas edit rollback 3
    """
    from atlas.jobs.rollback import rollback as undo

    _show(undo(open_store(db_url), model, edit_id))


@edit.command()
@db_option
@click.argument("edit_id", type=int)
@click.argument("directory", type=click.Path(path_type=Path))
@model_option
def export(db_url, edit_id, directory, model) -> None:
    """Write the model as of EDIT_ID as a Hugging Face safetensors directory.

    \b
    Example:
        atlas edit export 3 ./smollm2-edited
    """
    from atlas.jobs.rollback import export as write_model

    out = write_model(open_store(db_url), model, edit_id, directory)
    click.echo(f"wrote {out} (load it with AutoModelForCausalLM.from_pretrained)")


@edit.command("list")
@db_option
@click.option("--run", "run", default=None, metavar="RUN", help="Only edits of this run.")
def list_(db_url, run) -> None:
    """Edits, newest first: id, kind, target, status, slots, headline metric.

    \b
    Example:
        atlas edit list --run smollm2-kn5
    """
    rows = list_edits(open_store(db_url), run)
    for e in rows:
        head = {"update": "success_rate", "erase": "erased_ppl_change"}.get(e.kind, "")
        val = e.metrics.get(head)
        click.echo(
            f"{e.id:4d}  {e.kind:7s} {e.target:40s} {e.status:12s} {e.n_slots:3d} slots  {e.run}  "
            f"{head}={'-' if val is None else round(val, 4)}"
        )
    if not rows:
        click.echo("no edits yet (see `atlas edit update --help`)")
