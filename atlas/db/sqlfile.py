"""SQL files: the one loader and header format for the atlas's own statements and its named queries.

SQL lives in files so it can be read, reviewed and run by hand. Every file opens with a header:

    -- What the statement does and why (any number of lines).
    -- params: :run_id (int), :fact_ids (text[]), :min_facts (int, default 2)
    -- columns: layer, neuron, n_facts

`params` lists every ``:named`` parameter with its type (int, float, text, bool, or text[] for a
list bound to ``IN :name``) and optional default; the header is checked against the parameters the
SQL really uses (found after stripping comments and string literals), so it cannot drift from the
text. `columns` names the result columns (omitted for statements that return nothing). Values are
converted to their declared types and always bound by the driver, never formatted into the text.

Backend differences: a line ending in ``-- postgresql only`` (or ``-- duckdb only``) is dropped for
the other backend. Named queries (``queries/*.sql``) must run unchanged on both.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from atlas.errors import InputError

STATEMENT_DIR = Path(__file__).parent / "statements"
BACKENDS = ("postgresql", "duckdb")
PARAM_TYPES: dict[str, type] = {"int": int, "float": float, "text": str, "bool": bool, "text[]": list}

_TOKEN = re.compile(
    r"""
    (?P<comment>--[^\n]*|/\*.*?\*/)
    | (?P<string>'(?:[^']|'')*'|"(?:[^"]|"")*")
    | (?P<cast>::)
    | (?P<param>:[A-Za-z_][A-Za-z0-9_]*)
    """,
    re.VERBOSE | re.DOTALL,
)
_PARAM_DECL = re.compile(r":(\w+)\s*\(\s*([\w\[\]]+)\s*(?:,\s*default\s+([^)]*?))?\s*\)")


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
class SqlFile:
    """A parsed SQL file: its name, header and text."""

    name: str
    purpose: str
    params: tuple[Param, ...]
    columns: tuple[str, ...]
    sql: str
    path: Path

    def describe_params(self) -> str:
        return ", ".join(p.describe() for p in self.params) or "none"

    def for_backend(self, backend: str) -> str:
        """The text with the other backends' ``-- <backend> only`` lines dropped."""
        others = [b for b in BACKENDS if b != backend]
        return "\n".join(
            line for line in self.sql.splitlines() if not any(line.rstrip().endswith(f"-- {o} only") for o in others)
        )

    @functools.cache  # noqa: B019 - SqlFile is frozen and lives as long as the process anyway
    def text(self, backend: str) -> sa.TextClause:
        """A SQLAlchemy statement for ``backend``; ``text[]`` parameters expand for ``IN :name``."""
        stmt = sa.text(executable_sql(self.for_backend(backend), "sqlalchemy"))
        lists = [p.name for p in self.params if p.type == "text[]"]
        return stmt.bindparams(*(sa.bindparam(n, expanding=True) for n in lists)) if lists else stmt

    def bind(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The typed value of every parameter (defaults filled in); unknown, missing and ill-typed
        parameters are refused with the file's parameter list."""
        known = {p.name for p in self.params}
        expected = f"parameters of {self.name}: {self.describe_params()}"
        unknown = sorted(set(given) - known)
        if unknown:
            raise InputError(f"query {self.name} has no parameter {', '.join(unknown)}; {expected}")
        values = {}
        for p in self.params:
            if p.name in given:
                values[p.name] = convert(self.name, p, given[p.name], expected)
            elif p.required:
                raise InputError(f"query {self.name}: missing parameter {p.name}; {expected}")
            else:
                values[p.name] = p.default
        return values


def sql_parameters(sql: str) -> list[str]:
    """The ``:named`` parameters ``sql`` uses, in order of first use, ignoring comments and strings."""
    names: list[str] = []
    for m in _TOKEN.finditer(sql):
        if m.lastgroup == "param" and m.group()[1:] not in names:
            names.append(m.group()[1:])
    return names


def executable_sql(sql: str, style: str) -> str:
    """``sql`` without comments, parameters written for a driver: ``sqlalchemy`` (``:name``, colons
    inside strings escaped for ``sa.text``) or ``duckdb`` (``$name``, DuckDB's own syntax)."""

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


def strip_comments(sql: str) -> str:
    return _TOKEN.sub(lambda m: " " if m.lastgroup == "comment" else m.group(), sql).strip().rstrip(";")


def parse_sql_file(path: Path, name: str | None = None) -> SqlFile:
    """Read a SQL file's header and check it against the parameters its SQL uses."""
    name = name or path.stem
    text = path.read_text()
    header = [line[2:].strip() for line in _leading_comments(text)]
    purpose: list[str] = []
    params: list[Param] = []
    columns: tuple[str, ...] = ()
    for line in header:
        if line.startswith("params:"):
            params.extend(_parse_param(name, path, m) for m in _PARAM_DECL.finditer(line))
        elif line.startswith("columns:"):
            columns = tuple(c.strip() for c in line.split(":", 1)[1].split(",") if c.strip())
        else:
            purpose.append(line)
    declared, used = [p.name for p in params], sql_parameters(text)
    if sorted(declared) != sorted(used):
        raise ValueError(f"{path}: header declares parameters {declared} but the SQL uses {used}")
    return SqlFile(name, " ".join(purpose), tuple(params), columns, text, path)


def _leading_comments(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        out.append(line)
    return out


def _parse_param(name: str, path: Path, m: re.Match) -> Param:
    pname, ptype, default = m.group(1), m.group(2), m.group(3)
    if ptype not in PARAM_TYPES:
        raise ValueError(f"{path}: parameter {pname} has unknown type {ptype!r} (use {', '.join(PARAM_TYPES)})")
    if default is None:
        return Param(pname, ptype)
    return Param(pname, ptype, convert(name, Param(pname, ptype), default, ""), required=False)


def convert(query: str, param: Param, value: Any, expected: str) -> Any:
    """``value`` as the parameter's declared type (text from the command line included)."""
    kind = PARAM_TYPES[param.type]
    if kind is list:
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
    elif isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    elif kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    elif kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    elif isinstance(value, str) and kind is not bool:
        try:
            return kind(value.strip()) if kind is not str else value
        except ValueError:
            pass
    elif isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise InputError(
        f"query {query}: parameter {param.name}={value!r} is not {param.type}" + (f"; {expected}" if expected else "")
    )


@functools.cache
def statement(name: str) -> SqlFile:
    """The atlas's own statement ``atlas/db/statements/<name>.sql``."""
    return parse_sql_file(STATEMENT_DIR / f"{name}.sql")


def sql_text(name: str, backend: str) -> sa.TextClause:
    """The statement ``name`` ready to execute on ``backend``."""
    return statement(name).text(backend)
