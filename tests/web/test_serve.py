"""`atlas serve` over HTTP on both backends: every page and its API against the atlas's own rows,
downloads, OpenAPI, the vocabulary projection against a slow reference, errors as one line, markup
as text, and a database that the server cannot change."""

from __future__ import annotations

import io
import json
import re

import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from atlas.db.queries import list_queries, run_query
from atlas.db.runs import get_run
from atlas.db.schema import facts, knowledge_neurons, neuron_tokens
from atlas.jobs.inject import NewFact, inject_facts
from atlas.jobs.specs import InjectSpec
from tests.support.db import snapshot
from tests.web.conftest import XSS_FACT, XSS_SUBJECT, Served


def _json(client, url: str) -> dict:
    r = client.get(url)
    assert r.status_code == 200, (url, r.status_code, r.text[:300])
    return r.json()


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text and 'File "' not in text


def _fact_with_neurons(served: Served) -> str:
    with served.store.begin() as conn:
        return (
            conn.execute(sa.select(knowledge_neurons.c.fact_id).order_by(knowledge_neurons.c.fact_id)).scalars().first()
        )


def test_pages_show_the_atlas_rows(served: Served) -> None:
    store, w = served.store, served.world
    run = get_run(store, w.run)
    fact = _fact_with_neurons(served)
    expected_neurons = run_query(store, "fact-neurons", {"run_id": run.id, "fact_id": fact}).table.to_pylist()
    top = expected_neurons[0]
    expected_facts = run_query(
        store, "neuron-facts", {"run_id": run.id, "layer": top["layer"], "neuron": top["neuron"]}
    ).table.to_pylist()
    expected_sharing = run_query(store, "fact-interference", {"run_id": run.id, "fact_id": fact}).table.to_pylist()
    with store.begin() as conn:
        per_layer = conn.execute(
            sa.select(knowledge_neurons.c.layer, sa.func.count())
            .join(facts, facts.c.id == knowledge_neurons.c.fact_id)
            .where(facts.c.relation_id == "P36", knowledge_neurons.c.run_id == run.id)
            .group_by(knowledge_neurons.c.layer)
        ).all()
    expected_layers = {int(layer): n for layer, n in per_layer}
    expected_level = run_query(store, "relation-neurons", {"run_id": run.id, "relation_id": "P36", "min_share": 0.1})
    with served.client() as c:
        runs = _json(c, "/api/runs")["tables"]["runs"]
        assert [r["name"] for r in runs] == [w.run] and runs[0]["n_relations"] == 3 and runs[0]["n_facts"] > 0
        rels = {r["relation_id"]: r for r in _json(c, f"/api/run/{w.run}")["tables"]["relations"]}
        assert set(rels) == {"P36", "P37", "P30"} and all(r["n_facts"] == 5 for r in rels.values())
        page = _json(c, f"/api/run/{w.run}/fact/{fact}")
        assert page["tables"]["neurons"] == expected_neurons
        assert page["tables"]["sharing"] == expected_sharing
        assert len(page["tables"]["prompts"]) == 3 and all(p["p_gold"] is not None for p in page["tables"]["prompts"])
        neuron = _json(c, f"/api/run/{w.run}/neuron/{top['layer']}/{top['neuron']}")
        assert neuron["tables"]["facts"] == expected_facts
        assert sum(r["n_facts"] for r in neuron["tables"]["relations"]) == len(expected_facts)
        relation = _json(c, f"/api/run/{w.run}/relation/P36")
        assert {f["fact_id"] for f in relation["tables"]["facts"]} == {f for f in w.fact_ids if f.startswith("P36")}
        assert relation["tables"]["relation_neurons"] == expected_level.table.to_pylist()  # derived from one read
        assert {x["layer"]: x["n_entries"] for x in relation["tables"]["layers"]} == expected_layers
        html = c.get(f"/run/{w.run}/fact/{fact}").text
        assert f'href="/run/{w.run}/neuron/{top["layer"]}/{top["neuron"]}"' in html  # neurons link to their pages
        assert 'data-kind="heatmap"' in html  # the per-prompt score heatmap


def test_named_queries_bind_as_the_cli_does(served: Served) -> None:
    run = get_run(served.store, served.world.run)
    fact = _fact_with_neurons(served)
    expected = {
        q.name: run_query(served.store, q.name, {"run_id": str(run.id), "fact_id": fact}).table.to_pylist()
        for q in list_queries()
        if {p.name for p in q.params if p.required} == {"run_id", "fact_id"}
    }
    with served.client() as c:
        for name, rows in expected.items():
            assert _json(c, f"/api/query/{name}?run_id={run.id}&fact_id={fact}")["tables"]["rows"] == rows
            form = c.get(f"/sql/{name}?run_id={run.id}&fact_id={fact}").text
            assert f"{len(rows)} row" in form
        spec = _json(c, "/api/openapi.json")
        for q in list_queries():
            params = spec["paths"][f"/api/query/{q.name}"]["get"]["parameters"]
            assert {p.name for p in q.params} <= {p["name"] for p in params}
        assert "/api/run/{run}/neuron/{layer}/{neuron}" in spec["paths"]


def test_every_table_downloads_in_three_formats(served: Served) -> None:
    url = f"/api/run/{served.world.run}/fact/{_fact_with_neurons(served)}"
    with served.client() as c:
        rows = _json(c, url)["tables"]["prompt_scores"]
        as_json = _json(c, url + "?table=prompt_scores&format=json")
        csv = pa_csv.read_csv(io.BytesIO(c.get(url + "?table=prompt_scores&format=csv").content)).to_pylist()
        parquet = pq.read_table(io.BytesIO(c.get(url + "?table=prompt_scores&format=parquet").content)).to_pylist()
        assert as_json == rows == parquet and len(csv) == len(rows)
        assert [r["score"] for r in csv] == pytest.approx([r["score"] for r in rows], nan_ok=True)
        r = c.get(url + "?table=prompt_scores&format=csv")
        assert r.headers["content-disposition"].startswith("attachment;")


def test_neuron_tokens_match_a_slow_reference(served: Served) -> None:
    """The value slot read through the final norm's scale and the unembedding, token by token."""
    lm, w = served.world.lm, served.world
    layer, neuron = 1, 3
    slot = lm.adapter.value_slots(layer)[neuron].double()
    scale = lm.adapter.final_norm_scale().detach()
    emb = lm.adapter.unembedding().detach().double()
    logits = [
        float(sum(slot[h] * emb[t, h] * (1.0 if scale is None else float(scale[h])) for h in range(slot.numel())))
        for t in range(emb.shape[0])
    ]
    best = sorted(range(len(logits)), key=lambda t: -logits[t])[:5]
    with served.client() as c:
        tokens = _json(c, f"/api/run/{w.run}/neuron/{layer}/{neuron}")["tables"]["tokens"]
    assert [t["token_id"] for t in tokens[:5]] == best
    assert [t["logit"] for t in tokens[:5]] == pytest.approx([logits[t] for t in best], rel=1e-4)
    if served.store.backend == "postgresql":  # stored beside the read-only readers
        with served.store.begin() as conn:
            assert conn.execute(neuron_tokens.select()).all()


def test_bad_requests_are_one_line_and_change_nothing(served: Served) -> None:
    w = served.world
    before = snapshot(served.store)
    cases = {
        "/run/nope": (404, "unknown run 'nope'"),
        "/api/run/nope/fact/x": (404, "unknown run 'nope'"),
        f"/run/{w.run}/fact/no-such-fact": (404, "unknown fact 'no-such-fact'"),
        f"/run/{w.run}/neuron/999/0": (404, "no neuron L999.0"),
        f"/run/{w.run}/relation/P999": (404, "unknown relation 'P999'"),
        "/edit/424242": (404, "unknown edit 424242"),
        "/no/such/page": (404, "no such page"),
        "/api/query/fact-neurons?run_id=abc&fact_id=x": (400, "parameter run_id='abc' is not int"),
        "/api/query/nope": (404, "unknown query 'nope'"),
        "/api/query/fact-neurons?run_id=1": (400, "missing parameter fact_id"),
        "/api/sql?sql=DROP+TABLE+facts": (400, "refused: DROP"),
        "/sql?sql=DELETE+FROM+facts": (400, "refused: DELETE"),
        "/api/sql?sql=SELECT+1%3B+SELECT+2": (400, "refused: 2 statements"),
        "/api/runs?format=xml": (400, "format='xml'"),
        "/api/runs?table=nope&format=csv": (404, "no table 'nope'"),
        "/search?q=": (400, "search: give"),
    }
    with served.client() as c:
        for url, (status, message) in cases.items():
            r = c.get(url)
            assert r.status_code == status, (url, r.status_code, r.text[:300])
            _no_traceback(r.text)
            text = r.json()["error"] if url.startswith("/api/") else r.text
            assert message in text.replace("&#39;", "'"), (url, text[:300])
        slow = (
            "SELECT pg_sleep(5)"
            if served.store.backend == "postgresql"
            else ("SELECT count(*) FROM range(100000000) a, range(100000) b")
        )
        r = c.get("/api/sql", params={"sql": slow})
        assert r.status_code == 400 and "cancelled" in r.json()["error"]
        if served.store.backend == "postgresql":
            assert _json(c, "/api/sql?sql=SELECT+current_user+AS+u")["tables"]["rows"] == [{"u": "atlas_reader"}]
            r = c.get("/api/sql", params={"sql": "SELECT pg_read_file('/etc/hostname')"})
        else:
            r = c.get("/api/sql", params={"sql": "SELECT * FROM read_text('/etc/hostname')"})
        assert r.status_code == 400 and "refused" in r.json()["error"]
    after = snapshot(served.store)
    after.pop("neuron_tokens"), before.pop("neuron_tokens")
    assert after == before


def test_markup_in_the_data_renders_as_text(served: Served) -> None:
    w = served.world
    with served.client() as c:
        pages = [c.get(f"/run/{w.run}/fact/{XSS_FACT}").text, c.get("/search", params={"q": "script"}).text]
        api = _json(c, f"/api/run/{w.run}/fact/{XSS_FACT}")
    for html in pages:
        assert "<script>alert" not in html and "Paris</td>" not in html
        assert "&lt;script&gt;alert(" in html
        for block in re.findall(r'<script type="application/json"[^>]*>(.*?)</script>', html, re.S):
            json.loads(block)  # plot specs stay JSON, their '<' escaped
    assert api["info"]["fact"]["subject"] == XSS_SUBJECT


def test_edit_page_plots_the_audit(served: Served) -> None:
    with served.client() as c:
        page = _json(c, f"/api/edit/{served.edit_id}")
        html = c.get(f"/edit/{served.edit_id}").text
        edits = _json(c, "/api/edits")["tables"]["edits"]
    assert page["info"]["edit"]["status"] == "trial" and page["tables"]["slots"]  # audit_sample's edits are trials
    roles = {r["role"] for r in page["tables"]["audit"]}
    assert "target" in roles and 'data-kind="scatter"' in html
    assert all(r["predicted_sketch_dp"] is not None for r in page["tables"]["audit"])
    assert "predicted (gradient sketches) against measured" in html
    assert [e["id"] for e in edits if e["kind"] != "inject"] == [served.edit_id]


def test_injection_page_shows_its_facts_slots_and_audit(served: Served) -> None:
    prompts = ("The capital of Peru is [Y]", "Peru has its capital in [Y]", "The capital city of Peru is [Y]")
    spec = InjectSpec(heldout=1, audit_facts=10, negatives=30, fill_negatives=False)
    rec = inject_facts(
        served.store, served.world.lm, served.world.run, [NewFact("P36:Peru", "P36", "Peru", "Rome", prompts)], spec
    )
    with served.client() as c:
        page = _json(c, f"/api/injection/{rec.id}")
        html = c.get(f"/injection/{rec.id}").text
        edits = c.get("/edits").text
    assert [f["object"] for f in page["tables"]["facts"]] == ["Rome"]
    assert (
        len(page["tables"]["slots"]) == len(rec.facts[0].info["slots"])
        and page["info"]["injection"]["status"] == "applied"
    )
    assert json.loads(page["info"]["audit_text"])["efficacy"] == rec.audit["efficacy"]
    assert "Rome" in html and f'href="/injection/{rec.id}"' in edits
