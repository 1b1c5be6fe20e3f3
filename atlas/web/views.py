"""The pages of the web atlas, each defined once: its path, how its data is read, its template.

The HTML route (``PATH``) and the API route (``/api`` + ``PATH``) of a page are built from the same
`PageKind`, and both read the same `atlas.db.browse.Page`, so a page, its JSON and its downloads
show the same rows. Tables become `TableView`s here (cells formatted, links attached) so that the
templates only lay them out.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import pyarrow as pa

from atlas.db import browse
from atlas.db.browse import Page
from atlas.db.summaries import RunSummaries
from atlas.errors import InputError

Builder = Callable[[Any, RunSummaries, dict[str, Any]], Page]  # (read-only connection, summaries, path args)


@dataclass(frozen=True)
class PageKind:
    """One kind of page: where it lives, what builds it, how it is drawn."""

    name: str
    path: str  # Starlette path; the API serves the same data under /api + path
    build: Builder
    template: str
    summary: str  # one line for the OpenAPI description

    def api_path(self, path: str) -> str:
        """The API twin of a page path (``/`` is ``/api/runs``)."""
        return "/api" + path.rstrip("/") if path != "/" else "/api/runs"


PAGES: tuple[PageKind, ...] = (
    PageKind("runs", "/", lambda c, s, a: browse.runs_page(c, s), "runs.html", "Every run with its counts"),
    PageKind(
        "run", "/run/{run}", lambda c, s, a: browse.run_page(c, s, a["run"]), "run.html", "A run: relations, layers"
    ),
    PageKind(
        "relation",
        "/run/{run}/relation/{relation_id}",
        lambda c, s, a: browse.relation_page(c, s, a["run"], a["relation_id"]),
        "relation.html",
        "A relation: facts, relation-level and specific neurons, layers, overlap with other relations",
    ),
    PageKind(
        "fact",
        "/run/{run}/fact/{fact_id:path}",
        lambda c, s, a: browse.fact_page(c, a["run"], a["fact_id"]),
        "fact.html",
        "A fact: prompts with P(gold) and rank, knowledge neurons, per-prompt scores, facts sharing neurons",
    ),
    PageKind(
        "neuron",
        "/run/{run}/neuron/{layer:int}/{neuron:int}",
        lambda c, s, a: browse.neuron_page(c, s, a["run"], a["layer"], a["neuron"]),
        "neuron.html",
        "A neuron: the facts and relations it serves, whether it is a hub, its top vocabulary tokens",
    ),
    PageKind("edits", "/edits", lambda c, s, a: browse.edits_page(c), "edits.html", "Every edit and injection"),
    PageKind(
        "edit",
        "/edit/{edit_id:int}",
        lambda c, s, a: browse.edit_page(c, a["edit_id"]),
        "edit.html",
        "An edit: slots, metrics, audit (predicted against measured change of P(gold))",
    ),
    PageKind(
        "injection",
        "/injection/{injection_id:int}",
        lambda c, s, a: browse.injection_page(c, a["injection_id"]),
        "injection.html",
        "An injection: its facts, slot pairs and gates, parameters and stored audit",
    ),
)

# columns that link to another page: column -> page kind
LINKS: dict[str, str] = {
    "fact_id": "fact",
    "fact_a": "fact",
    "fact_b": "fact",
    "relation_id": "relation",
    "relation_a": "relation",
    "relation_b": "relation",
    "other_relation": "relation",
    "layer": "neuron",
    "neuron": "neuron",
}


def href(kind: str, run: Any = None, **key: Any) -> str:
    """The URL of a page of `kind`: its `PageKind.path` with the values filled in, each quoted
    (ids come from the data)."""
    values = {"run": run, **key}
    return _PARAM.sub(lambda m: quote(str(values[m.group(1)]), safe=""), _PATHS[kind])


_PATHS = {k.name: k.path for k in PAGES}
_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")


@dataclass
class Cell:
    text: str
    href: str | None = None
    numeric: bool = False


@dataclass
class TableView:
    """A table ready for a template: header, formatted cells with links (made when a template
    reads them: a table shown only as a plot or a download costs nothing), downloads."""

    name: str
    table: pa.Table
    run: Any
    limit: int
    downloads: dict[str, str] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        return self.table.column_names

    @property
    def total(self) -> int:
        return self.table.num_rows

    @functools.cached_property
    def rows(self) -> list[list[Cell]]:
        schema = self.table.schema
        numeric = {f.name for f in schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)}
        rows = self.table.slice(0, self.limit).to_pylist()
        return [[Cell(fmt(row[c]), _link(c, row, self.run), c in numeric) for c in self.columns] for row in rows]


def table_view(page: Page, name: str, run: Any, api_path: str, limit: int = browse.MAX_ROWS) -> TableView:
    downloads = {f: f"{api_path}?{urlencode({'table': name, 'format': f})}" for f in ("csv", "parquet", "json")}
    return TableView(name, page.table(name), run, limit, downloads)


def _link(column: str, row: dict[str, Any], run: Any) -> str | None:
    kind = LINKS.get(column)
    value = row.get(column)
    if kind is None or value is None or run is None:
        return None
    if kind == "neuron":
        if row.get("layer") is None or row.get("neuron") is None:
            return None
        return href("neuron", run, layer=row["layer"], neuron=row["neuron"])
    return href(kind, run, **{"fact_id" if kind == "fact" else "relation_id": value})


def fmt(value: Any) -> str:
    """A cell's text: floats to 4 significant digits, times to the second, None empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return f"{value:.4g}"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def page_run(page: Page, args: dict[str, Any]) -> Any:
    """The run a page belongs to (its name, for links), or None."""
    info = page.info.get("run") or (page.info if "params" in page.info else None)
    return info["name"] if info else args.get("run")


def int_arg(value: str | None, name: str, default: int) -> int:
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"{name}={value!r} is not an integer") from None
