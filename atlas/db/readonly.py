"""Ad-hoc read-only SQL (`atlas sql`): one statement that only reads the atlas, and nothing else.

Layers, each enough on its own for most escapes:
1. the statement: exactly one SELECT-like statement (DuckDB's parser classifies it for both
   backends) calling no function that acts on the server instead of the atlas's rows
   (`refused_function`: large objects, advisory locks, NOTIFY, signals to backends, settings,
   sequences, functions that run SQL given as text);
2. where it runs: `atlas.db.sandbox.ReadOnlyAtlas` (on PostgreSQL a connection that LOGS IN as
   `atlas_reader` in a READ ONLY transaction; on DuckDB a read-only connection without file or
   network access nor extension loading, its configuration locked, and a memory limit);
3. how long and how much: `--timeout` (PostgreSQL: ``SET LOCAL statement_timeout`` plus a deadline
   over the fetches, the server-side statement cancelled when the client stops; DuckDB: an
   interrupt from a timer), and rows travel in batches: a caller keeps at most ``max_rows`` of them
   (a terminal) or streams every batch to a sink (a file).
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from atlas.db.queries import QueryResult, normalise
from atlas.db.sandbox import ReadOnlyAtlas, SqlLimits
from atlas.db.sqlfile import strip_comments
from atlas.db.store import Store
from atlas.errors import InputError

_READ_ONLY_TYPES = {duckdb.StatementType.SELECT}
_FIRST_WORD = re.compile(r"^\s*\(*\s*([A-Za-z]+)")
_READING_KEYWORDS = {"select", "with", "values", "from", "table", "summarize", "describe", "show"}

# functions that act on the server, not on the atlas's rows (PostgreSQL grants several to PUBLIC:
# lo_from_bytea, pg_advisory_lock, pg_notify, pg_terminate_backend of the same role), and
# functions that run SQL given as a string (which no check of the statement's text would see)
_REFUSED = re.compile(
    r"^(pg_.*|lo_.*|dblink.*|set_config|nextval|setval|currval|txid_.*|ts_stat|.*_to_xml.*|query_to_.*)$"
)
_ALLOWED = {"pg_typeof", "pg_column_size", "pg_sleep"}  # harmless: pg_sleep is bounded by --timeout


@dataclass
class SqlResult(QueryResult):
    n_rows: int = 0  # rows kept (or streamed to the sink)
    truncated: bool = False  # the statement had more rows than `max_rows`


Sink = Callable[[pa.Table], None]


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
    name = refused_function(stripped)
    if name:
        raise InputError(
            f"refused: function {name}() acts on the server, not on the atlas's rows; `atlas sql` calls no "
            "pg_*/lo_* function (except pg_typeof, pg_column_size, pg_sleep), set_config, sequence or dblink"
        )
    return stripped


def refused_function(sql: str) -> str | None:
    """The first function called in ``sql`` that user SQL may not call, or None.

    Tokens come from DuckDB's tokenizer, so names inside string literals and comments are not
    calls; quoted and schema-qualified names (``"lo_unlink"(...)``, ``pg_catalog.pg_notify(...)``) are."""
    tokens = duckdb.tokenize(sql)
    for i, (start, kind) in enumerate(tokens):
        if kind not in (duckdb.token_type.identifier, duckdb.token_type.keyword):
            continue
        end = tokens[i + 1][0] if i + 1 < len(tokens) else len(sql)
        name = sql[start:end].strip().strip('"').lower()
        if sql[end : end + 1] == "(" and _REFUSED.match(name) and name not in _ALLOWED:
            return name
    return None


def run_sql(store: Store, sql: str, limits: SqlLimits | None = None, sink: Sink | None = None) -> SqlResult:
    """Run one ad-hoc read-only statement on ``store`` (natively, sandboxed: see the module docstring).

    Without ``sink`` the result keeps at most ``limits.max_rows`` rows (``truncated`` says whether
    there were more); with one, every batch goes to it and the result holds no rows.
    """
    statement = check_read_only(sql)
    with ReadOnlyAtlas(store, limits or SqlLimits()) as atlas, _sigterm_as_interrupt():
        return run_checked(atlas, statement, sink)


def run_checked(atlas: ReadOnlyAtlas, statement: str, sink: Sink | None = None) -> SqlResult:
    """A statement that passed `check_read_only`, on an open `ReadOnlyAtlas` (a server's), within
    its limits: rows kept up to ``max_rows`` or all given to ``sink``."""
    started = time.perf_counter()
    kept: list[pa.Table] = []
    n, truncated, limit = 0, False, atlas.limits.max_rows
    with atlas.begin() as conn:
        for batch in atlas.stream(conn, statement):
            batch = normalise(batch)
            if sink is not None:
                sink(batch)
                n += batch.num_rows
                continue
            room = batch.num_rows if limit is None else limit - n
            kept.append(batch.slice(0, room))
            n += min(room, batch.num_rows)
            if batch.num_rows > room:
                truncated = True
                break
    table = pa.concat_tables(kept) if kept else pa.table({})
    return SqlResult(table, "native", time.perf_counter() - started, n, truncated)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt while the statement runs (main thread only), so the
    server-side statement is cancelled instead of running on after the client is gone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
