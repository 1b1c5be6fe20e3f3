"""``atlas facts``: load fact datasets into the atlas and look at them."""

from __future__ import annotations

import click

from atlas.cli.common import db_option, open_store
from atlas.cli.progress import progress_bar
from atlas.db.datasets import causal_prefix, read_dataset, relation_count
from atlas.db.facts import LOAD_STEPS, list_facts, load_dataset, show_fact


def _relation_ids(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[str] | None:
    if value is None:
        return None
    ids = [v.strip() for v in value.split(",") if v.strip()]
    if not ids:
        raise click.BadParameter(f"no relation ids in {value!r}")
    return ids


@click.group()
def facts() -> None:
    """Load fact datasets (bundled PARAREL / kn-paper, or your JSONL) and inspect them.

    \b
    Example:
        atlas facts load kn-paper --relations P36 --limit-per-relation 5
        atlas facts list --relation P36
    """


@facts.command()
@db_option
@click.argument("source")
@click.option("--relations", callback=_relation_ids, metavar="P19,P36", help="Only these relations (comma-separated).")
@click.option("--limit-per-relation", type=int, metavar="N", help="Only the first N facts of each relation.")
@click.option("--dataset", "name", metavar="NAME", help="Dataset name for a JSONL file (default: the file's stem).")
def load(
    db_url: str | None, source: str, relations: list[str] | None, limit_per_relation: int | None, name: str | None
) -> None:
    """Load SOURCE: `pararel`, `kn-paper` or a JSONL fact file (format: README.md).

    Loading is idempotent (only missing facts and prompts are added) and one transaction: on any
    error the database is left exactly as it was.

    \b
    Example:
        atlas facts load kn-paper --relations P36,P103 --limit-per-relation 50
        atlas facts load pararel
        atlas facts load my_facts.jsonl --dataset mine
    """
    store = open_store(db_url)
    with progress_bar() as bar:
        reading = bar.add_task("reading", total=relation_count(source, relations), unit="relations")
        dataset = read_dataset(
            source, relations, limit_per_relation, name, on_relation=lambda _rid: bar.advance(reading)
        )
        bar.update(reading, total=bar.tasks[reading].completed)
        writing = bar.add_task("writing", total=len(LOAD_STEPS), unit="steps")
        report = load_dataset(store, dataset, on_step=lambda _step: bar.advance(writing))
    click.echo(str(report))


@facts.command("list")
@db_option
@click.option("--relation", metavar="P", help="Only facts of this relation.")
@click.option("--dataset", metavar="D", help="Only facts that belong to this dataset.")
@click.option("--limit", type=int, default=20, show_default=True, help="At most this many facts (0: all).")
def list_(db_url: str | None, relation: str | None, dataset: str | None, limit: int) -> None:
    """List facts: id, relation, subject -> object, prompts (of which causal).

    \b
    Example:
        atlas facts list --relation P36 --dataset kn-paper --limit 5
    """
    store = open_store(db_url)
    rows = list_facts(store, relation, dataset, limit or None)
    for f in rows:
        click.echo(
            f"{f.id}  {f.relation_id:6s} {f.subject} -> {f.object}  ({f.n_prompts} prompts, {f.n_causal} causal)"
        )
    if not rows:
        click.echo("no facts match")


@facts.command()
@db_option
@click.argument("fact_id")
def show(db_url: str | None, fact_id: str) -> None:
    """Show one fact, the datasets it belongs to and its prompts (which suit causal / masked LMs).

    \b
    Example:
        atlas facts show 381b9c02-419a-434f-91ef-bb973b5c485c
    """
    detail = show_fact(open_store(db_url), fact_id)
    f, rel = detail.fact, detail.relation
    click.echo(f"fact      {f.id}")
    click.echo(f"relation  {rel.id} {rel.label} ({rel.type})")
    click.echo(f"subject   {f.subject}")
    click.echo(f"object    {f.object}")
    click.echo(f"datasets  {', '.join(detail.datasets)} (first loaded by {f.dataset})")
    click.echo(f"prompts   {f.n_prompts} ({f.n_causal} causal, {sum(p.masked for p in detail.prompts)} masked)")
    for p in detail.prompts:
        kinds = " ".join(k for k, on in (("causal", p.causal), ("masked", p.masked)) if on)
        reads = f"   -> causal LM reads {causal_prefix(p.text)!r}" if p.causal else ""
        click.echo(f"  #{p.id:<8d} {kinds:14s} {p.text}{reads}")
