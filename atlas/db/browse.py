"""What each page of the web atlas shows, read in one read-only transaction (`atlas serve`).

A page is a title, a few scalar facts (``info``) and named tables (Arrow). The HTML page, its JSON
API and its CSV/Parquet downloads are all drawn from the same `Page`, so what a person sees and
what a script downloads cannot drift apart. The SQL lives in ``statements/page_*.sql`` and the
named queries (``queries/``); nothing here formats a value into SQL.

Whole-run tables (a run's relations, layers, and (relation, neuron) counts) come from
`atlas.db.summaries.RunSummaries`: read once per done run and process.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy.engine import Connection

from atlas.db.queries import load_query, run_on
from atlas.db.runs import Run, resolve_run
from atlas.db.sqlfile import statement
from atlas.db.summaries import RunSummaries, RunSummary
from atlas.errors import InputError, NotFound

MAX_ROWS = 100  # rows an HTML page lists of a table; its download gives every row
MAX_FACTS = 10_000  # facts of a relation read for its page (PARAREL's largest relation has ~1,400)
OVERLAP_NEURONS = 30  # a relation's most frequent neurons shown against the other relations
RELATION_LEVEL_SHARE = 0.1  # the paper's relation-level neurons: in >= 10% of the relation's facts
HUB_MIN_RELATIONS = 3  # hub-neurons' default: relation-level in >= 3 relations
NEURON_NAME = re.compile(r"^\s*L(\d+)[.:/ ]N?(\d+)\s*$", re.IGNORECASE)


@dataclass
class Page:
    """One page's data: a title, scalars for its header, and named tables."""

    title: str
    info: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, pa.Table] = field(default_factory=dict)
    run: Run | None = None  # the run the page belongs to (not part of its JSON)

    def table(self, name: str) -> pa.Table:
        try:
            return self.tables[name]
        except KeyError:
            raise NotFound(f"this page has no table {name!r}; it has: {', '.join(self.tables)}") from None


def rows(table: pa.Table) -> list[dict[str, Any]]:
    return table.to_pylist()


def _statement(conn: Connection, name: str, **given: Any) -> pa.Table:
    return run_on(conn, statement(name), given)


def _query(conn: Connection, name: str, **given: Any) -> pa.Table:
    return run_on(conn, load_query(name), given)


def _one(conn: Connection, name: str, what: str, **given: Any) -> dict[str, Any]:
    found = rows(_statement(conn, name, **given))
    if not found:
        raise NotFound(f"unknown {what}")
    return found[0]


# --- pages ------------------------------------------------------------------------------------


def runs_page(conn: Connection, summaries: RunSummaries) -> Page:
    """Every run with its totals (from its summary) and prompts/s (from its stats)."""
    runs = _statement(conn, "page_runs")
    totals = [_run_totals(summaries.of(conn, resolve_run(conn, run_id)).relations) for run_id in runs["id"].to_pylist()]
    for key in _RUN_TOTALS:
        runs = runs.append_column(key, pa.array([t[key] for t in totals], pa.int64()))
    walls = [json.loads(text or "{}").get("wall_s") for text in runs["stats"].to_pylist()]
    rates = [t["n_prompts"] / w if w else None for t, w in zip(totals, walls)]
    return Page("Runs", {}, {"runs": runs.append_column("prompts_per_s", pa.array(rates, pa.float64()))})


_RUN_TOTALS = {
    "n_relations": None,
    "n_prompts": "n_prompts",
    "n_ok": "n_ok",
    "n_facts": "facts_with_neurons",
    "n_entries": "n_entries",
}


def _run_totals(relations: pa.Table) -> dict[str, int]:
    out = {key: int(pc.sum(relations[column]).as_py() or 0) for key, column in _RUN_TOTALS.items() if column}
    return out | {"n_relations": relations.num_rows}


def run_page(conn: Connection, summaries: RunSummaries, run: int | str) -> Page:
    r = resolve_run(conn, run)
    model = _one(conn, "page_model", f"model {r.model_id}", model_id=r.model_id)
    summary = summaries.of(conn, r)
    tables = {"relations": summary.relations, "layers": summary.layers}
    return Page(f"Run {r.name}", _run_info(r) | {"model": model}, tables, r)


def relation_page(conn: Connection, summaries: RunSummaries, run: int | str, relation_id: str) -> Page:
    r = resolve_run(conn, run)
    relation = _one(conn, "page_relation", f"relation {relation_id!r}", relation_id=relation_id)
    summary = summaries.of(conn, r)
    own = _with_share(summary.relation_pairs(relation_id), summary.sizes, "share", relation_id)
    own = own.sort_by(
        [("n_facts", "descending"), ("mean_score", "descending"), ("layer", "ascending"), ("neuron", "ascending")]
    )
    top = [summary.neuron_pairs(x["layer"], x["neuron"]) for x in own.slice(0, OVERLAP_NEURONS).to_pylist()]
    overlap = _with_share(pa.concat_tables(top), summary.sizes, "share") if top else _OVERLAP.empty_table()
    overlap = overlap.select(_OVERLAP.names).cast(_OVERLAP)
    tables = {
        "facts": _statement(conn, "page_relation_facts", run_id=r.id, relation_id=relation_id, limit=MAX_FACTS),
        "relation_neurons": _relation_level(own),
        "specific_neurons": _specificity(overlap, relation_id),
        "layers": _layers(own),
        "overlap": overlap,
    }
    return Page(f"{relation_id} {relation['label']}", {"run": _run_info(r), "relation": relation}, tables, r)


def _relation_level(own: pa.Table) -> pa.Table:
    """The relation's neurons in >= 2 facts and >= the share 0.1 of them (named query
    relation-neurons with min_share 0.1), in ``own``'s order (most frequent first)."""
    keep = pc.and_(pc.greater_equal(own["n_facts"], 2), pc.greater_equal(own["share"], RELATION_LEVEL_SHARE))
    return own.filter(keep).select(_RELATION_LEVEL.names).cast(_RELATION_LEVEL)


def _layers(own: pa.Table) -> pa.Table:
    """Entries (fact, neuron) and distinct neurons per layer."""
    grouped = own.group_by("layer").aggregate([("n_facts", "sum"), ("neuron", "count")])
    grouped = grouped.rename_columns(["layer", "n_entries", "n_neurons"]).sort_by("layer")
    return grouped.select(_LAYERS.names).cast(_LAYERS)


def _specificity(overlap: pa.Table, relation_id: str) -> pa.Table:
    """The relation's frequent knowledge neurons ranked by specificity = their share of its facts
    minus the largest share of any other relation (the rule of the named query
    relation-specific-neurons, which reads prompt scores instead: seconds per relation)."""
    own: dict[tuple[int, int], float] = {}
    other: dict[tuple[int, int], tuple[float, str]] = {}
    for row in overlap.to_pylist():
        key, share = (row["layer"], row["neuron"]), row["share"] or 0.0
        if row["relation_id"] == relation_id:
            own[key] = share
        elif share > other.get(key, (-1.0, ""))[0]:
            other[key] = (share, row["relation_id"])
    ranked = sorted(own, key=lambda k: (-(own[k] - other.get(k, (0.0, ""))[0]), k))
    return pa.Table.from_pylist(
        [
            {
                "layer": k[0],
                "neuron": k[1],
                "share": own[k],
                "other_share": other.get(k, (0.0, None))[0],
                "other_relation": other.get(k, (0.0, None))[1],
                "specificity": own[k] - other.get(k, (0.0, None))[0],
            }
            for k in ranked
        ],
        schema=_SPECIFICITY,
    )


_OVERLAP = pa.schema(
    [
        ("layer", pa.int64()),
        ("neuron", pa.int64()),
        ("relation_id", pa.string()),
        ("n_facts", pa.int64()),
        ("mean_score", pa.float64()),
        ("relation_facts", pa.int64()),
        ("share", pa.float64()),
    ]
)
_RELATION_LEVEL = pa.schema(
    [_OVERLAP.field(c) for c in ("layer", "neuron", "n_facts", "relation_facts", "share", "mean_score")]
)
_LAYERS = pa.schema([("layer", pa.int64()), ("n_entries", pa.int64()), ("n_neurons", pa.int64())])
_SPECIFICITY = pa.schema(
    [
        ("layer", pa.int64()),
        ("neuron", pa.int64()),
        ("share", pa.float64()),
        ("other_share", pa.float64()),
        ("other_relation", pa.string()),
        ("specificity", pa.float64()),
    ]
)


def _with_share(table: pa.Table, sizes: dict[str, int], name: str, relation_id: str | None = None) -> pa.Table:
    """``table`` (n_facts per relation_id, or of ``relation_id``) with the relation's size and
    n_facts / size as ``name``."""
    rels = table.column("relation_id").to_pylist() if relation_id is None else [relation_id] * table.num_rows
    totals = [sizes.get(rel) or 0 for rel in rels]
    shares = [n / t if t else None for n, t in zip(table.column("n_facts").to_pylist(), totals)]
    table = table.append_column("relation_facts", pa.array(totals, pa.int64()))
    return table.append_column(name, pa.array(shares, pa.float64()))


def fact_page(conn: Connection, run: int | str, fact_id: str) -> Page:
    r = resolve_run(conn, run)
    fact = _one(conn, "page_fact", f"fact {fact_id!r}", fact_id=fact_id)
    tables = {
        "prompts": _statement(conn, "page_fact_prompts", run_id=r.id, fact_id=fact_id),
        "neurons": _query(conn, "fact-neurons", run_id=r.id, fact_id=fact_id),
        "prompt_scores": _query(conn, "fact-prompt-scores", run_id=r.id, fact_id=fact_id),
        "sharing": _query(conn, "fact-interference", run_id=r.id, fact_id=fact_id),
    }
    title = f"{fact['subject']} / {fact['relation_id']} / {fact['object']}"
    return Page(title, {"run": _run_info(r), "fact": fact}, tables, r)


def neuron_page(conn: Connection, summaries: RunSummaries, run: int | str, layer: int, neuron: int) -> Page:
    r = resolve_run(conn, run)
    model = _one(conn, "page_model", f"model {r.model_id}", model_id=r.model_id)
    if not (0 <= layer < model["n_layers"] and 0 <= neuron < model["n_neurons"]):
        raise NotFound(
            f"no neuron L{layer}.{neuron} in model {model['name']}: "
            f"layers 0-{model['n_layers'] - 1}, neurons 0-{model['n_neurons'] - 1}"
        )
    relations = _neuron_relations(summaries.of(conn, r), layer, neuron)
    covered = sum(1 for c in relations.column("coverage").to_pylist() if c is not None and c >= RELATION_LEVEL_SHARE)
    info = {
        "run": _run_info(r),
        "model": model,
        "layer": layer,
        "neuron": neuron,
        "relation_level_in": covered,
        "hub": covered >= HUB_MIN_RELATIONS,
    }
    tables = {
        "facts": _query(conn, "neuron-facts", run_id=r.id, layer=layer, neuron=neuron),
        "relations": relations,
        "tokens": _statement(conn, "page_neuron_tokens", model_id=r.model_id, layer=layer, neuron=neuron),
    }
    return Page(f"L{layer}.{neuron}", info, tables, r)


def _neuron_relations(summary: RunSummary, layer: int, neuron: int) -> pa.Table:
    """The relations that have the neuron, with their label, size and coverage, most facts first."""
    table = _with_share(summary.neuron_pairs(layer, neuron), summary.sizes, "coverage")
    labels = [summary.labels.get(rel) for rel in table.column("relation_id").to_pylist()]
    table = table.add_column(1, "label", pa.array(labels, pa.string())).drop_columns(["layer", "neuron"])
    return table.sort_by([("n_facts", "descending"), ("relation_id", "ascending")])


def edits_page(conn: Connection) -> Page:
    return Page("Edits and injections", {}, {"edits": _statement(conn, "page_edits")})


def edit_page(conn: Connection, edit_id: int) -> Page:
    edit = _one(conn, "page_edit", f"edit {edit_id}", edit_id=edit_id)
    tables = {
        "slots": _statement(conn, "page_edit_slots", edit_id=edit_id),
        "audit": _statement(conn, "page_edit_audit", edit_id=edit_id),
    }
    return Page(f"Edit {edit_id}: {edit['kind']} {edit['target']}", {"edit": edit}, tables)


def injection_page(conn: Connection, injection_id: int) -> Page:
    injection = _one(conn, "page_injection", f"injection {injection_id}", injection_id=injection_id)
    audit = json.dumps(json.loads(injection["audit"] or "{}"), indent=2, sort_keys=True)
    tables = {
        "facts": _statement(conn, "page_injection_facts", injection_id=injection_id),
        "slots": _with_roles(conn, _statement(conn, "page_injection_slots", injection_id=injection_id), injection_id),
    }
    return Page(f"Injection {injection_id}", {"injection": injection, "audit_text": audit}, tables)


def _with_roles(conn: Connection, slots: pa.Table, injection_id: int) -> pa.Table:
    """The slot pairs with a `role` column: 'guard' for a pair that cancels its fact's slot on the
    fact's namesakes (recorded in the fact's info), 'slot' for the others."""
    info = rows(_statement(conn, "page_injection_guards", injection_id=injection_id))
    guards = {
        (g["layer"], g["index"])
        for r in info
        for g in json.loads(r["info"] or "{}").get("guards", [])
        if g.get("index") is not None
    }
    at = zip(slots.column("layer").to_pylist(), slots.column("neuron").to_pylist())
    return slots.append_column("role", pa.array(["guard" if a in guards else "slot" for a in at], pa.string()))


def search_page(conn: Connection, q: str, limit: int = 50) -> Page:
    q = q.strip()
    if not q:
        raise InputError("search: give a subject, object, relation, fact id or L<layer>.<neuron>")
    pattern = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    found = _statement(conn, "page_search", q=q, pattern=pattern, limit=limit)
    return Page(f"Search: {q}", {"q": q}, {"matches": found})


def neuron_address(q: str) -> tuple[int, int] | None:
    """``L12.345`` (or ``L12:345``, ``l12 345``) as (layer, neuron); None for anything else."""
    m = NEURON_NAME.match(q)
    return (int(m.group(1)), int(m.group(2))) if m else None


def warm(conn: Connection, summaries: RunSummaries) -> int:
    """Read the summaries of every done run now (a server does this as it starts); how many."""
    done = [
        run_id for run_id, status in zip(*_columns(_statement(conn, "page_runs"), "id", "status")) if status == "done"
    ]
    for run_id in done:
        summaries.of(conn, resolve_run(conn, run_id))
    return len(done)


def _columns(table: pa.Table, *names: str) -> list[list[Any]]:
    return [table.column(n).to_pylist() for n in names]


def latest_run(conn: Connection) -> Run:
    """The newest run (where a search for a neuron names none)."""
    runs = _statement(conn, "page_runs")
    if not runs.num_rows:
        raise NotFound("the atlas has no runs yet: run `atlas index` first")
    return resolve_run(conn, runs.column("id")[0].as_py())


def _run_info(r: Run) -> dict[str, Any]:
    doc = asdict(r)
    return {k: doc[k] for k in ("id", "name", "model_id", "model_name", "dataset", "status", "params", "stats")} | {
        "created_at": r.created_at,
        "finished_at": r.finished_at,
    }


def page_json(page: Page) -> Mapping[str, Any]:
    """A page as JSON-ready data: its info and every table as a list of row objects."""
    return {"title": page.title, "info": page.info, "tables": {k: rows(t) for k, t in page.tables.items()}}
