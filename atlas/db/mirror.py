"""DuckDB reading a PostgreSQL atlas: the ``duckdb`` query path.

DuckDB's analytical engine beats PostgreSQL on large joins and aggregations (all pairs of
interfering facts), but the data lives in PostgreSQL. DuckDB's PostgreSQL extension bridges the
two. The extension cannot be downloaded on these machines, so it is loaded from the pinned wheel
``duckdb-extension-postgres-scanner`` (built for this exact DuckDB version).

Two modes, measured in bench/query_speed.py:

* ``attach``: the PostgreSQL database is ATTACHed read-only and every query scans the tables it
  needs (always current, nothing copied up front).
* ``snapshot``: the tables a query reads are copied once into an in-memory DuckDB and reused by
  every later query on this mirror (pays the copy once; later queries run at DuckDB speed; does
  not see later writes).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb
import duckdb_extension_postgres_scanner
import pyarrow as pa
from sqlalchemy.engine import Connection

from atlas.db.schema import metadata
from atlas.db.store import Store
from atlas.errors import StoreError

EXTENSION = (
    Path(duckdb_extension_postgres_scanner.__file__).parent
    / "extensions"
    / f"v{duckdb.__version__}"
    / "postgres_scanner.duckdb_extension"
)
MODES = ("attach", "snapshot")
_TABLE_NAMES = sorted(metadata.tables)


def raw_duckdb(conn: Connection) -> duckdb.DuckDBPyConnection:
    """The DuckDB connection under a SQLAlchemy connection of a DuckDB store."""
    return conn.connection.driver_connection


def libpq_dsn(store: Store) -> str:
    """A libpq connection string for ``store``'s PostgreSQL database.

    Host, port, user and database come from a live connection (so that a socket URL without a host
    finds the same socket directory psycopg used); the password from the URL.
    """
    with store.begin() as conn:
        info = conn.connection.driver_connection.info
        parts = {"host": info.host, "port": str(info.port), "user": info.user, "dbname": info.dbname}
    if store.engine.url.password:
        parts["password"] = store.engine.url.password
    return " ".join(f"{key}='{_libpq_quote(value)}'" for key, value in parts.items())


def _libpq_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def referenced_tables(sql: str) -> list[str]:
    """The atlas tables whose names occur in ``sql`` (what a snapshot must copy)."""
    return [name for name in _TABLE_NAMES if re.search(rf"\b{name}\b", sql)]


class PostgresMirror:
    """One DuckDB connection reading one PostgreSQL atlas (see the module docstring for modes)."""

    def __init__(self, store: Store, mode: str = "attach") -> None:
        if store.backend != "postgresql":
            raise StoreError(f"a PostgreSQL mirror needs a PostgreSQL store, not {store.backend}")
        if mode not in MODES:
            raise ValueError(f"unknown mirror mode {mode!r}; use one of {MODES}")
        if not EXTENSION.is_file():
            raise StoreError(
                f"DuckDB's PostgreSQL extension is missing at {EXTENSION} "
                f"(pip install duckdb-extension-postgres-scanner=={duckdb.__version__})"
            )
        self.mode = mode
        self.con = duckdb.connect()
        self.con.execute(f"LOAD '{_sql_quote(str(EXTENSION))}'")
        dsn = libpq_dsn(store)
        try:
            self.con.execute(f"ATTACH '{_sql_quote(dsn)}' AS pg (TYPE postgres, READ_ONLY)")
        except duckdb.Error as exc:
            self.con.close()
            raise StoreError(f"DuckDB cannot attach {store!r}: {str(exc).splitlines()[0]}") from exc
        if mode == "attach":
            self.con.execute("USE pg.public")
        self.copied: dict[str, float] = {}  # table -> seconds its snapshot took

    def snapshot(self, tables: list[str]) -> None:
        """Copy ``tables`` (those not copied yet) into the in-memory database."""
        for name in tables:
            if name not in self.copied:
                started = time.perf_counter()
                self.con.execute(f'CREATE TABLE memory.main."{name}" AS SELECT * FROM pg.public."{name}"')
                self.copied[name] = time.perf_counter() - started

    def execute(self, sql: str, values: Mapping[str, Any]) -> pa.Table:
        """Run ``sql`` (DuckDB ``$name`` parameters) and return its result as an Arrow table."""
        if self.mode == "snapshot":
            self.snapshot(referenced_tables(sql))
        return self.con.execute(sql, dict(values)).to_arrow_table()

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> PostgresMirror:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sql_quote(text: str) -> str:
    return text.replace("'", "''")
