"""Loading facts into the store, idempotently and atomically, on DuckDB and PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from atlas.db.datasets import read_jsonl, read_kn_paper, read_pararel
from atlas.db.facts import LOAD_STEPS, list_facts, load_dataset, show_fact
from atlas.db.schema import dataset_facts, facts, prompts, relations
from atlas.db.store import Store
from atlas.errors import InputError, NotFound
from tests.support.db import snapshot
from tests.support.files import FACT, write_jsonl


def rows(store: Store, table: sa.Table, *cols: str) -> list[tuple]:
    with store.begin() as conn:
        return sorted(tuple(r) for r in conn.execute(sa.select(*(table.c[c] for c in cols))))


def test_load_writes_every_fact_and_prompt(store: Store) -> None:
    data = read_pararel(["P36", "P103"], limit_per_relation=5)
    steps: list[str] = []
    report = load_dataset(store, data, on_step=steps.append)
    assert steps == list(LOAD_STEPS)
    assert (report.n_facts, report.new_facts, report.n_prompts, report.new_prompts) == (
        10,
        10,
        data.n_prompts,
        data.n_prompts,
    )
    assert report.new_relations == 2
    assert rows(store, facts, "id", "relation_id", "subject", "object", "dataset") == sorted(
        (f.id, f.relation_id, f.subject, f.object, "pararel") for f in data.facts
    )
    assert rows(store, prompts, "fact_id", "template", "text", "causal", "masked") == sorted(
        (f.id, p.template, p.text, p.causal, p.masked) for f in data.facts for p in f.prompts
    )
    assert rows(store, dataset_facts, "dataset", "fact_id") == sorted(("pararel", f.id) for f in data.facts)
    assert rows(store, relations, "id", "label", "type") == sorted((r.id, r.label, r.type) for r in data.relations)
    assert len(set(rows(store, prompts, "id"))) == data.n_prompts


def test_second_load_adds_nothing(store: Store) -> None:
    data = read_kn_paper(["P36"], limit_per_relation=4)
    load_dataset(store, data)
    before = snapshot(store)
    report = load_dataset(store, data)
    assert (report.new_facts, report.new_prompts, report.new_relations, report.new_memberships) == (0, 0, 0, 0)
    assert str(report) == f"kn-paper: 4 facts, {data.n_prompts} prompts (0 new facts, 0 new prompts)"
    assert snapshot(store) == before


def test_a_fact_belongs_to_every_dataset_that_loaded_it(store: Store) -> None:
    pararel = read_pararel(["P36"], limit_per_relation=6)
    kn = read_kn_paper(["P36"], limit_per_relation=6)
    shared = {f.id for f in pararel.facts} & {f.id for f in kn.facts}
    assert shared, "the subsets must overlap for this test to mean anything"
    load_dataset(store, pararel)
    report = load_dataset(store, kn)
    assert report.new_facts == len(kn.facts) - len(shared)
    assert report.new_memberships == len(kn.facts)
    first = dict(rows(store, facts, "id", "dataset"))
    assert all(first[i] == "pararel" for i in shared)
    assert {f.id for f in list_facts(store, dataset="kn-paper", limit=None)} == {f.id for f in kn.facts}
    assert show_fact(store, next(iter(shared))).datasets == ["kn-paper", "pararel"]


def test_new_templates_for_a_known_fact_add_prompts_only(store: Store, tmp_path) -> None:
    load_dataset(store, read_jsonl(write_jsonl(tmp_path / "a.jsonl", [FACT])))
    more = {**FACT, "templates": ["The capital of [X] is [Y].", "[X]'s capital is [Y]."]}
    report = load_dataset(store, read_jsonl(write_jsonl(tmp_path / "a.jsonl", [more])))
    assert (report.new_facts, report.new_prompts) == (0, 1)
    assert [p.text for p in show_fact(store, "f1").prompts] == [
        "The capital of France is [Y].",
        "France's capital is [Y].",
    ]


def test_conflict_with_the_database_changes_nothing(store: Store, tmp_path) -> None:
    load_dataset(store, read_jsonl(write_jsonl(tmp_path / "a.jsonl", [FACT])))
    before = snapshot(store)
    bad = write_jsonl(
        tmp_path / "b.jsonl",
        [
            {"relation": "P9001", "label": "new relation", "type": "N-1"},  # would be inserted before the check
            {**FACT, "id": "f2", "relation": "P9001", "subject": "Ada"},
            {**FACT, "object": "Lyon"},
        ],
    )
    with pytest.raises(
        InputError, match=r"b.jsonl:3: fact f1 is P36\('France', 'Lyon'\) but the database has P36\('France', 'Paris'\)"
    ):
        load_dataset(store, read_jsonl(bad))
    assert snapshot(store) == before


def test_relation_stored_with_another_label_is_a_conflict(store: Store, tmp_path) -> None:
    load_dataset(
        store,
        read_jsonl(
            write_jsonl(
                tmp_path / "a.jsonl",
                [{"relation": "P9001", "label": "colour", "type": "N-1"}, {**FACT, "relation": "P9001"}],
            )
        ),
    )
    before = snapshot(store)
    with pytest.raises(InputError, match=r"relation P9001 is 'hue' \(N-1\) here but 'colour' \(N-1\) in the database"):
        load_dataset(
            store,
            read_jsonl(
                write_jsonl(
                    tmp_path / "b.jsonl",
                    [{"relation": "P9001", "label": "hue", "type": "N-1"}, {**FACT, "id": "f9", "relation": "P9001"}],
                )
            ),
        )
    assert snapshot(store) == before


def test_list_and_show(store: Store) -> None:
    data = read_kn_paper(["P36", "P103"], limit_per_relation=3)
    load_dataset(store, data)
    listed = list_facts(store, relation="P103", limit=None)
    assert [f.subject for f in listed] == sorted(f.subject for f in data.facts if f.relation_id == "P103")
    assert len(list_facts(store, limit=2)) == 2
    assert list_facts(store, dataset="pararel") == []
    fact = next(f for f in data.facts if f.relation_id == "P36")
    detail = show_fact(store, fact.id)
    assert (detail.fact.subject, detail.fact.object, detail.relation.label) == (fact.subject, fact.object, "capital")
    assert detail.fact.n_prompts == len(fact.prompts) == len(detail.prompts)
    assert detail.fact.n_causal == sum(p.causal for p in fact.prompts) == sum(p.causal for p in detail.prompts)
    assert {p.text for p in detail.prompts} == {p.text for p in fact.prompts}
    with pytest.raises(NotFound, match="no fact with id 'missing'"):
        show_fact(store, "missing")
