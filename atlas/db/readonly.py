"""Ad-hoc read-only SQL (`atlas sql`): one statement that only reads the atlas, and nothing else.

Layers, each enough on its own for most escapes:
1. the statement: exactly one SELECT-like statement (DuckDB's parser classifies it for both
   backends) calling no function that acts on the server instead of the atlas's rows
   (`refused_function`: large objects, advisory locks, NOTIFY, signals to backends, settings,
   sequences, functions that run SQL given as text);
2. where it runs: on PostgreSQL a connection that LOGS IN as `atlas_reader` (SELECT on the atlas
   tables only, see `atlas.db.reader`: no server files, no replication, and no role to go back to
   with ``RESET ROLE``), in a READ ONLY transaction; on DuckDB a read-only connection without file
   or network access and without extension loading, its configuration locked so the SQL cannot
   turn them back on, and a memory limit;
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
import psycopg
import pyarrow as pa

from atlas.db.queries import QueryResult, arrow_from_rows, first_line, normalise
from atlas.db.reader import READER_ENV, READER_ROLE, reader_url
from atlas.db.sqlfile import strip_comments
from atlas.db.store import Store, busy_error, duckdb_path
from atlas.errors import InputError, StoreError

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
_DUCKDB_LOCKED = {
    "enable_external_access": False,  # no files, no URLs: read_csv, read_text, read_blob, glob, COPY
    "autoinstall_known_extensions": False,  # sqlite_scan & co must not install or load anything
    "autoload_known_extensions": False,
}


@dataclass(frozen=True)
class SqlLimits:
    """How long, how many rows and how much memory one ad-hoc statement gets."""

    timeout_s: float = 30.0
    max_rows: int | None = 1000  # rows kept for a terminal; None: every row (given to a sink)
    memory_limit: str = "1GB"  # DuckDB
    reader_url: str | None = None  # PostgreSQL: the reader role's URL (default: the store's, user swapped)
    batch_rows: int = 10_000


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


def run_sql(store: Store, sql: str, limits: SqlLimits = SqlLimits(), sink: Sink | None = None) -> SqlResult:
    """Run one ad-hoc read-only statement on ``store`` (natively, sandboxed: see the module docstring).

    Without ``sink`` the result keeps at most ``limits.max_rows`` rows (``truncated`` says whether
    there were more); with one, every batch goes to it and the result holds no rows.
    """
    statement = check_read_only(sql)
    started = time.perf_counter()
    kept: list[pa.Table] = []
    n, truncated, columns = 0, False, None
    with _errors_as_one_line(limits):
        runner = _postgres_batches if store.backend == "postgresql" else _duckdb_batches
        with _sigterm_as_interrupt(), runner(store, statement, limits) as batches:
            for batch in batches:
                batch = normalise(batch)
                columns = columns or batch.schema
                if sink is not None:
                    sink(batch)
                    n += batch.num_rows
                    continue
                room = batch.num_rows if limits.max_rows is None else limits.max_rows - n
                kept.append(batch.slice(0, room))
                n += min(room, batch.num_rows)
                if batch.num_rows > room:
                    truncated = True
                    break
    table = pa.concat_tables(kept) if kept else pa.table({})
    return SqlResult(table, "native", time.perf_counter() - started, n, truncated)


@contextmanager
def _postgres_batches(store: Store, statement: str, limits: SqlLimits) -> Iterator[Iterator[pa.Table]]:
    url = reader_url(store.url, limits.reader_url)
    try:
        conn = psycopg.connect(url, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise StoreError(
            f"cannot connect as the reader role {READER_ROLE} ({first_line(exc)}): run `atlas db upgrade` "
            f"(it creates the role), or give the reader's URL with --reader-url or ${READER_ENV}"
        ) from None
    try:
        conn.execute("SET TRANSACTION READ ONLY")
        conn.execute(f"SET LOCAL statement_timeout = {max(1, int(limits.timeout_s * 1000))}")
        with conn.cursor(name="atlas_sql") as cur:  # server-side: rows come in batches, never all at once
            cur.execute(statement)
            yield _fetch_batches(cur, limits)
    except BaseException:
        conn.cancel_safe()  # the client stops (Ctrl-C, SIGTERM, an error): so does the server
        raise
    finally:
        conn.rollback()
        conn.close()


def _fetch_batches(cur: psycopg.ServerCursor, limits: SqlLimits) -> Iterator[pa.Table]:
    names = [d.name for d in cur.description or []]
    deadline = time.monotonic() + limits.timeout_s
    first = True
    while True:
        rows = cur.fetchmany(limits.batch_rows)
        if rows or first:
            yield arrow_from_rows(names, rows)
        if len(rows) < limits.batch_rows:
            return
        if time.monotonic() > deadline:
            raise _Timeout()
        first = False


@contextmanager
def _duckdb_batches(store: Store, statement: str, limits: SqlLimits) -> Iterator[Iterator[pa.Table]]:
    path = duckdb_path(store.url)
    if not path or path == ":memory:":
        raise InputError("`atlas sql` needs a DuckDB file, not an in-memory database")
    try:
        con = duckdb.connect(path, read_only=True, config={**_DUCKDB_LOCKED, "memory_limit": limits.memory_limit})
    except duckdb.IOException as exc:
        raise busy_error(path, exc) from None
    timer = threading.Timer(limits.timeout_s, con.interrupt)
    try:
        con.execute("SET lock_configuration = true")  # from here on, SQL cannot SET the above back
        timer.start()
        reader = con.execute(statement).to_arrow_reader(limits.batch_rows)
        yield _arrow_batches(reader, timer)
    finally:
        timer.cancel()
        con.close()


def _arrow_batches(reader: pa.RecordBatchReader, timer: threading.Timer) -> Iterator[pa.Table]:
    yielded = False
    try:
        for batch in reader:
            yielded = True
            yield pa.Table.from_batches([batch])
    except duckdb.InterruptException:
        raise _Timeout() if timer.finished.is_set() else KeyboardInterrupt() from None
    if not yielded:
        yield reader.schema.empty_table()


class _Timeout(Exception):
    pass


@contextmanager
def _errors_as_one_line(limits: SqlLimits) -> Iterator[None]:
    try:
        yield
    except (_Timeout, duckdb.InterruptException, psycopg.errors.QueryCanceled):
        raise InputError(f"query cancelled: it ran past --timeout {limits.timeout_s:g} s") from None
    except psycopg.errors.InsufficientPrivilege as exc:
        raise InputError(
            f"refused: {first_line(exc)} (`atlas sql` runs as role {READER_ROLE}: SELECT on the atlas tables only)"
        ) from None
    except duckdb.PermissionException as exc:
        raise InputError(f"refused: {first_line(exc)} (`atlas sql` reads the atlas only, no files)") from None
    except duckdb.OutOfMemoryException as exc:
        raise InputError(f"query stopped: {first_line(exc)} (memory limit {limits.memory_limit})") from None
    except (duckdb.Error, psycopg.Error) as exc:
        raise InputError(f"query failed: {first_line(exc)}") from None


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
