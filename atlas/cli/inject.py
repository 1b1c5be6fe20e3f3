"""``atlas inject``: add facts as new FFN slots; show, list, roll back and export injections."""

from __future__ import annotations

from pathlib import Path

import click

from atlas.cli.common import db_option, model_option, open_store, options_of
from atlas.jobs.specs import InjectSpec


class _DefaultAdd(click.Group):
    """`atlas inject FILE ...` and `atlas inject --fact ...` mean `atlas inject add ...`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["add", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultAdd)
def inject() -> None:
    """Add facts to a model as new FFN key-value slots (Kformer-style, no training); audited, reversible.

    \b
    Example:
        atlas inject facts.jsonl --run smollm2-kn100
        atlas inject --fact "Nebraska|P36|Omaha" --run smollm2-kn100
        atlas inject show 1
        atlas inject export 1 ./smollm2-injected
        atlas inject rollback 1
    """


@inject.command()
@db_option
@click.argument("file", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--fact",
    "fact",
    multiple=True,
    metavar="SUBJECT|RELATION|OBJECT",
    help="A fact to inject (repeatable); its prompts come from --template or the relation's PARAREL templates.",
)
@click.option("--template", "template", multiple=True, metavar="T", help="A template with [X] and [Y] for --fact.")
@click.option("--run", "run", required=True, metavar="RUN", help="Run the injection is audited against.")
@options_of(InjectSpec)
@model_option
def add(db_url, file, fact, template, run, model, **spec) -> None:
    """Inject the facts of FILE (JSONL fact format; `object` = the NEW object) or of --fact.

    Each fact becomes one pair of neurons per layer: a key from the model's own hidden states, a
    gate that keeps it silent on other facts and general text, a value that makes the new object
    the answer. The injection is recorded with its audit (efficacy, held-out generalisation,
    specificity on the run's other facts, fluency).

    \b
    Example:
        atlas inject counterfactuals.jsonl --run smollm2-kn100
        atlas inject --fact "Nebraska|P36|Omaha" --run smollm2-kn100 --layers 24
    """
    from atlas.cli.inject_view import describe
    from atlas.errors import InputError
    from atlas.jobs.inject import fact_from_option, facts_from_file, inject_facts

    store = open_store(db_url)
    if bool(file) == bool(fact):
        raise InputError("give either a FILE of facts or --fact options (not both, not neither)")
    facts = facts_from_file(file) if file else [fact_from_option(f, template) for f in fact]
    click.echo(describe(inject_facts(store, model, run, facts, InjectSpec(**spec)), per_fact=False))


@inject.command()
@db_option
@click.argument("injection_id", type=int)
def show(db_url, injection_id) -> None:
    """Show INJECTION_ID: its facts, slots, gates and stored audit.

    \b
    Example:
        atlas inject show 1
    """
    from atlas.cli.inject_view import describe
    from atlas.db.injections import get_injection

    click.echo(describe(get_injection(open_store(db_url), injection_id)))


@inject.command("list")
@db_option
@click.option("--run", "run", default=None, metavar="RUN", help="Only injections of this run.")
def list_(db_url, run) -> None:
    """Injections, newest first: id, status, facts, layers, headline audit.

    \b
    Example:
        atlas inject list --run smollm2-kn100
    """
    from atlas.cli.inject_view import summary_line
    from atlas.db.injections import list_injections

    rows = list_injections(open_store(db_url), run)
    for i in rows:
        click.echo(summary_line(i))
    if not rows:
        click.echo("no injections yet (see `atlas inject --help`)")


@inject.command()
@db_option
@click.argument("injection_id", type=int)
@model_option
def rollback(db_url, injection_id, model) -> None:
    """Remove INJECTION_ID's slots (newest first); the weights' sha256 comes back to the original.

    \b
    Example:
        atlas inject rollback 1
    """
    from atlas.cli.inject_view import summary_line
    from atlas.jobs.inject_weights import rollback_injection

    click.echo(summary_line(rollback_injection(open_store(db_url), model, injection_id)))


@inject.command()
@db_option
@click.argument("injection_id", type=int)
@click.argument("directory", type=click.Path(path_type=Path))
@model_option
def export(db_url, injection_id, directory, model) -> None:
    """Write the model as of INJECTION_ID as a Hugging Face safetensors directory (wider FFNs).

    \b
    Example:
        atlas inject export 1 ./smollm2-injected
    """
    from atlas.jobs.inject_weights import export_injection

    out = export_injection(open_store(db_url), model, injection_id, directory)
    click.echo(f"wrote {out} (load it with AutoModelForCausalLM.from_pretrained)")
