"""Schema migrations as library calls: ``atlas db upgrade`` and the schema-version check.

The alembic history lives in ``migrations/`` (installed as a package, so it works from a wheel as
well as from a checkout); these functions build its config in code instead of reading a path-bound
``alembic.ini``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.ddl.impl import DefaultImpl
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util.exc import CommandError

import migrations
from atlas.db.store import Store, duckdb_path
from atlas.errors import InputError, SchemaOutOfDate

SCRIPT_LOCATION = str(Path(migrations.__file__).parent)


class DuckDBImpl(DefaultImpl):
    """Lets alembic drive duckdb-engine connections (alembic ships no DuckDB implementation).

    Defining the class registers it for the ``duckdb`` dialect; DuckDB's DDL is transactional.
    """

    __dialect__ = "duckdb"
    transactional_ddl = True


def alembic_config(store: Store) -> Config:
    """An alembic config aimed at ``store`` (its URL travels in ``attributes``, never in a file)."""
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    cfg.attributes["url"] = store.url
    return cfg


def head_revision() -> str:
    """The newest revision this code knows."""
    script = ScriptDirectory(SCRIPT_LOCATION)
    heads = script.get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"the migration history has {len(heads)} heads: {heads}")
    return heads[0]


def current_revision(store: Store) -> str | None:
    """The revision the database is at, or None for a database without the atlas schema."""
    with store.begin() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(store: Store, revision: str = "head") -> None:
    _refuse_memory(store)
    _alembic(command.upgrade, store, revision)


def downgrade(store: Store, revision: str) -> None:
    _refuse_memory(store)
    _alembic(command.downgrade, store, revision)


def _alembic(step: Callable[[Config, str], None], store: Store, revision: str) -> None:
    """Run an alembic command; an unknown or unreachable revision is one line, the schema untouched
    (each migration runs in one transaction)."""
    script = ScriptDirectory(SCRIPT_LOCATION)
    known = ["base", "head"] + [r.revision for r in reversed(list(script.walk_revisions()))]
    try:
        step(alembic_config(store), revision)
    except (CommandError, RevisionError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"revision {revision!r}: {reason} (known: {', '.join(known)})") from None


def _refuse_memory(store: Store) -> None:
    if store.backend == "duckdb" and duckdb_path(store.url) in ("", ":memory:"):
        raise InputError(
            "an in-memory DuckDB database lasts one connection: a schema made there would be gone at once; "
            "give a file (--db duckdb:///atlas.duckdb)"
        )


def require_current(store: Store) -> None:
    """Refuse to work on a database whose schema is missing or older than this code."""
    current = current_revision(store)
    head = head_revision()
    if current is None:
        raise SchemaOutOfDate(f"{store!r} has no atlas schema: run `atlas db upgrade`")
    if current != head:
        raise SchemaOutOfDate(f"{store!r} is at schema {current}, this atlas needs {head}: run `atlas db upgrade`")


def table_counts(store: Store) -> dict[str, int]:
    """Row counts of every atlas table (for ``atlas db info``)."""
    from atlas.db.schema import metadata

    with store.begin() as conn:
        return {
            t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one() for t in metadata.sorted_tables
        }
