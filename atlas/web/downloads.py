"""The API's answers: a page as JSON, one of its tables as CSV, Parquet or JSON, and the OpenAPI
description generated from the page kinds and the named queries' own headers (one source)."""

from __future__ import annotations

import datetime as dt
import decimal
import io
import json
import math
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from starlette.requests import Request
from starlette.responses import Response

from atlas.db.browse import Page, page_json
from atlas.db.sqlfile import SqlFile
from atlas.errors import InputError

FORMATS = {"json": "application/json", "csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}


def respond(request: Request, page: Page, name: str) -> Response:
    """The whole page as JSON, or with ``?table=T`` one table in ``?format=`` (json, csv, parquet)."""
    table_name = request.query_params.get("table")
    fmt = request.query_params.get("format", "json")
    if fmt not in FORMATS:
        raise InputError(f"format={fmt!r}: use one of {', '.join(FORMATS)}")
    if table_name is None:
        if fmt != "json":
            raise InputError(f"format={fmt} needs ?table=NAME (one of: {', '.join(page.tables)})")
        return Response(dumps(page_json(page)), media_type=FORMATS["json"])
    table = page.table(table_name)
    headers = {"Content-Disposition": f'attachment; filename="{_safe(name)}-{_safe(table_name)}.{fmt}"'}
    if fmt == "json":
        return Response(dumps(table.to_pylist()), media_type=FORMATS["json"], headers=headers)
    return Response(_encode(table, fmt), media_type=FORMATS[fmt], headers=headers)


def _encode(table: pa.Table, fmt: str) -> bytes:
    sink = io.BytesIO()
    if fmt == "csv":
        pa_csv.write_csv(table, sink)
    else:
        pq.write_table(table, sink)
    return sink.getvalue()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:80] or "table"


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, decimal.Decimal):  # DuckDB's HUGEINT sums
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(type(value).__name__)


def _clean(value: Any) -> Any:
    """NaN and infinities as null: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def dumps(data: Any) -> bytes:
    return json.dumps(_clean(data), default=_default, allow_nan=False).encode()


# --- OpenAPI ----------------------------------------------------------------------------------

_TYPES = {"int": "integer", "float": "number", "text": "string", "bool": "boolean", "text[]": "string"}
_DOWNLOAD = [
    {"name": "table", "in": "query", "required": False, "schema": {"type": "string"}, "description": "one table"},
    {"name": "format", "in": "query", "required": False, "schema": {"type": "string", "enum": list(FORMATS)}},
]


def openapi(pages: Sequence[Any], queries: Sequence[SqlFile]) -> dict[str, Any]:
    """OpenAPI 3.1: every page under /api, every named query with its typed parameters, search, SQL."""
    paths: dict[str, Any] = {}
    for kind in pages:
        path = kind.api_path(kind.path)
        params = [
            {"name": n.split(":")[0], "in": "path", "required": True, "schema": {"type": _path_type(n)}}
            for n in _path_names(path)
        ]
        paths[_plain(path)] = {"get": _operation(kind.summary, params + _DOWNLOAD)}
    for q in queries:
        params = [
            {
                "name": p.name,
                "in": "query",
                "required": p.required,
                "schema": {"type": _TYPES[p.type], **({} if p.required else {"default": p.default})},
            }
            for p in q.params
        ]
        paths[f"/api/query/{q.name}"] = {"get": _operation(q.purpose, params + _DOWNLOAD, tag="queries")}
    text = {"name": "q", "in": "query", "required": True, "schema": {"type": "string"}}
    paths["/api/search"] = {"get": _operation("Search facts and relations", [text, *_DOWNLOAD])}
    sql = {"name": "sql", "in": "query", "required": True, "schema": {"type": "string"}}
    paths["/api/sql"] = {"get": _operation("One read-only SELECT, sandboxed as `atlas sql`", [sql, *_DOWNLOAD])}
    return {
        "openapi": "3.1.0",
        "info": {"title": "kn-atlas", "version": "1", "description": "A read-only atlas of knowledge neurons."},
        "paths": paths,
    }


def _operation(summary: str, params: list[dict[str, Any]], tag: str = "pages") -> dict[str, Any]:
    return {
        "summary": summary[:200],
        "tags": [tag],
        "parameters": params,
        "responses": {
            "200": {"description": "the page as JSON, or one table as JSON, CSV or Parquet"},
            "400": {"description": "a bad parameter, one line"},
            "404": {"description": "no such run, fact, relation, neuron, edit or query"},
        },
    }


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def _path_type(name: str) -> str:
    return "integer" if name.endswith(":int") else "string"


def _plain(path: str) -> str:
    """Starlette's ``{x:int}`` / ``{x:path}`` as OpenAPI's ``{x}``."""
    return "/".join("{" + p[1:-1].split(":")[0] + "}" if p.startswith("{") else p for p in path.split("/"))
