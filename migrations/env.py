"""Alembic environment: one history for PostgreSQL and DuckDB.

The URL comes from the caller (``atlas.migrate`` puts it in the config's attributes) or, when alembic
is run by hand, from ``$ATLAS_DB`` / ``./atlas.duckdb``. DuckDB has no alembic implementation of its
own, so ``atlas.migrate`` registers a minimal one; it behaves like the default (transactional DDL).
"""

from __future__ import annotations

from alembic import context

import atlas.db.migrate  # noqa: F401  (registers alembic's DuckDB implementation)
from atlas.db.schema import metadata
from atlas.db.store import make_engine, resolve_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url())
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    return resolve_url(context.config.attributes.get("url") or context.config.get_main_option("sqlalchemy.url"))


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
