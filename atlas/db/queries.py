"""Named SQL queries over an atlas: load ``queries/<name>.sql``, check, bind and run them.

Why it is built this way:

* A query is a plain SQL file with a header (purpose, ``-- params:`` with types and defaults,
  ``-- columns:``) so that people can read and run it by hand, and so that ``atlas query --list``
  and the error messages can describe it without a second source of truth.
* The header is checked against the ``:named`` parameters the text really uses (found after
  stripping comments and string literals), so a header cannot silently drift from its SQL.
* Parameters are converted to their declared types and always bound by the driver, never
  formatted into the text: a parameter value can never become SQL.
* One text runs on every path. ``native`` runs it on the store's own backend; ``duckdb`` runs it in
  DuckDB, which on a PostgreSQL atlas reads the tables through DuckDB's PostgreSQL extension
  (``atlas.duckdb_mirror``); on a DuckDB atlas the two are the same. Floats are reported to 10 significant digits so that the summation
  order of a backend or a parallel plan does not leak into results: every path returns the same rows.
"""

from __future__ import annotations

import functools
import re
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
from atlas.db.store import Store

QUERY_DIR = Path(list(_queries_package.__path__)[0])  # __path__: also right where queries/ resolves as a namespace
PATHS = ("native", "duckdb")
PARAM_TYPES = {"int": int, "float": float, "text": str}
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


class QueryError(Exception):
    """A query that cannot run as asked (unknown name, bad parameter, refused statement)."""


@dataclass(frozen=True)
class Param:
    """One declared parameter: ``:name (type)`` or ``:name (type, default VALUE)``."""

    name: str
    type: str
    default: Any = None
    required: bool = True

    def describe(self) -> str:
        return f"{self.name} ({self.type})" if self.required else f"{self.name} ({self.type}, default {self.default})"


@dataclass(frozen=True)
class NamedQuery:
    """A query file: its name, header and SQL text."""

    name: str
    purpose: str
    params: tuple[Param, ...]
    columns: tuple[str, ...]
    sql: str
    path: Path

    def describe_params(self) -> str:
        return ", ".join(p.describe() for p in self.params) or "none"


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


# --- parsing ----------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<comment>--[^\n]*|/\*.*?\*/)
    | (?P<string>'(?:[^']|'')*'|"(?:[^"]|"")*")
    | (?P<cast>::)
    | (?P<param>:[A-Za-z_][A-Za-z0-9_]*)
    """,
    re.VERBOSE | re.DOTALL,
)


def sql_parameters(sql: str) -> list[str]:
    """The ``:named`` parameters ``sql`` uses, in order of first use, ignoring comments and strings."""
    names: list[str] = []
    for m in _TOKEN.finditer(sql):
        if m.lastgroup == "param" and m.group()[1:] not in names:
            names.append(m.group()[1:])
    return names


def executable_sql(sql: str, style: str) -> str:
    """``sql`` without comments, parameters written for a driver.

    ``style`` is ``sqlalchemy`` (``:name``, colons inside strings escaped for ``sa.text``) or
    ``duckdb`` (``$name``, DuckDB's own named-parameter syntax).
    """

    def replace(m: re.Match) -> str:
        kind, text = m.lastgroup, m.group()
        if kind == "comment":
            return " "
        if kind == "param":
            return text if style == "sqlalchemy" else "$" + text[1:]
        if kind == "string" and style == "sqlalchemy":
            return text.replace(":", "\\:")
        return text

    return _TOKEN.sub(replace, sql).strip().rstrip(";")


_PARAM_DECL = re.compile(r":(\w+)\s*\(\s*(\w+)\s*(?:,\s*default\s+([^)]*?))?\s*\)")


def parse_query(name: str, text: str, path: Path) -> NamedQuery:
    """Read a query file's header and check it against the parameters its SQL uses."""
    header: list[str] = []
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        header.append(line[2:].strip())
    purpose, params, columns = [], [], ()
    for line in header:
        if line.startswith("params:"):
            params.extend(_parse_param(name, path, m) for m in _PARAM_DECL.finditer(line))
        elif line.startswith("columns:"):
            columns = tuple(c.strip() for c in line.split(":", 1)[1].split(",") if c.strip())
        else:
            purpose.append(line)
    declared = [p.name for p in params]
    used = sql_parameters(text)
    if sorted(declared) != sorted(used):
        raise QueryError(f"{path}: header declares parameters {declared} but the SQL uses {used}")
    if not columns:
        raise QueryError(f"{path}: header has no '-- columns:' line")
    return NamedQuery(name, " ".join(purpose), tuple(params), columns, text, path)


def _parse_param(name: str, path: Path, m: re.Match) -> Param:
    pname, ptype, default = m.group(1), m.group(2), m.group(3)
    if ptype not in PARAM_TYPES:
        raise QueryError(f"{path}: parameter {pname} has unknown type {ptype!r} (use {', '.join(PARAM_TYPES)})")
    if default is None:
        return Param(pname, ptype)
    return Param(pname, ptype, _convert(name, Param(pname, ptype), default), required=False)


# --- the catalogue ----------------------------------------------------------------------------


@functools.cache
def _catalogue() -> dict[str, NamedQuery]:
    out = {}
    for path in sorted(QUERY_DIR.glob("*.sql")):
        out[path.stem] = parse_query(path.stem, path.read_text(), path)
    return out


def list_queries() -> list[NamedQuery]:
    """Every named query, sorted by name."""
    return list(_catalogue().values())


def load_query(name: str) -> NamedQuery:
    """The named query ``name``; an unknown name is refused with the list of known ones."""
    try:
        return _catalogue()[name]
    except KeyError:
        raise QueryError(f"unknown query {name!r}; available: {', '.join(_catalogue())}") from None


# --- parameters -------------------------------------------------------------------------------


def _convert(query: str, param: Param, value: Any) -> Any:
    kind = PARAM_TYPES[param.type]
    if isinstance(value, kind) and not isinstance(value, bool):
        return value
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return kind(value.strip()) if kind is not str else value
        except ValueError:
            pass
    raise QueryError(f"query {query}: parameter {param.name}={value!r} is not {param.type}")


def bind_params(query: NamedQuery, given: Mapping[str, Any]) -> dict[str, Any]:
    """The typed values of every parameter of ``query`` (defaults filled in).

    Unknown, missing and ill-typed parameters are refused with the query's parameter list.
    """
    known = {p.name: p for p in query.params}
    expected = f"parameters of {query.name}: {query.describe_params()}"
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise QueryError(f"query {query.name} has no parameter {', '.join(unknown)}; {expected}")
    values = {}
    for p in query.params:
        if p.name in given:
            try:
                values[p.name] = _convert(query.name, p, given[p.name])
            except QueryError as exc:
                raise QueryError(f"{exc}; {expected}") from None
        elif p.required:
            raise QueryError(f"query {query.name}: missing parameter {p.name}; {expected}")
        else:
            values[p.name] = p.default
    return values


def parse_assignments(pairs: Sequence[str]) -> dict[str, str]:
    """``["key=value", ...]`` from the command line as a dict (values stay text until bound)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise QueryError(f"parameter {pair!r} is not key=value")
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
    values = bind_params(query, params or {})
    via = via or default_path(store, name)
    if via not in PATHS:
        raise QueryError(f"unknown path {via!r}; use one of {', '.join(PATHS)}")
    started = time.perf_counter()
    try:
        if via == "duckdb" and store.backend == "postgresql":
            table = _run_mirrored(store, executable_sql(query.sql, "duckdb"), values, mirror)
        elif conn is not None:
            table = _execute(conn, query.sql, values)
        else:
            with store.begin() as own:
                if store.backend == "postgresql":
                    own.exec_driver_sql("SET TRANSACTION READ ONLY")
                table = _execute(own, query.sql, values)
    except (sa.exc.DBAPIError, duckdb.Error, psycopg.Error) as exc:
        raise QueryError(f"query {name} failed ({via}): {_first_line(exc)}") from exc
    return QueryResult(_normalise(table), via, time.perf_counter() - started)


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


def _normalise(table: pa.Table) -> pa.Table:
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


# --- ad-hoc read-only SQL ---------------------------------------------------------------------

_READ_ONLY_TYPES = {duckdb.StatementType.SELECT}
_FIRST_WORD = re.compile(r"^\s*\(*\s*([A-Za-z]+)")
_READING_KEYWORDS = {"select", "with", "values", "from", "table", "summarize", "describe", "show"}


def check_read_only(sql: str) -> str:
    """``sql`` if it is exactly one statement that only reads; otherwise refused, never run.

    Classified by DuckDB's parser for both backends (its statement types), plus the leading
    keyword: DuckDB rewrites ``PRAGMA`` into a SELECT, and a PRAGMA may change settings.
    """
    stripped = _strip_comments(sql)
    try:
        statements = duckdb.extract_statements(stripped)
    except duckdb.Error as exc:
        raise QueryError(f"cannot parse the statement: {str(exc).splitlines()[0]}") from None
    if len(statements) != 1:
        raise QueryError(f"refused: {len(statements)} statements; give exactly one read-only SELECT")
    kind = statements[0].type
    word = (_FIRST_WORD.match(stripped) or [None, ""])[1].lower()
    if kind not in _READ_ONLY_TYPES or word not in _READING_KEYWORDS:
        label = word.upper() or kind.name
        raise QueryError(f"refused: {label} statement ({kind.name}); `atlas sql` runs read-only SELECTs only")
    return stripped


def _strip_comments(sql: str) -> str:
    return _TOKEN.sub(lambda m: " " if m.lastgroup == "comment" else m.group(), sql).strip().rstrip(";")


def run_sql(store: Store, sql: str) -> QueryResult:
    """Run one ad-hoc read-only statement on ``store`` (natively).

    Defence in depth: besides the parser check, PostgreSQL runs it in a READ ONLY transaction and
    DuckDB on a connection opened read-only.
    """
    statement = check_read_only(sql)
    started = time.perf_counter()
    try:
        if store.backend == "postgresql":
            with store.begin() as conn:
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                cur = conn.connection.driver_connection.execute(statement)
                table = arrow_from_rows([d.name for d in cur.description or []], cur.fetchall() if cur.description else [])
        else:
            path = store.engine.url.database
            if not path or path == ":memory:":
                raise QueryError("`atlas sql` needs a DuckDB file, not an in-memory database")
            with duckdb.connect(path, read_only=True) as con:
                table = con.execute(statement).to_arrow_table()
    except (duckdb.Error, psycopg.Error, sa.exc.DBAPIError) as exc:
        raise QueryError(f"query failed: {_first_line(exc)}") from exc
    return QueryResult(_normalise(table), "native", time.perf_counter() - started)


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    return text.splitlines()[0] if text else type(orig).__name__
