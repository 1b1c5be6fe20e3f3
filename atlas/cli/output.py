"""Writing query results for people and for other programs: table, CSV, JSON, Parquet.

Kept apart from the query runner so that every command that prints rows (``atlas query``,
``atlas sql``) offers the same formats with the same conventions: JSON is a list of objects (one
per row, keys in column order), CSV has a header line, Parquet needs a file.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
