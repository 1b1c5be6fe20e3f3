"""Shared fixtures: a real DuckDB file and a real PostgreSQL database for every store test.

PostgreSQL comes from ``$ATLAS_TEST_PG`` (a server URL; default: the local socket). Each pytest
process creates its own database there, so parallel runs never share state. When no server answers,
PostgreSQL tests are skipped on a developer machine and FAIL on CI (``CI`` set), where a missing
PostgreSQL is a broken environment, not an excuse.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from atlas.db import migrate
from atlas.db.schema import metadata
from atlas.db.store import Store

PG_SERVER = os.environ.get("ATLAS_TEST_PG", "postgresql+psycopg:///postgres")
BACKENDS = ("duckdb", "postgresql")


def _admin_engine() -> sa.Engine:
    return sa.create_engine(PG_SERVER, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this pytest process, dropped at the end."""
    name = f"atlas_test_{os.getpid()}"
    try:
        admin = _admin_engine()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required on CI and did not answer at {PG_SERVER}: {exc}")
        pytest.skip(f"no PostgreSQL at {PG_SERVER}")
    url = sa.make_url(PG_SERVER).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def _migrated_duckdb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DuckDB file migrated once to head; tests get copies of it."""
    path = tmp_path_factory.mktemp("template") / "atlas.duckdb"
    migrate.upgrade(Store(f"duckdb:///{path}"))
    return path


@pytest.fixture(scope="session")
def _migrated_pg(pg_url: str) -> str:
    migrate.upgrade(Store(pg_url))
    return pg_url


def _empty_all_tables(store: Store) -> None:
    with store.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A migrated, empty atlas on each backend."""
    if backend == "duckdb":
        path = tmp_path / "atlas.duckdb"
        shutil.copy(request.getfixturevalue("_migrated_duckdb"), path)
        s = Store(f"duckdb:///{path}")
        yield s
        s.dispose()
    else:
        s = Store(request.getfixturevalue("_migrated_pg"))
        _empty_all_tables(s)
        yield s
        _empty_all_tables(s)
        s.dispose()


@pytest.fixture
def blank_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no atlas schema at all, on each backend (for migration tests)."""
    if backend == "duckdb":
        yield f"duckdb:///{tmp_path / 'blank.duckdb'}"
        return
    url = request.getfixturevalue("pg_url")
    s = Store(url)
    migrate.downgrade(s, "base") if migrate.current_revision(s) else None
    yield url
    _reset_to_head(s)
    s.dispose()


def _reset_to_head(store: Store) -> None:
    """Drop whatever a migration test left (even a bogus version) and migrate to head again:
    ``store`` tests on PostgreSQL share this database and expect the current schema."""
    with store.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    migrate.upgrade(store)
