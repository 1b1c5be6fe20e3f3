"""``atlas edit``: update a fact, erase a relation, roll back, export and list edits."""

from __future__ import annotations

from pathlib import Path

import click

from atlas.cli.common import db_option, model_option, open_store, options_of
from atlas.cli.output import writable_dir
from atlas.db.edits import EditRecord, get_edit, list_edits
from atlas.jobs.specs import EraseSpec, UpdateSpec


@click.group()
def edit() -> None:
    """Change the model through its knowledge neurons; every edit is recorded and reversible."""


def _show(e: EditRecord) -> None:
    from atlas.cli.edit_view import summary_line

    click.echo(summary_line(e))


@edit.command()
@db_option
@click.argument("fact_id")
@click.option("--new-object", required=True, metavar="X", help="The new object t' (one token for the model).")
@click.option("--run", "run", required=True, metavar="RUN", help="Run whose knowledge neurons are edited.")
@options_of(UpdateSpec)
@model_option
def update(db_url, fact_id, new_object, run, model, **spec) -> None:
    """Rewrite FACT_ID <h, r, t> to <h, r, t'> through its own knowledge neurons.

    The default, `--form ls` with `--preserve auto` (covariance): the least-squares change of the
    layers holding the fact's own knowledge neurons that makes t' win on its prompts, weighed against
    1,000 other facts' activations (MEMIT). On the real SmolLM2 (BENCHMARKS.md, 44 facts) it
    succeeded on 62.6 % of prompts at a median +1.1 % perplexity on other relations, which kept 89.5 %
    of their right answers; without the preservation 60.3 % at +18.9 % (66 %); `--form paper` (Dai
    et al.'s rule) 22.9 % at +201 % (48 %).

    \b
    Example:
        atlas edit update 854bca58-ca82-54a2-8f1c-e0d0ecd707b6 --new-object Paris --run smollm2-kn100
        atlas edit update 854bca58-ca82-54a2-8f1c-e0d0ecd707b6 --new-object Paris --run smollm2-kn100 --form paper
    """
    from atlas.jobs.update import update_fact

    _show(update_fact(open_store(db_url), model, run, fact_id, new_object, UpdateSpec(**spec)))


@edit.command("erase-relation")
@db_option
@click.argument("relation")
@click.option("--run", "run", required=True, metavar="RUN", help="Run whose knowledge neurons are edited.")
@options_of(EraseSpec)
@model_option
def erase_relation(db_url, relation, run, model, **spec) -> None:
    """Erase RELATION, judged on every relation of the run against a control edit.

    The default, `--form lsq`, changes 3 layers, the last and the 2 (above the lowest third) holding
    most of the relation's attribution, by the least-squares change that removes half of what they
    write along its answer directions, weighed against the activations of 1,000 other facts of the
    model's runs (`--preserve covariance`, `--preserve-weight 100`). On the real SmolLM2
    (BENCHMARKS.md, held-out facts of 7 relations, one from a user's file) it removed 64-100 % of
    the erased relation's right answers (>= 85 % on 6 of 7) while the other relations kept 89-97 %
    of theirs at -0.4 % to +7.5 % perplexity, text +0.5 % to +6.9 %; the paper's erase (`--select
    frequent --top 20 --form zero`) left them 35-54 % at +64 % to +310 %. `--preserve-weight 1000`
    spares more (94-100 %) and erases less. Neuron forms (`--form project|damp:F|zero|...`) act on
    `--select`ed neurons; a control edit of the same form on as many layer-matched random neurons
    (or other layers) is measured alongside.

    \b
    Example:
        atlas edit erase-relation P36 --run smollm2-kn100
        atlas edit erase-relation P36 --run smollm2-kn100 --select frequent --top 20 --form zero
    """
    from atlas.jobs.erase import erase_relation as erase

    _show(erase(open_store(db_url), model, run, relation, EraseSpec(**spec)))


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
@click.argument("directory", type=click.Path(path_type=Path), callback=writable_dir)
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


@edit.command()
@db_option
@click.argument("edit_id", type=int)
def show(db_url, edit_id) -> None:
    """Show EDIT_ID: what it changed and how it was judged, relation by relation, with its control.

    \b
    Example:
        atlas edit show 3
    """
    from atlas.cli.edit_view import describe

    click.echo(describe(get_edit(open_store(db_url), edit_id)))


@edit.command("list")
@db_option
@click.option("--run", "run", default=None, metavar="RUN", help="Only edits of this run.")
def list_(db_url, run) -> None:
    """Edits, newest first: id, kind, target, status, slots, headline metric.

    \b
    Example:
        atlas edit list --run smollm2-kn5
    """
    from atlas.cli.edit_view import headline

    rows = list_edits(open_store(db_url), run)
    for e in rows:
        click.echo(f"{e.id:4d}  {e.kind:7s} {e.target:40s} {e.status:12s} {e.n_slots:4d} slots  {e.run}  {headline(e)}")
    if not rows:
        click.echo("no edits yet (see `atlas edit update --help`)")
