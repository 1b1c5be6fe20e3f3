"""``atlas db``: create, upgrade and inspect the atlas schema."""

from __future__ import annotations

import click

from atlas.cli.common import db_option, open_store
from atlas.db import migrate


@click.group()
def db() -> None:
    """Create, upgrade and inspect the database schema.

    \b
    Example:
        atlas db upgrade
        atlas db info --db postgresql+psycopg:///atlas
    """


@db.command()
@db_option
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def upgrade(db_url: str | None, revision: str) -> None:
    """Create the atlas schema or bring it up to date (alembic upgrade).

    \b
    Example:
        atlas db upgrade --db postgresql+psycopg:///atlas
    """
    store = open_store(db_url, check_schema=False)
    before = migrate.current_revision(store)
    migrate.upgrade(store, revision)
    after = migrate.current_revision(store)
    click.echo(
        f"{store.backend}: schema {before or 'none'} -> {after}"
        if before != after
        else f"{store.backend}: schema already at {after}"
    )


@db.command()
@db_option
@click.argument("revision")
def downgrade(db_url: str | None, revision: str) -> None:
    """Step the schema back to REVISION (``base`` removes every atlas table).

    \b
    Example:
        atlas db downgrade base
    """
    store = open_store(db_url, check_schema=False)
    migrate.downgrade(store, revision)
    click.echo(f"{store.backend}: schema now {migrate.current_revision(store) or 'none'}")


@db.command()
@db_option
def info(db_url: str | None) -> None:
    """Backend, schema version and row counts per table.

    \b
    Example:
        atlas db info
    """
    store = open_store(db_url)
    click.echo(f"database: {store!r}")
    click.echo(f"backend:  {store.backend}")
    click.echo(f"schema:   {migrate.current_revision(store)} (code head {migrate.head_revision()})")
    for table, count in migrate.table_counts(store).items():
        click.echo(f"{table:20s} {count:>12,d}")
