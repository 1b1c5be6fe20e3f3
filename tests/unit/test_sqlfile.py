"""The one SQL-file loader: headers, parameters found outside comments and strings, binding, and the
read-only classifier of `atlas sql` (no database needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from atlas.db import queries, readonly, sqlfile
from atlas.errors import InputError, NotFound
from tests.support.tiny_atlas import MINE, WRITES


def test_every_query_file_parses_and_declares_its_parameters() -> None:
    names = [q.name for q in queries.list_queries()]
    assert set(MINE) <= set(names)
    for q in queries.list_queries():
        assert q.purpose and q.columns
        assert sorted(p.name for p in q.params) == sorted(sqlfile.sql_parameters(q.sql))


def test_every_statement_file_parses_and_declares_its_parameters() -> None:
    """The atlas's own statements use the same loader and header as the named queries."""
    names = sorted(p.stem for p in sqlfile.STATEMENT_DIR.glob("*.sql"))
    assert "claim_work_item" in names
    for name in names:
        s = sqlfile.statement(name)
        assert s.purpose and sorted(p.name for p in s.params) == sorted(sqlfile.sql_parameters(s.sql)), name
        for backend in ("duckdb", "postgresql"):
            s.text(backend)  # binds, with list parameters expanding


def test_header_must_match_the_sql(tmp_path: Path) -> None:
    path = tmp_path / "demo.sql"
    path.write_text("-- demo\n-- params: :run_id (int)\n-- columns: x\nSELECT 1 AS x WHERE :run_id = 1 AND :other = 2")
    with pytest.raises(ValueError, match="declares parameters \\['run_id'\\] but the SQL uses \\['run_id', 'other'\\]"):
        sqlfile.parse_sql_file(path)
    path.write_text("-- params: :a (number)\n-- columns: x\nSELECT :a AS x")
    with pytest.raises(ValueError, match="unknown type 'number'"):
        sqlfile.parse_sql_file(path)


def test_parameters_are_found_outside_comments_strings_and_casts() -> None:
    sql = (
        "-- :not_this\nSELECT ':nor_this', CAST(x AS INT), y::text, \"col:umn\" /* :nor */ "
        "FROM t WHERE a = :a AND b = :b_2 OR c = :a"
    )
    assert sqlfile.sql_parameters(sql) == ["a", "b_2"]
    assert sqlfile.executable_sql(sql, "duckdb").endswith("a = $a AND b = $b_2 OR c = $a")
    assert "'\\:nor_this'" in sqlfile.executable_sql(sql, "sqlalchemy")


def test_bad_parameters_are_refused_with_the_parameter_list() -> None:
    q = queries.load_query("fact-interference")
    listing = "run_id \\(int\\), fact_id \\(text\\), min_shared \\(int, default 2\\)"
    with pytest.raises(InputError, match=f"missing parameter fact_id; parameters of fact-interference: {listing}"):
        q.bind({"run_id": "1"})
    with pytest.raises(InputError, match=f"min_shared='two' is not int; parameters of fact-interference: {listing}"):
        q.bind({"run_id": "1", "fact_id": "f", "min_shared": "two"})
    with pytest.raises(InputError, match="has no parameter colour"):
        q.bind({"run_id": "1", "fact_id": "f", "colour": "red"})
    assert q.bind({"run_id": "1", "fact_id": "7"}) == {"run_id": 1, "fact_id": "7", "min_shared": 2}
    with pytest.raises(NotFound, match="unknown query 'nope'; available: .*fact-neurons"):
        queries.load_query("nope")
    with pytest.raises(InputError, match="is not key=value"):
        queries.parse_assignments(["run_id"])


@pytest.mark.parametrize("statement", WRITES)
def test_check_read_only_refuses_writes(statement: str) -> None:
    with pytest.raises(InputError, match="refused|cannot parse"):
        readonly.check_read_only(statement)
