"""Named SQL queries over an atlas: ``queries/<name>.sql``, bound and run.

Why it is built this way:

* A query is a plain SQL file read by the one loader, `atlas.db.sqlfile` (header with purpose,
  typed ``-- params:`` and ``-- columns:``), so that people can read and run it by hand, and so
  that ``atlas query --list`` and the error messages describe it without a second source of truth.
* Parameters are converted to their declared types and always bound by the driver, never
  formatted into the text: a parameter value can never become SQL.
* One text runs on every path. ``native`` runs it on the store's own backend; ``duckdb`` runs it in
  DuckDB, which on a PostgreSQL atlas reads the tables through DuckDB's PostgreSQL extension
  (``atlas.db.mirror``); on a DuckDB atlas the two are the same. Floats are reported to 10
  significant digits so that the summation order of a backend or a parallel plan does not leak into
  results: every path returns the same rows.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import psycopg
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import Connection

import queries as _queries_package
from atlas.db.mirror import PostgresMirror, raw_duckdb
from atlas.db.sqlfile import SqlFile, executable_sql, parse_sql_file
from atlas.db.store import Store
from atlas.errors import InputError, NotFound, StoreError

QUERY_DIR = Path(list(_queries_package.__path__)[0])  # __path__: also right where queries/ resolves as a namespace
PATHS = ("native", "duckdb")
FLOAT_DIGITS = 10

# The faster path for each query on a PostgreSQL atlas, measured by bench/query_speed.py on a
# PARAREL-sized synthetic atlas (BENCHMARKS.md, 2026-11-21): PostgreSQL's indexes win the point
# lookups (a fact, a neuron, a relation: 1-70 ms native against 0.05-6 s through DuckDB, which
# scans the tables it reads); DuckDB wins the whole-run aggregations 3-5x even counting its scan
# of PostgreSQL. Unlisted queries run natively. On a DuckDB atlas both paths are one.
POSTGRES_DEFAULT_PATH: dict[str, str] = {
    "hub-neurons": "duckdb",  # 2.4 s native, 0.66 s duckdb
    "interference-pairs": "duckdb",  # 30 s native, 5.7 s duckdb
    "layer-distribution": "duckdb",  # 1.9 s native, 0.59 s duckdb
    "relation-overlap": "duckdb",  # 2.9 s native, 0.79 s duckdb
    "run-diff": "duckdb",  # 1.9 s native, 0.77 s duckdb
}


@dataclass
class QueryResult:
    """The rows of one run (an Arrow table), with the path that ran it and how long it took.

    Arrow, not Python tuples, because large results (all interfering pairs: ~10^6 rows) go on to
    Parquet files or audits; ``rows`` converts on demand.
    """

    table: pa.Table
    via: str
    seconds: float

    @property
    def columns(self) -> list[str]:
        return list(self.table.column_names)

    @functools.cached_property
    def rows(self) -> list[tuple]:
        return list(zip(*(col.to_pylist() for col in self.table.columns))) if self.table.num_columns else []


# --- the catalogue ----------------------------------------------------------------------------


@functools.cache
def _catalogue() -> dict[str, SqlFile]:
    out = {}
    for path in sorted(QUERY_DIR.glob("*.sql")):
        query = parse_sql_file(path)
        if not query.columns:
            raise ValueError(f"{path}: header has no '-- columns:' line")
        out[path.stem] = query
    return out


def list_queries() -> list[SqlFile]:
    """Every named query, sorted by name."""
    return list(_catalogue().values())


def load_query(name: str) -> SqlFile:
    """The named query ``name``; an unknown name is refused with the list of known ones."""
    try:
        return _catalogue()[name]
    except KeyError:
        raise NotFound(f"unknown query {name!r}; available: {', '.join(_catalogue())}") from None


# --- parameters -------------------------------------------------------------------------------


def parse_assignments(pairs: Sequence[str]) -> dict[str, str]:
    """``["key=value", ...]`` from the command line as a dict (values stay text until bound)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"parameter {pair!r} is not key=value")
        out[key.strip()] = value
    return out


# --- running ----------------------------------------------------------------------------------


def default_path(store: Store, name: str) -> str:
    """The path a query takes when none is asked for (the faster one measured for the backend)."""
    if store.backend == "postgresql":
        return POSTGRES_DEFAULT_PATH.get(name, "native")
    return "native"


def run_query(
    store: Store,
    name: str,
    params: Mapping[str, Any] | None = None,
    via: str | None = None,
    mirror: PostgresMirror | None = None,
    conn: Connection | None = None,
) -> QueryResult:
    """Run the named query on ``store`` by ``via`` (``native``/``duckdb``; None: the default path).

    By default each call opens its own read-only transaction. A caller running many queries can
    pass ``conn`` (an open ``store.begin()`` connection: one snapshot, no reconnecting) and, on a
    PostgreSQL atlas, ``mirror`` (one DuckDB connection, and its snapshot if it made one).
    """
    query = load_query(name)
    values = query.bind(params or {})
    via = via or default_path(store, name)
    if via not in PATHS:
        raise InputError(f"unknown path {via!r}; use one of {', '.join(PATHS)}")
    started = time.perf_counter()
    try:
        if via == "duckdb" and store.backend == "postgresql":
            table = normalise(_run_mirrored(store, executable_sql(query.sql, "duckdb"), values, mirror))
        elif conn is not None:
            table = run_on(conn, query, values)
        else:
            with store.begin() as own:
                if store.backend == "postgresql":
                    own.exec_driver_sql("SET TRANSACTION READ ONLY")
                table = run_on(own, query, values)
    except (sa.exc.DBAPIError, duckdb.Error, psycopg.Error) as exc:
        raise StoreError(f"query {name} failed ({via}): {first_line(exc)}") from exc
    return QueryResult(table, via, time.perf_counter() - started)


def run_on(conn: Connection, sql_file: SqlFile, given: Mapping[str, Any]) -> pa.Table:
    """A named query or statement, bound (``given`` checked against its header) and run inside
    ``conn``'s transaction, floats normalised."""
    return normalise(_execute(conn, sql_file.for_backend(conn.dialect.name), sql_file.bind(given)))


def _execute(conn: Connection, sql: str, values: Mapping[str, Any]) -> pa.Table:
    """On the store's own connection. A DuckDB atlas is queried through DuckDB's own API, which
    hands back Arrow directly (through SQLAlchemy, 10^6 rows cost seconds of Python objects); so
    on DuckDB both paths are one. PostgreSQL goes through SQLAlchemy and psycopg."""
    if conn.dialect.name == "duckdb":
        return raw_duckdb(conn).execute(executable_sql(sql, "duckdb"), dict(values)).to_arrow_table()
    result = conn.execute(sa.text(executable_sql(sql, "sqlalchemy")), dict(values))
    return arrow_from_rows(list(result.keys()), result.fetchall())


def _run_mirrored(store: Store, sql: str, values: Mapping[str, Any], mirror: PostgresMirror | None) -> pa.Table:
    if mirror is not None:
        return mirror.execute(sql, values)
    with PostgresMirror(store) as own:
        return own.execute(sql, values)


def arrow_from_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> pa.Table:
    """Driver rows as an Arrow table (types inferred from the values; names may repeat)."""
    arrays = [pa.array([r[i] for r in rows]) for i in range(len(columns))]
    return pa.Table.from_arrays(arrays, names=list(columns))


def normalise(table: pa.Table) -> pa.Table:
    """Float columns to ``FLOAT_DIGITS`` significant digits (see the module docstring for why)."""
    for i, field in enumerate(table.schema):
        if pa.types.is_floating(field.type):
            table = table.set_column(i, field.name, _round_significant(table.column(i)))
    return table


def _round_significant(column: pa.ChunkedArray) -> pa.Array:
    """Round to ``FLOAT_DIGITS`` significant digits, vectorised (a Python loop takes seconds on 10^6 rows)."""
    values = column.to_numpy().astype(np.float64)  # nulls become NaN; their mask is restored below
    finite = np.isfinite(values) & (values != 0)
    exponent = np.floor(np.log10(np.abs(np.where(finite, values, 1.0))))
    scale = 10.0 ** (FLOAT_DIGITS - 1 - exponent)
    rounded = np.where(finite, np.round(values * scale) / scale, values)
    return pa.array(rounded, type=pa.float64(), mask=column.is_null().to_numpy(zero_copy_only=False))


def first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    return text.splitlines()[0] if text else type(orig).__name__
