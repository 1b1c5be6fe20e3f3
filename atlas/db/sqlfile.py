"""SQL statements kept in ``atlas/sql/*.sql`` files, loaded by name.

SQL lives in files so it can be read, reviewed and run by hand; parameters are always ``:named``
and bound by the driver, never formatted in. Where the two backends need different text, a line
ending in ``-- postgresql only`` (or ``-- duckdb only``) is dropped for the other backend, and a
``NAME.<backend>.sql`` file overrides ``NAME.sql`` for bigger differences.
"""

from __future__ import annotations

import functools
from pathlib import Path

import sqlalchemy as sa

SQL_DIR = Path(__file__).parent / "statements"
BACKENDS = ("postgresql", "duckdb")


@functools.cache
def sql_text(name: str, backend: str, expanding: tuple[str, ...] = ()) -> sa.TextClause:
    """The statement ``name`` for ``backend``; parameters named in ``expanding`` take lists (``IN :p``)."""
    path = SQL_DIR / f"{name}.{backend}.sql"
    if not path.exists():
        path = SQL_DIR / f"{name}.sql"
    lines = [line for line in path.read_text().splitlines()
             if not any(line.rstrip().endswith(f"-- {other} only") for other in BACKENDS if other != backend)]
    stmt = sa.text("\n".join(lines))
    if expanding:
        stmt = stmt.bindparams(*(sa.bindparam(p, expanding=True) for p in expanding))
    return stmt
