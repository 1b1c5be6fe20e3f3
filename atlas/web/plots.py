"""Plot specifications for the pages (drawn in the browser by the bundled ``static/plots.js``).

Each function turns a page's tables into the JSON spec one of `AtlasPlots.heatmap`, `bars` or
`scatter` takes; a page shows no plot where its table is empty.
"""

from __future__ import annotations

from typing import Any

from atlas.db.audits import DP_COLUMNS, PREDICTOR_NAMES, predictor_of
from atlas.db.browse import Page
from atlas.web.views import href

Spec = dict[str, Any]


def layer_bars(page: Page, table: str, title: str) -> Spec | None:
    rows = page.table(table).to_pylist()
    if not rows:
        return None
    return {
        "labels": [str(r["layer"]) for r in rows],
        "values": [r["n_entries"] for r in rows],
        "title": title,
        "xLabel": "layer",
        "yLabel": "knowledge-neuron entries (fact, neuron)",
    }


def overlap_heatmap(page: Page, run: Any) -> Spec | None:
    """The relation's most frequent neurons (rows) against every relation that uses them (columns)."""
    rows = page.table("overlap").to_pylist()
    if not rows:
        return None
    own = page.info["relation"]["id"]
    neurons = sorted({(r["layer"], r["neuron"]) for r in rows})
    relations = sorted({r["relation_id"] for r in rows}, key=lambda rel: (rel != own, rel))
    value = {(r["layer"], r["neuron"], r["relation_id"]): r["share"] for r in rows}
    return {
        "rows": [f"L{layer}.{n}" for layer, n in neurons],
        "cols": relations,
        "values": [[value.get((layer, n, rel), 0.0) for rel in relations] for layer, n in neurons],  # absent: none
        "links": [[href("neuron", run, layer=layer, neuron=n) for _ in relations] for layer, n in neurons],
        "title": "share of each relation's facts that have the neuron (this relation first)",
        "xLabel": "relation",
        "yLabel": "neuron",
    }


def prompt_heatmap(page: Page, run: Any) -> Spec | None:
    """The fact's top neurons (columns) across its prompts (rows): fact-prompt-scores."""
    rows = page.table("prompt_scores").to_pylist()
    if not rows:
        return None
    prompts = list(dict.fromkeys((r["prompt_id"], r["template"]) for r in rows))
    neurons = list(dict.fromkeys((r["neuron_rank"], r["layer"], r["neuron"]) for r in rows))
    neurons.sort()
    score = {(r["prompt_id"], r["layer"], r["neuron"]): r["score"] for r in rows}
    return {
        "rows": [template for _, template in prompts],
        "cols": [f"L{layer}.{n}" for _, layer, n in neurons],
        "values": [[score.get((p, layer, n)) for _, layer, n in neurons] for p, _ in prompts],
        "links": [[href("neuron", run, layer=layer, neuron=n) for _, layer, n in neurons] for _ in prompts],
        "title": "attribution score per prompt (grey: not stored for that prompt)",
        "xLabel": "neuron (knowledge neurons first)",
        "yLabel": "prompt template",
    }


def coverage_bars(page: Page) -> Spec | None:
    rows = page.table("relations").to_pylist()
    if not rows:
        return None
    return {
        "labels": [r["relation_id"] for r in rows],
        "values": [r["coverage"] or 0.0 for r in rows],
        "title": "share of each relation's facts that have this neuron",
        "xLabel": "relation",
        "yLabel": "coverage",
    }


def audit_scatter(page: Page) -> Spec | None:
    rows = page.table("audit").to_pylist()
    name = predictor_of(r["predicted_sketch_dp"] for r in rows)
    column = DP_COLUMNS[name]
    rows = [r for r in rows if r[column] is not None]
    if not rows:
        return None
    return {
        "x": [r[column] for r in rows],
        "y": [r["measured_dp"] for r in rows],
        "labels": [f"{r['subject']} ({r['relation_id']})" for r in rows],
        "groups": [r["role"] for r in rows],
        "diagonal": True,
        "title": f"predicted ({PREDICTOR_NAMES[name]}) against measured change of P(gold)",
        "xLabel": "predicted dP",
        "yLabel": "measured dP",
    }


def page_plots(kind: str, page: Page, run: Any) -> dict[str, Spec]:
    """The plots of one page kind, by id (those without data left out)."""
    specs: dict[str, Spec | None] = {}
    if kind == "run":
        specs["layers"] = layer_bars(page, "layers", "knowledge neurons per layer")
    elif kind == "relation":
        specs["layers"] = layer_bars(page, "layers", "the relation's knowledge neurons per layer")
        specs["overlap"] = overlap_heatmap(page, run)
    elif kind == "fact":
        specs["scores"] = prompt_heatmap(page, run)
    elif kind == "neuron":
        specs["coverage"] = coverage_bars(page)
    elif kind == "edit":
        specs["audit"] = audit_scatter(page)
    return {k: v for k, v in specs.items() if v is not None}
