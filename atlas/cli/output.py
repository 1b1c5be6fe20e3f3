"""Writing query results for people and for other programs: table, CSV, JSON, Parquet.

Kept apart from the query runner so that every command that prints rows (``atlas query``,
``atlas sql``) offers the same formats with the same conventions: JSON is a list of objects (one
per row, keys in column order), CSV has a header line, Parquet needs a file.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from atlas.errors import InputError

FORMATS = ("table", "csv", "json", "parquet")


def render(table: pa.Table, fmt: str, output: Path | None = None, title: str | None = None) -> str | None:
    """Write ``table`` as ``fmt`` to ``output``; without a file, return the text to print.

    A ``table`` is returned ready for a terminal (rich); it is also what ``output`` receives.
    """
    if fmt == "parquet":
        if output is None:
            raise InputError("--format parquet needs --output FILE")
        pq.write_table(table, output)
        return None
    rows = list(zip(*(col.to_pylist() for col in table.columns)))
    text = {"table": _table, "csv": _csv, "json": _json}[fmt](table.column_names, rows, title)
    if output is None:
        return text
    Path(output).write_text(text)
    return None


def _csv(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buf.getvalue()


def _json(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None) -> str:
    return json.dumps([dict(zip(columns, r)) for r in rows], indent=1, default=str) + "\n"


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None) -> str:
    table = Table(title=title, caption=f"{len(rows):,} rows")
    for name in columns:
        table.add_column(name, overflow="fold")
    for r in rows:
        table.add_row(*("" if v is None else str(v) for v in r))
    console = Console(file=io.StringIO(), width=160, force_terminal=False)
    console.print(table)
    return console.file.getvalue()


def writable_file(_ctx: object, param: click.Parameter, value: Path | None) -> Path | None:
    """Click callback for every -o/--output FILE: refused before any work when it cannot be written
    (a missing folder, a folder in its place, no permission), naming the path."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.is_dir():
        raise click.BadParameter(f"{value} is a folder, not a file", param=param)
    _check_folder(path.resolve().parent, value, param)
    existed = path.exists()
    try:  # the only sure test (root passes every permission check): open it for appending
        with path.open("ab"):
            pass
    except OSError as exc:
        raise click.BadParameter(f"cannot write {value}: {exc.strerror or exc}", param=param) from None
    if not existed:
        path.unlink()
    return value


def writable_dir(_ctx: object, param: click.Parameter, value: Path | None) -> Path | None:
    """Click callback for every DIRECTORY an output goes to: it exists and is writable, or its
    parent does (it is created then); refused before any work otherwise."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise click.BadParameter(f"{value} is a file, not a folder", param=param)
    _check_folder(path if path.exists() else path.resolve().parent, value, param)
    return value


def _check_folder(folder: Path, value: Path, param: click.Parameter) -> None:
    if not folder.is_dir():
        raise click.BadParameter(f"cannot write {value}: folder {folder} does not exist", param=param)
    try:  # as for files, the only sure test: write there
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise click.BadParameter(
            f"cannot write {value}: folder {folder} is not writable ({exc.strerror or exc})", param=param
        ) from None


class FileSink:
    """Writes an `atlas sql` result to FILE batch by batch as it arrives (csv, json, parquet), so no
    result is ever held whole in memory; the same conventions as `render`."""

    def __init__(self, fmt: str, path: Path) -> None:
        self.fmt, self.path, self.rows = fmt, Path(path), 0
        self._parquet: pq.ParquetWriter | None = None
        self._text = None if fmt == "parquet" else self.path.open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._text, lineterminator="\n") if fmt == "csv" else None
        self._header = False

    def __call__(self, batch: pa.Table) -> None:
        if self.fmt == "parquet":
            self._write_parquet(batch)
        elif self._csv is not None:
            if not self._header:
                self._csv.writerow(batch.column_names)
                self._header = True
            self._csv.writerows(zip(*(col.to_pylist() for col in batch.columns)))
        else:
            names = batch.column_names
            for row in zip(*(col.to_pylist() for col in batch.columns)):
                item = textwrap.indent(json.dumps(dict(zip(names, row)), indent=1, default=str), " ")
                self._text.write(("[\n" if self.rows == 0 else ",\n") + item)
                self.rows += 1
            return
        self.rows += batch.num_rows

    def _write_parquet(self, batch: pa.Table) -> None:
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self.path, batch.schema)
        elif batch.schema != self._parquet.schema.to_arrow_schema():
            try:
                batch = batch.cast(self._parquet.schema.to_arrow_schema())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
                raise InputError(
                    f"a column's type changes between rows ({batch.schema} vs the first rows'); CAST it in the SQL"
                ) from None
        self._parquet.write_table(batch)

    def close(self, ok: bool = True) -> None:
        """Finish the file; without ``ok`` (the statement failed), remove it."""
        if self._text is not None:
            if self.fmt == "json":
                self._text.write("[]\n" if self.rows == 0 else "\n]\n")
            self._text.close()
        if self._parquet is not None:
            self._parquet.close()
        if not ok:
            self.path.unlink(missing_ok=True)
