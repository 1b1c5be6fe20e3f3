"""Read-only connections to an atlas: what `atlas sql` runs on, and what `atlas serve` reads through.

One object owns the connection policy (as datasette's database object does), so that a one-off
`atlas sql` and a long-running web server get the same guarantees from the database itself:

* PostgreSQL: connections that LOG IN as `atlas_reader` (SELECT on the atlas tables only, see
  `atlas.db.reader`), each transaction READ ONLY with ``SET LOCAL statement_timeout``;
* DuckDB: the file opened read-only, without file or network access and without extension
  loading, its configuration locked by the first connection (so no SQL can turn them back on),
  a memory limit, and a timer that interrupts a statement past its time.

Connections are pooled (``pool_size``): a server keeps a few open instead of paying the connect on
every page. A DuckDB file opened read-only can be read by other read-only processes, but not
written while it is open (DuckDB's one-writer rule): stop the server to index into the same file.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import duckdb
import psycopg
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from atlas.db.queries import arrow_from_rows, first_line
from atlas.db.reader import READER_ENV, READER_ROLE, reader_url
from atlas.db.store import Store, busy_error, duckdb_path
from atlas.errors import InputError, StoreError

DUCKDB_LOCKED = {
    "enable_external_access": False,  # no files, no URLs: read_csv, read_text, read_blob, glob, COPY
    "autoinstall_known_extensions": False,  # sqlite_scan & co must not install or load anything
    "autoload_known_extensions": False,
}


@dataclass(frozen=True)
class SqlLimits:
    """How long, how many rows and how much memory one read-only statement gets."""

    timeout_s: float = 30.0
    max_rows: int | None = 1000  # rows kept for a terminal or a page; None: every row (given to a sink)
    memory_limit: str = "1GB"  # DuckDB
    reader_url: str | None = None  # PostgreSQL: the reader role's URL (default: the store's, user swapped)
    batch_rows: int = 10_000
    threads: int | None = None  # DuckDB threads per statement (None: DuckDB's default, every core)


class Timeout(Exception):
    """A statement ran past its limit (turned into a one-line `InputError` by `errors_as_one_line`)."""


class ReadOnlyAtlas:
    """Pooled read-only connections to one atlas (see the module docstring). Use as a context manager
    or call ``close()``; ``begin()`` gives one read-only transaction."""

    def __init__(self, store: Store, limits: SqlLimits = SqlLimits(), pool_size: int = 1) -> None:
        self.store, self.limits, self.backend = store, limits, store.backend
        self._locked = False
        self._lock = threading.Lock()
        if self.backend == "postgresql":
            self.engine = sa.create_engine(
                reader_url(store.url, limits.reader_url),
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
                connect_args={"connect_timeout": 5},
            )
        else:
            path = duckdb_path(store.url)
            if not path or path == ":memory:":
                raise InputError("read-only access needs a DuckDB file, not an in-memory database")
            config = {**DUCKDB_LOCKED, "memory_limit": limits.memory_limit}
            if limits.threads:
                config["threads"] = limits.threads
            self.engine = sa.create_engine(
                store.url, connect_args={"read_only": True, "config": config}, pool_size=pool_size, max_overflow=0
            )
            sa.event.listen(self.engine, "connect", self._lock_configuration)

    def __enter__(self) -> ReadOnlyAtlas:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.engine.dispose()

    def _lock_configuration(self, dbapi_conn: object, _record: object) -> None:
        """The first connection locks the DuckDB instance's configuration; later ones share it."""
        with self._lock:
            if not self._locked:
                dbapi_conn.execute("SET lock_configuration = true")
                self._locked = True

    @contextmanager
    def begin(self, timeout_s: float | None = None) -> Iterator[Connection]:
        """One read-only transaction, stopped after ``timeout_s`` (default: the limits'); rolled back."""
        timeout_s = self.limits.timeout_s if timeout_s is None else timeout_s
        with errors_as_one_line(timeout_s, self.limits), self._connect() as conn:
            if self.backend == "postgresql":
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                conn.exec_driver_sql(f"SET LOCAL statement_timeout = {max(1, int(timeout_s * 1000))}")
                try:
                    yield conn
                except BaseException:
                    conn.connection.driver_connection.cancel_safe()  # the client stops: so does the server
                    raise
                finally:
                    conn.rollback()
                return
            timer = threading.Timer(timeout_s, conn.connection.driver_connection.interrupt)
            timer.start()
            try:
                yield conn
            except duckdb.InterruptException:
                raise Timeout() if timer.finished.is_set() else KeyboardInterrupt() from None
            finally:
                timer.cancel()
                conn.rollback()

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        try:
            conn = self.engine.connect()
        except sa.exc.DBAPIError as exc:
            if self.backend == "duckdb":
                raise busy_error(duckdb_path(self.store.url), exc) from None
            raise StoreError(
                f"cannot connect as the reader role {READER_ROLE} ({first_line(exc)}): run `atlas db upgrade` "
                f"(it creates the role), or give the reader's URL with --reader-url or ${READER_ENV}"
            ) from None
        with conn:
            yield conn

    def stream(self, conn: Connection, statement: str) -> Iterator[pa.Table]:
        """The rows of one ad-hoc statement (already checked) in batches, inside ``conn``'s transaction."""
        batch_rows = self.limits.batch_rows
        if self.backend == "duckdb":
            reader = conn.connection.driver_connection.execute(statement).to_arrow_reader(batch_rows)
            yielded = False
            for batch in reader:
                yielded = True
                yield pa.Table.from_batches([batch])
            if not yielded:
                yield reader.schema.empty_table()
            return
        with conn.connection.driver_connection.cursor(name="atlas_sql") as cur:  # server-side: rows in batches
            cur.execute(statement)
            yield from _fetch_batches(cur, batch_rows, time.monotonic() + self.limits.timeout_s)


def _fetch_batches(cur: psycopg.ServerCursor, batch_rows: int, deadline: float) -> Iterator[pa.Table]:
    names = [d.name for d in cur.description or []]
    first = True
    while True:
        rows = cur.fetchmany(batch_rows)
        if rows or first:
            yield arrow_from_rows(names, rows)
        if len(rows) < batch_rows:
            return
        if time.monotonic() > deadline:
            raise Timeout()
        first = False


@contextmanager
def errors_as_one_line(timeout_s: float, limits: SqlLimits) -> Iterator[None]:
    """Database refusals, cancellations and failures of read-only SQL as one-line `InputError`s."""
    try:
        yield
    except (Timeout, duckdb.InterruptException, psycopg.errors.QueryCanceled):
        raise InputError(f"query cancelled: it ran past --timeout {timeout_s:g} s") from None
    except sa.exc.DBAPIError as exc:
        _raise_one_line(exc.orig or exc, limits)
    except (duckdb.Error, psycopg.Error) as exc:
        _raise_one_line(exc, limits)


def _raise_one_line(exc: BaseException, limits: SqlLimits) -> None:
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        raise InputError(
            f"refused: {first_line(exc)} (read-only SQL runs as role {READER_ROLE}: SELECT on the atlas tables only)"
        ) from None
    if isinstance(exc, duckdb.PermissionException):
        raise InputError(f"refused: {first_line(exc)} (read-only SQL reads the atlas only, no files)") from None
    if isinstance(exc, duckdb.OutOfMemoryException):
        raise InputError(f"query stopped: {first_line(exc)} (memory limit {limits.memory_limit})") from None
    raise InputError(f"query failed: {first_line(exc)}") from None
