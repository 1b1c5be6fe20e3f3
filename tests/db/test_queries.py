"""The named queries: headers, parameter binding, results against a Python reference, path equality.

Every query runs on both backends (the ``store`` fixture) over a hand-checkable tiny atlas and a
small synthetic one; on each, every path (native, duckdb) must return exactly the same rows and
match the slow reference in tests/query_reference.py.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from atlas.db import queries, readonly
from atlas.db.store import Store
from atlas.errors import InputError
from bench.synthetic_atlas import build_synthetic_atlas
from tests.support import query_reference as ref
from tests.support.db import snapshot
from tests.support.tiny_atlas import WRITES, load_tiny


def cases(
    run_id: int, fact: str, relation: str, layer: int, neuron: int, other_run: int
) -> list[tuple[str, dict, object]]:
    """(query, params, reference function call) triples covering every query and its thresholds."""
    return [
        ("fact-neurons", {"run_id": run_id, "fact_id": fact}, lambda a: ref.fact_neurons(a, run_id, fact)),
        (
            "neuron-facts",
            {"run_id": run_id, "layer": layer, "neuron": neuron},
            lambda a: ref.neuron_facts(a, run_id, layer, neuron),
        ),
        (
            "relation-neurons",
            {"run_id": run_id, "relation_id": relation},
            lambda a: ref.relation_neurons(a, run_id, relation),
        ),
        (
            "relation-neurons",
            {"run_id": run_id, "relation_id": relation, "min_facts": 1, "min_share": 0.5},
            lambda a: ref.relation_neurons(a, run_id, relation, 1, 0.5),
        ),
        ("hub-neurons", {"run_id": run_id}, lambda a: ref.hub_neurons(a, run_id)),
        (
            "hub-neurons",
            {"run_id": run_id, "min_relations": 2, "min_share": 0.5},
            lambda a: ref.hub_neurons(a, run_id, 2, 0.5),
        ),
        ("fact-interference", {"run_id": run_id, "fact_id": fact}, lambda a: ref.fact_interference(a, run_id, fact)),
        (
            "fact-interference",
            {"run_id": run_id, "fact_id": fact, "min_shared": 1},
            lambda a: ref.fact_interference(a, run_id, fact, 1),
        ),
        ("interference-pairs", {"run_id": run_id}, lambda a: ref.interference_pairs(a, run_id)),
        ("interference-pairs", {"run_id": run_id, "min_shared": 3}, lambda a: ref.interference_pairs(a, run_id, 3)),
        ("relation-overlap", {"run_id": run_id}, lambda a: ref.relation_overlap(a, run_id)),
        (
            "relation-overlap",
            {"run_id": run_id, "min_facts": 1, "min_share": 0.5},
            lambda a: ref.relation_overlap(a, run_id, 1, 0.5),
        ),
        ("layer-distribution", {"run_id": run_id}, lambda a: ref.layer_distribution(a, run_id)),
        ("run-diff", {"run_a": run_id, "run_b": other_run}, lambda a: ref.run_diff(a, run_id, other_run)),
        ("fact-prompt-scores", {"run_id": run_id, "fact_id": fact}, lambda a: ref.fact_prompt_scores(a, run_id, fact)),
        (
            "fact-prompt-scores",
            {"run_id": run_id, "fact_id": fact, "top": 2},
            lambda a: ref.fact_prompt_scores(a, run_id, fact, 2),
        ),
    ]


def check_all(store: Store, triples: list[tuple[str, dict, object]]) -> dict[str, int]:
    """Run every case by every path; paths must agree exactly and match the reference."""
    rows = ref.AtlasRows.read(store)
    sizes = {}
    for name, params, expected in triples:
        native = queries.run_query(store, name, params, via="native")
        duck = queries.run_query(store, name, params, via="duckdb")
        assert native.columns == list(queries.load_query(name).columns), name
        assert duck.columns == native.columns and duck.rows == native.rows, f"{name} {params}: paths differ"
        ref.assert_rows_match(native.rows, expected(rows), f"{store.backend} {name} {params}")
        sizes[f"{name} {sorted(params.items())}"] = len(native.rows)
    return sizes


def test_tiny_atlas_hand_checked(store: Store) -> None:
    load_tiny(store)
    sizes = check_all(store, cases(1, "f1", "R1", 11, 1, 2))
    # spot checks a person can verify from TINY_KN by eye
    pairs = queries.run_query(store, "interference-pairs", {"run_id": 1}).rows
    assert [(p[0], p[1], p[4]) for p in pairs] == [("f1", "f2", 3), ("f1", "f4", 2), ("f2", "f4", 2)]
    hub = queries.run_query(store, "hub-neurons", {"run_id": 1, "min_relations": 2, "min_share": 0.5}).rows
    assert {(h[0], h[1], h[4]) for h in hub} == {(11, 1, "R1"), (11, 1, "R2"), (11, 2, "R1"), (11, 2, "R2")}
    diff = {r[0]: r[2:7] for r in queries.run_query(store, "run-diff", {"run_a": 1, "run_b": 2}).rows}
    assert diff["f1"] == (4, 2, 1, 3, 1) and diff["f6"] == (0, 1, 0, 0, 1) and diff["f5"] == (2, 0, 0, 2, 0)
    assert sizes["fact-prompt-scores [('fact_id', 'f1'), ('run_id', 1), ('top', 2)]"] == 6


def test_synthetic_atlas_matches_reference(store: Store) -> None:
    one = build_synthetic_atlas(
        store, n_facts=120, n_relations=4, neurons_per_fact=8, prompts=480, scores_per_prompt=12, seed=5
    )
    two = build_synthetic_atlas(
        store, n_facts=60, n_relations=2, neurons_per_fact=8, prompts=120, scores_per_prompt=6, seed=6
    )
    fact = one.fact_ids[7]
    with store.begin() as conn:
        layer, neuron = conn.execute(
            sa.text("SELECT layer, neuron FROM knowledge_neurons WHERE fact_id = :f ORDER BY score DESC LIMIT 1"),
            {"f": fact},
        ).one()
    sizes = check_all(store, cases(one.run_id, fact, one.relation_ids[0], layer, neuron, two.run_id))
    assert sizes[f"interference-pairs [('run_id', {one.run_id})]"] > 10  # the data really interferes
    assert sizes[f"hub-neurons [('run_id', {one.run_id})]"] > 0


@pytest.mark.parametrize("via", queries.PATHS)
def test_injection_in_a_parameter_is_only_data(store: Store, via: str) -> None:
    load_tiny(store)
    before = snapshot(store)
    evil = "x'; DROP TABLE facts; --"
    assert queries.run_query(store, "fact-neurons", {"run_id": 1, "fact_id": evil}, via=via).rows == []
    assert (
        queries.run_query(store, "relation-neurons", {"run_id": 1, "relation_id": "R1' OR '1'='1"}, via=via).rows == []
    )
    assert snapshot(store) == before


def test_duckdb_path_is_the_same_engine_on_a_duckdb_atlas_and_reads_postgresql_otherwise(store: Store) -> None:
    load_tiny(store)
    result = queries.run_query(store, "fact-neurons", {"run_id": 1, "fact_id": "f1"})
    assert result.via == queries.default_path(store, "fact-neurons")
    if store.backend == "postgresql":
        from atlas.db.mirror import PostgresMirror

        with PostgresMirror(store, mode="snapshot") as mirror:
            snap = queries.run_query(store, "fact-neurons", {"run_id": 1, "fact_id": "f1"}, via="duckdb", mirror=mirror)
            assert set(mirror.copied) == {"knowledge_neurons"}
        assert snap.rows == result.rows


def test_sql_runs_reads_and_refuses_writes_leaving_the_database_unchanged(store: Store) -> None:
    load_tiny(store)
    result = readonly.run_sql(
        store, "SELECT relation_id, COUNT(*) AS n FROM facts GROUP BY relation_id ORDER BY relation_id"
    )
    assert result.columns == ["relation_id", "n"] and result.rows == [("R1", 3), ("R2", 2)]
    before = snapshot(store)
    first = _next_prompt_id(store)
    for statement in WRITES:
        with pytest.raises(InputError):
            readonly.run_sql(store, statement)
    # passes the parser (a SELECT) but advances a sequence: refused by the function check (and, behind
    # it, by the reader role / read-only connection: tests/db/test_sql_sandbox.py)
    with pytest.raises(InputError, match=r"refused: function nextval\(\)"):
        readonly.run_sql(store, "SELECT nextval('prompts_id_seq')")
    assert snapshot(store) == before
    assert _next_prompt_id(store) == first + 1  # the refused nextval never advanced it


def _next_prompt_id(store: Store) -> int:
    with store.begin() as conn:
        return conn.execute(sa.text("SELECT nextval('prompts_id_seq')")).scalar_one()
