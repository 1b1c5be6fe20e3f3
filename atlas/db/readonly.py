"""Ad-hoc read-only SQL (`atlas sql`): one statement that only reads, refused before it runs otherwise.

Defence in depth: DuckDB's parser classifies the statement for both backends, and it runs in a
READ ONLY transaction on PostgreSQL and on a read-only connection on DuckDB.
"""

from __future__ import annotations

import re
import time

import duckdb
import psycopg
import sqlalchemy as sa

from atlas.db.queries import QueryResult, arrow_from_rows, first_line, normalise
from atlas.db.sqlfile import strip_comments
from atlas.db.store import Store
from atlas.errors import InputError

_READ_ONLY_TYPES = {duckdb.StatementType.SELECT}
_FIRST_WORD = re.compile(r"^\s*\(*\s*([A-Za-z]+)")
_READING_KEYWORDS = {"select", "with", "values", "from", "table", "summarize", "describe", "show"}


def check_read_only(sql: str) -> str:
    """``sql`` if it is exactly one statement that only reads; otherwise refused, never run.

    Classified by DuckDB's parser for both backends (its statement types), plus the leading
    keyword: DuckDB rewrites ``PRAGMA`` into a SELECT, and a PRAGMA may change settings.
    """
    stripped = strip_comments(sql)
    try:
        statements = duckdb.extract_statements(stripped)
    except duckdb.Error as exc:
        raise InputError(f"cannot parse the statement: {str(exc).splitlines()[0]}") from None
    if len(statements) != 1:
        raise InputError(f"refused: {len(statements)} statements; give exactly one read-only SELECT")
    kind = statements[0].type
    word = (_FIRST_WORD.match(stripped) or [None, ""])[1].lower()
    if kind not in _READ_ONLY_TYPES or word not in _READING_KEYWORDS:
        label = word.upper() or kind.name
        raise InputError(f"refused: {label} statement ({kind.name}); `atlas sql` runs read-only SELECTs only")
    return stripped


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
                table = arrow_from_rows(
                    [d.name for d in cur.description or []], cur.fetchall() if cur.description else []
                )
        else:
            path = store.engine.url.database
            if not path or path == ":memory:":
                raise InputError("`atlas sql` needs a DuckDB file, not an in-memory database")
            with duckdb.connect(path, read_only=True) as con:
                table = con.execute(statement).to_arrow_table()
    except (duckdb.Error, psycopg.Error, sa.exc.DBAPIError) as exc:
        raise InputError(f"query failed: {first_line(exc)}") from exc
    return QueryResult(normalise(table), "native", time.perf_counter() - started)
