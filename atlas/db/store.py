"""Database access for the atlas: engines, schema checks and bulk writes.

The store is the only module that creates engines, and it knows nothing of torch: everything it
writes arrives as plain Python values or column arrays. One API hides the two backends:

* DuckDB (the embedded default, a single file): bulk rows go in as an Arrow table registered on the
  connection (hundreds of thousands of rows/s; DuckDB's ``executemany`` manages a few hundred).
* PostgreSQL (production): bulk rows go in through ``COPY ... FROM STDIN`` (CSV written by Arrow).

Every write happens inside a transaction opened by the caller with ``store.begin()``, so a failed
load or batch leaves the database exactly as it was.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from atlas.errors import DatabaseBusy, StoreError

DEFAULT_URL = "duckdb:///atlas.duckdb"
ENV_VAR = "ATLAS_DB"


def resolve_url(url: str | None = None) -> str:
    """The database URL: the explicit one, else ``$ATLAS_DB``, else ``./atlas.duckdb``.

    A bare path (``my.duckdb``) is accepted as shorthand for a DuckDB file.
    """
    url = url or os.environ.get(ENV_VAR) or DEFAULT_URL
    if "://" not in url:
        url = f"duckdb:///{url}"
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def backend_of(url: str) -> str:
    """``duckdb`` or ``postgresql``; anything else is refused with the offending URL."""
    scheme = url.split("://", 1)[0]
    if scheme.startswith("duckdb"):
        return "duckdb"
    if scheme.startswith("postgresql"):
        return "postgresql"
    raise StoreError(f"unsupported database URL {url!r}: use duckdb:///FILE or postgresql+psycopg://...")


def duckdb_path(url: str) -> str:
    """The file of a ``duckdb:///PATH`` URL ('' when there is none)."""
    return url.split(":///", 1)[1] if ":///" in url else ""


def busy_error(path: str, exc: BaseException) -> StoreError:
    """The one line for a DuckDB file that cannot be opened: `DatabaseBusy` when another process
    holds its lock (one writer at a time), else a `StoreError` with DuckDB's reason."""
    text = _first_line(getattr(exc, "orig", None) or exc)
    if "lock" in text.lower():
        holder = re.search(r"PID (\d+)", text)
        who = f" (process {holder.group(1)})" if holder else ""
        return DatabaseBusy(
            f"DuckDB file {path!r} is in use by another process{who}: a DuckDB file has one writer at a "
            "time; wait for it to finish, or use PostgreSQL for concurrent workers"
        )
    return StoreError(f"cannot open DuckDB file {path!r}: {text}")


def check_url(url: str) -> None:
    """Refuse a URL that cannot name an atlas, before anything connects."""
    if backend_of(url) != "duckdb":
        return
    if not url.startswith("duckdb:///"):
        raise StoreError(
            f"bad DuckDB URL {url!r}: use duckdb:///relative/path.duckdb or duckdb:////absolute/path.duckdb "
            "(three slashes before the path), or a bare path"
        )


def make_engine(url: str | None = None) -> Engine:
    """An engine for ``url`` (see :func:`resolve_url`).

    DuckDB files allow one writing process, so their engine holds no pool of idle connections that
    would keep the file locked after the caller is done.
    """
    url = resolve_url(url)
    backend = backend_of(url)
    check_url(url)
    if backend == "duckdb":
        path = duckdb_path(url)
        if path and path != ":memory:":
            parent = Path(path).expanduser().resolve().parent
            if not parent.is_dir():
                raise StoreError(f"cannot open DuckDB file {path!r}: folder {str(parent)!r} does not exist")
        return sa.create_engine(url, poolclass=NullPool)
    return sa.create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 5})


class Store:
    """One atlas database. Cheap to create; connections are opened per transaction."""

    def __init__(self, url: str | None = None) -> None:
        self.url = resolve_url(url)
        self.backend = backend_of(self.url)
        self.engine = make_engine(self.url)

    def __repr__(self) -> str:
        return f"Store({self.engine.url.render_as_string(hide_password=True)!r})"

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A connection inside one transaction: committed on success, rolled back on any error."""
        try:
            conn_cm = self.engine.begin()
            conn = conn_cm.__enter__()
        except sa.exc.DBAPIError as exc:  # duckdb raises its own errors through the DBAPI layer
            if self.backend == "duckdb":
                raise busy_error(duckdb_path(self.url), exc) from None
            if isinstance(exc, sa.exc.OperationalError):
                raise StoreError(f"cannot connect to {self!r}: {_first_line(exc.orig or exc)}") from exc
            raise StoreError(f"cannot open {self!r}: {_first_line(exc.orig or exc)}") from exc
        try:
            yield conn
        except BaseException as exc:
            conn_cm.__exit__(type(exc), exc, exc.__traceback__)
            raise
        else:
            conn_cm.__exit__(None, None, None)

    def bulk_insert(self, conn: Connection, table: sa.Table, columns: Mapping[str, Sequence[Any]]) -> int:
        """Append column-shaped rows to ``table`` inside ``conn``'s transaction; returns the row count.

        ``columns`` maps column names to equal-length sequences (lists or numpy arrays). Columns not
        given take their server defaults.
        """
        arrow = _arrow_table(table, columns)
        if arrow.num_rows == 0:
            return 0
        if self.backend == "duckdb":
            _duckdb_insert(conn, table.name, arrow)
        else:
            _postgres_copy(conn, table.name, arrow)
        return arrow.num_rows

    def insert_records(self, conn: Connection, table: sa.Table, records: Sequence[Any], **constants: Any) -> int:
        """`bulk_insert` of dataclass records (one per row; their fields named as the table's columns,
        extra fields ignored), with `constants` filling the columns every row shares."""
        names = [c.name for c in table.columns if records and hasattr(records[0], c.name)]
        columns: dict[str, Sequence[Any]] = {n: [getattr(r, n) for r in records] for n in names}
        columns.update({k: [v] * len(records) for k, v in constants.items()})
        return self.bulk_insert(conn, table, columns)

    @contextmanager
    def kept_open(self) -> Iterator[None]:
        """Hold one idle connection for the body on DuckDB: connections are opened per transaction,
        and without a live one DuckDB closes (and checkpoints) the file every time - ~10x slower for
        a job that writes many small transactions. A no-op on PostgreSQL."""
        if self.backend != "duckdb":
            yield
            return
        try:
            conn = self.engine.connect()
        except sa.exc.DBAPIError as exc:
            raise busy_error(duckdb_path(self.url), exc) from None
        try:
            yield
        finally:
            conn.close()

    def dispose(self) -> None:
        self.engine.dispose()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _arrow_table(table: sa.Table, columns: Mapping[str, Sequence[Any]]) -> pa.Table:
    unknown = [name for name in columns if name not in table.c]
    if unknown:
        raise ValueError(f"table {table.name} has no column(s) {unknown}")
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"columns for {table.name} differ in length: {lengths}")
    arrays = {name: pa.array(values, type=_arrow_type(table.c[name].type)) for name, values in columns.items()}
    return pa.table(arrays)


def _arrow_type(sql_type: sa.types.TypeEngine) -> pa.DataType:
    if isinstance(sql_type, sa.SmallInteger):
        return pa.int16()
    if isinstance(sql_type, sa.BigInteger):
        return pa.int64()
    if isinstance(sql_type, sa.Integer):
        return pa.int32()
    if isinstance(sql_type, sa.REAL):
        return pa.float32()
    if isinstance(sql_type, sa.Float):
        return pa.float64()
    if isinstance(sql_type, sa.Boolean):
        return pa.bool_()
    if isinstance(sql_type, sa.LargeBinary):
        return pa.binary()
    if isinstance(sql_type, sa.DateTime):
        return pa.timestamp("us", tz="UTC")
    return pa.string()


def _duckdb_insert(conn: Connection, table_name: str, arrow: pa.Table) -> None:
    raw = conn.connection.driver_connection
    view = f"_atlas_bulk_{table_name}"
    cols = ", ".join(f'"{name}"' for name in arrow.column_names)
    raw.register(view, arrow)
    try:
        raw.execute(f'INSERT INTO "{table_name}" ({cols}) SELECT {cols} FROM "{view}"')
    finally:
        raw.unregister(view)


def _postgres_copy(conn: Connection, table_name: str, arrow: pa.Table) -> None:
    binary_cols = [f.name for f in arrow.schema if pa.types.is_binary(f.type)]
    if binary_cols:
        _postgres_copy_rows(conn, table_name, arrow)
        return
    buf = io.BytesIO()
    pa_csv.write_csv(arrow, buf, pa_csv.WriteOptions(include_header=False, quoting_style="all_valid"))
    cols = ", ".join(f'"{name}"' for name in arrow.column_names)
    raw = conn.connection.driver_connection
    with raw.cursor() as cur:
        with cur.copy(f'COPY "{table_name}" ({cols}) FROM STDIN WITH (FORMAT csv)') as copy:
            copy.write(buf.getvalue())


def _postgres_copy_rows(conn: Connection, table_name: str, arrow: pa.Table) -> None:
    """COPY row by row (binary columns cannot travel as CSV); used for small tables only."""
    cols = ", ".join(f'"{name}"' for name in arrow.column_names)
    raw = conn.connection.driver_connection
    with raw.cursor() as cur:
        with cur.copy(f'COPY "{table_name}" ({cols}) FROM STDIN') as copy:
            for row in arrow.to_pylist():
                copy.write_row(tuple(row.values()))
