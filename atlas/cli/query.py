"""``atlas query`` and ``atlas sql``: ask the atlas questions in SQL."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click
from rich.console import Console

from atlas.cli.common import db_option, open_store
from atlas.cli.output import FORMATS, FileSink, render, writable_file
from atlas.db import queries
from atlas.db.reader import READER_ENV, READER_ROLE
from atlas.db.readonly import SqlLimits, SqlResult, run_sql
from atlas.errors import InputError

format_option = click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True, help="Output format."
)
output_option = click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=writable_file,
    help="Write to FILE (required for parquet).",
)
_LIMITS = SqlLimits()


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
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=_LIMITS.timeout_s,
    show_default=True,
    metavar="SECONDS",
    help="Cancel the statement (on the server too) after this long.",
)
@click.option(
    "--max-rows",
    type=click.IntRange(min=1),
    default=_LIMITS.max_rows,
    show_default=True,
    help="Rows printed (or written as --format table); -o FILE as csv/json/parquet streams every row.",
)
@click.option(
    "--reader-url",
    envvar=READER_ENV,
    default=None,
    metavar="URL",
    help=f"PostgreSQL: URL to log in as {READER_ROLE} (default: --db with that user). Env: {READER_ENV}.",
)
@db_option
def sql(
    statement: str,
    fmt: str,
    output: Path | None,
    timeout: float,
    max_rows: int,
    reader_url: str | None,
    db_url: str | None,
) -> None:
    """Run one ad-hoc read-only SELECT on the atlas's tables, sandboxed; anything else is refused.

    On PostgreSQL it runs as role atlas_reader (SELECT on the atlas tables only) in a READ ONLY
    transaction; on DuckDB on a read-only connection with no file or network access. Functions
    that act on the server (pg_*, lo_*, set_config, sequences) are refused before it runs.

    \b
    Example:
        atlas sql "SELECT relation_id, COUNT(*) AS n FROM facts GROUP BY 1 ORDER BY 2 DESC"
        atlas sql "SELECT * FROM prompt_scores" --format parquet -o scores.parquet --timeout 600
    """
    store = open_store(db_url)
    limits = replace(_LIMITS, timeout_s=timeout, max_rows=max_rows, reader_url=reader_url)
    if output is not None and fmt != "table":
        _stream(store, statement, limits, FileSink(fmt, output))
        return
    if fmt == "parquet":
        raise InputError("--format parquet needs --output FILE")
    result = run_sql(store, statement, limits)
    _emit(result, fmt, output, title=f"{store.backend}, {result.seconds * 1000:.0f} ms")
    if result.truncated:
        click.echo(f"showing the first {max_rows:,} rows of more: --max-rows N, or -o FILE for every row", err=True)


def _stream(store, statement: str, limits: SqlLimits, sink: FileSink) -> SqlResult:
    ok = False
    try:
        result = run_sql(store, statement, replace(limits, max_rows=None), sink)
        ok = True
    finally:
        sink.close(ok)
    click.echo(f"{result.n_rows:,} rows written to {sink.path}", err=True)
    return result
