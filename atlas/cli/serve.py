"""``atlas serve``: browse the atlas in a web browser (read-only), and ``atlas vocab``: store the
vocabulary projections of a run's neurons for the neuron pages."""

from __future__ import annotations

import click

from atlas.cli.common import db_option, open_store, options_of
from atlas.web.options import ServeOptions


@click.command()
@db_option
@options_of(ServeOptions)
@click.option(
    "--reader-url", envvar="ATLAS_READER_DB", default=None, metavar="URL", help="PostgreSQL: the reader role's URL."
)
def serve(db_url: str | None, reader_url: str | None, **settings: object) -> None:
    """Browse the atlas in a web browser: pages, search, SQL and a JSON API, read-only.

    It listens on http://HOST:PORT/ (default http://127.0.0.1:8765/).
    Pages: runs, a run's relations, a relation, a fact, a neuron (/run/RUN/neuron/LAYER/INDEX),
    edits and audits, search, the named queries and ad-hoc read-only SQL; every table downloads as
    CSV, Parquet or JSON; /api/openapi.json describes the API. The database is read through the
    same sandbox as `atlas sql` (PostgreSQL: the atlas_reader role; DuckDB: the file opened
    read-only, so stop the server before indexing into the same DuckDB file).

    \b
    Example:
        atlas serve                       # ./atlas.duckdb on http://127.0.0.1:8765/
        atlas serve --db postgresql+psycopg:///atlas --port 8000
    """
    import uvicorn  # only here: the other commands never start a server

    from atlas.web.app import FACTORY, configure

    options = ServeOptions(**settings)  # type: ignore[arg-type]
    store = open_store(db_url)  # refuses a missing or outdated schema before any worker starts
    configure(store.url, options, reader_url)
    click.echo(f"kn-atlas: serving {store!r} on http://{options.host}:{options.port}/ (Ctrl-C stops)")
    uvicorn.run(
        FACTORY, factory=True, host=options.host, port=options.port, workers=options.workers, log_level="warning"
    )


@click.command()
@click.argument("run")
@db_option
@click.option("--top-k", type=click.IntRange(min=1), default=20, show_default=True, help="Tokens kept per neuron.")
def vocab(run: str, db_url: str | None, top_k: int) -> None:
    """Store the top vocabulary tokens of every knowledge neuron of RUN.

    Each value slot is projected onto the vocabulary (through the final norm and the unembedding).

    The neuron pages of `atlas serve` show them; it computes missing ones on demand, but can only
    store them itself on PostgreSQL (it holds a DuckDB file read-only).

    \b
    Example:
        atlas vocab demo
    """
    from atlas.jobs.vocab import store_vocab

    n = store_vocab(open_store(db_url), run, k=top_k)
    click.echo(f"stored the top {top_k} tokens of {n} neurons of run {run}")
