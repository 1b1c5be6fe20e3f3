"""``atlas query`` and ``atlas sql``: ask the atlas questions in SQL."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from atlas.cli.common import db_option, open_store
from atlas.cli.output import FORMATS, render
from atlas.db import queries
from atlas.db.readonly import run_sql

format_option = click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True, help="Output format."
)
output_option = click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE (required for parquet)."
)


def _emit(result: queries.QueryResult, fmt: str, output: Path | None, title: str) -> None:
    text = render(result.table, fmt, output, title=title)
    if text is not None:
        click.echo(text, nl=False)
    else:
        click.echo(f"{result.table.num_rows:,} rows written to {output}", err=True)


@click.command()
@click.argument("name", required=False)
@click.option("--list", "list_", is_flag=True, help="List the named queries and their parameters.")
@click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE", help="A query parameter (repeatable).")
@click.option(
    "--via",
    type=click.Choice(queries.PATHS),
    default=None,
    help="Where the query runs (default: the faster path measured for the backend).",
)
@format_option
@output_option
@db_option
def query(
    name: str | None,
    list_: bool,
    params: tuple[str, ...],
    via: str | None,
    fmt: str,
    output: Path | None,
    db_url: str | None,
) -> None:
    """Run a named query (queries/NAME.sql) with bound parameters.

    \b
    Example:
        atlas query --list
        atlas query fact-neurons -p run_id=1 -p fact_id=0a1b...
        atlas query interference-pairs -p run_id=1 --format parquet -o pairs.parquet
    """
    if list_ or name is None:
        if name is None and not list_:
            raise click.UsageError("give a query NAME or --list")
        for q in queries.list_queries():
            click.echo(
                f"{q.name}\n    {q.purpose}\n    params: {q.describe_params()}\n    columns: {', '.join(q.columns)}"
            )
        return
    store = open_store(db_url)
    with Console(stderr=True).status(f"running {name} ..."):  # all pairs can take seconds; a no-op off a terminal
        result = queries.run_query(store, name, queries.parse_assignments(params), via=via)
    _emit(result, fmt, output, title=f"{name} ({store.backend}, {result.via}, {result.seconds * 1000:.0f} ms)")


@click.command()
@click.argument("statement")
@format_option
@output_option
@db_option
def sql(statement: str, fmt: str, output: Path | None, db_url: str | None) -> None:
    """Run one ad-hoc read-only SELECT; anything that could write is refused, not run.

    \b
    Example:
        atlas sql "SELECT relation_id, COUNT(*) AS n FROM facts GROUP BY 1 ORDER BY 2 DESC"
    """
    store = open_store(db_url)
    result = run_sql(store, statement)
    _emit(result, fmt, output, title=f"{store.backend}, {result.seconds * 1000:.0f} ms")
