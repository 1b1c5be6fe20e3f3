"""``atlas query`` and ``atlas sql`` through the real command line (CliRunner), on both backends."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from atlas.cli import cli
from atlas.db import queries
from atlas.db.store import Store
from tests.support.db import snapshot
from tests.support.tiny_atlas import load_tiny


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_list_shows_every_query_with_its_parameters() -> None:
    code, out = run("query", "--list")
    assert code == 0
    for q in queries.list_queries():
        assert q.name in out and f"params: {q.describe_params()}" in out
    assert "fact-interference" in out and "min_shared (int, default 2)" in out


@pytest.mark.parametrize("fmt", ["csv", "json", "table"])
def test_query_formats(store: Store, fmt: str) -> None:
    load_tiny(store)
    code, out = run(
        "query", "fact-interference", "-p", "run_id=1", "-p", "fact_id=f1", "--format", fmt, "--db", store.url
    )
    assert code == 0, out
    expected = queries.run_query(store, "fact-interference", {"run_id": 1, "fact_id": "f1"})
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(out)))
        assert rows[0] == expected.columns and [r[0] for r in rows[1:]] == ["f2", "f4"]
    elif fmt == "json":
        doc = json.loads(out)
        assert [d["fact_id"] for d in doc] == ["f2", "f4"] and doc[0]["shared"] == 3 and doc[0]["same_relation"] is True
    else:
        assert "fact-interference" in out and "f2" in out and "2 rows" in out


def test_parquet_needs_output_and_writes_a_file(store: Store, tmp_path: Path) -> None:
    load_tiny(store)
    code, out = run("query", "interference-pairs", "-p", "run_id=1", "--format", "parquet", "--db", store.url)
    assert code != 0 and "--format parquet needs --output FILE" in out
    target = tmp_path / "pairs.parquet"
    code, out = run(
        "query",
        "interference-pairs",
        "-p",
        "run_id=1",
        "--format",
        "parquet",
        "-o",
        str(target),
        "--via",
        "duckdb",
        "--db",
        store.url,
    )
    assert code == 0, out
    table = pq.read_table(target)
    assert table.column_names == list(queries.load_query("interference-pairs").columns)
    assert table.column("shared").to_pylist() == [3, 2, 2]


def test_bad_input_is_one_line_and_changes_nothing(store: Store) -> None:
    load_tiny(store)
    before = snapshot(store)
    code, out = run("query", "no-such-query", "--db", store.url)
    assert code != 0 and "unknown query 'no-such-query'; available:" in out and "fact-neurons" in out
    code, out = run("query", "fact-neurons", "-p", "run_id=1", "--db", store.url)
    assert code != 0 and "missing parameter fact_id; parameters of fact-neurons: run_id (int), fact_id (text)" in out
    code, out = run("query", "fact-neurons", "-p", "run_id=one", "-p", "fact_id=f1", "--db", store.url)
    assert code != 0 and "run_id='one' is not int" in out
    code, out = run(
        "query",
        "fact-neurons",
        "-p",
        "run_id=1",
        "-p",
        "fact_id=x'; DROP TABLE facts; --",
        "--format",
        "csv",
        "--db",
        store.url,
    )
    assert code == 0 and out.strip() == "layer,neuron,score,n_prompts,n_facts"
    assert len([line for line in out.splitlines() if line]) == 1
    assert snapshot(store) == before


def test_sql_reads_and_refuses_writes(store: Store) -> None:
    load_tiny(store)
    before = snapshot(store)
    code, out = run("sql", "SELECT id, relation_id FROM facts ORDER BY id", "--format", "csv", "--db", store.url)
    assert code == 0 and out.splitlines()[:2] == ["id,relation_id", "f1,R1"]
    for statement in (
        "DELETE FROM facts",
        "DROP TABLE knowledge_neurons",
        "SELECT 1; DELETE FROM facts",
        "PRAGMA threads = 1",
    ):
        code, out = run("sql", statement, "--db", store.url)
        assert code != 0 and "refused" in out and len(out.strip().splitlines()) == 1, out
    assert snapshot(store) == before


def test_commands_document_an_example() -> None:
    for args in (
        ["query", "--help"],
        ["sql", "--help"],
        ["plot", "layers", "--help"],
        ["plot", "overlap", "--help"],
        ["plot", "fact", "--help"],
    ):
        code, out = run(*args)
        assert code == 0 and "Example:" in out and "atlas " in out.split("Example:")[1]
