"""``atlas facts`` and ``atlas demo`` through click, on both backends: output, exit codes, unchanged
database on errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from atlas.db.datasets import read_kn_paper
from atlas.db.store import Store
from tests.support.cli import atlas
from tests.support.db import snapshot
from tests.support.files import FACT, write_jsonl


def test_load_twice_reports_new_rows_then_none(store: Store) -> None:
    n_prompts = read_kn_paper(["P36", "P103"], 3).n_prompts
    first = atlas(
        "facts", "load", "kn-paper", "--relations", "P36,P103", "--limit-per-relation", "3", "--db", store.url
    )
    assert first.exit_code == 0, first.output
    assert first.output.strip().endswith(f"6 facts, {n_prompts} prompts (6 new facts, {n_prompts} new prompts)")
    again = atlas(
        "facts", "load", "kn-paper", "--relations", "P36,P103", "--limit-per-relation", "3", "--db", store.url
    )
    assert again.output.strip().endswith(f"6 facts, {n_prompts} prompts (0 new facts, 0 new prompts)")


def test_list_and_show(store: Store, tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "mine.jsonl",
        [
            FACT,
            {**FACT, "id": "f2", "subject": "Chad", "object": "N'Djamena", "templates": ["[Y] is the capital of [X]."]},
        ],
    )
    assert atlas("facts", "load", str(path), "--dataset", "mine", "--db", store.url).exit_code == 0
    listed = atlas("facts", "list", "--dataset", "mine", "--db", store.url)
    assert listed.output.splitlines() == [
        "f2  P36    Chad -> N'Djamena  (1 prompts, 0 causal)",
        "f1  P36    France -> Paris  (1 prompts, 1 causal)",
    ]
    assert atlas("facts", "list", "--relation", "P19", "--db", store.url).output == "no facts match\n"
    shown = atlas("facts", "show", "f1", "--db", store.url).output
    assert "relation  P36 capital (1-1)" in shown
    assert "datasets  mine (first loaded by mine)" in shown
    assert "causal masked  The capital of France is [Y].   -> causal LM reads 'The capital of France is'" in shown
    missing = atlas("facts", "show", "nope", "--db", store.url)
    assert (missing.exit_code, missing.output) == (1, "Error: no fact with id 'nope'\n")


BAD_FILES = {
    "malformed JSON": (['{"id": "f2", "relation": "P36",'], r"bad.jsonl:2: malformed JSON"),
    "missing field": (
        [{k: v for k, v in FACT.items() if k != "subject"} | {"id": "f2"}],
        "bad.jsonl:2: missing field 'subject'",
    ),
    "template without [X]": (
        [{**FACT, "id": "f2", "templates": ["The capital is [Y]."]}],
        "bad.jsonl:2: template 'The capital is [Y].' must contain [X] exactly once",
    ),
    "template without [Y]": (
        [{**FACT, "id": "f2", "templates": ["The capital of [X]."]}],
        "bad.jsonl:2: template 'The capital of [X].' must contain [Y] exactly once",
    ),
    "unknown relation": (
        [{**FACT, "id": "f2", "relation": "P424242"}],
        "bad.jsonl:2: relation P424242 is neither declared in the file nor bundled",
    ),
    "id reused in the file": ([{**FACT, "object": "Nice"}], "bad.jsonl:2: fact f1 differs from its earlier line"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_file_is_one_line_error_and_changes_nothing(store: Store, tmp_path: Path, case: str) -> None:
    atlas("facts", "load", "kn-paper", "--relations", "P36", "--limit-per-relation", "2", "--db", store.url)
    before = snapshot(store)
    extra, message = BAD_FILES[case]
    path = write_jsonl(tmp_path / "bad.jsonl", [FACT, *extra])
    result = atlas("facts", "load", str(path), "--db", store.url)
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and message in result.output, result.output
    assert snapshot(store) == before


def test_fact_conflicting_with_the_database_changes_nothing(store: Store, tmp_path: Path) -> None:
    fact = read_kn_paper(["P36"], 1).facts[0]
    atlas("facts", "load", "kn-paper", "--relations", "P36", "--limit-per-relation", "2", "--db", store.url)
    before = snapshot(store)
    path = write_jsonl(
        tmp_path / "bad.jsonl", [FACT, {**FACT, "id": fact.id, "subject": fact.subject, "object": "Atlantis"}]
    )
    result = atlas("facts", "load", str(path), "--db", store.url)
    assert result.exit_code == 1
    assert (
        f"bad.jsonl:2: fact {fact.id} is P36({fact.subject!r}, 'Atlantis') "
        f"but the database has P36({fact.subject!r}, {fact.object!r})" in result.output
    )
    assert snapshot(store) == before


def test_unknown_bundled_relation_changes_nothing(store: Store) -> None:
    before = snapshot(store)
    result = atlas("facts", "load", "pararel", "--relations", "P36,P999", "--db", store.url)
    assert result.exit_code == 1 and "Error: pararel has no relation P999" in result.output
    assert snapshot(store) == before


@pytest.mark.parametrize(
    "url, message",
    [
        ("postgresql+psycopg://nobody@127.0.0.1:1/none", "cannot connect"),
        ("mysql://localhost/atlas", "unsupported database URL 'mysql://localhost/atlas'"),
        ("duckdb:////nonexistent-folder/atlas.duckdb", "folder '/nonexistent-folder' does not exist"),
    ],
)
def test_bad_database_url_is_one_line_error(url: str, message: str) -> None:
    result = atlas("facts", "load", "kn-paper", "--relations", "P36", "--db", url)
    assert result.exit_code == 1
    assert (
        result.output.startswith("Error: ")
        and message in result.output
        and len(result.output.strip().splitlines()) == 1
    )
