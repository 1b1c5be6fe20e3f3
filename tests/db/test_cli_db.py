"""``atlas db`` through click on both backends."""

from __future__ import annotations

from pathlib import Path

from atlas.db import migrate
from atlas.db.datasets import read_kn_paper
from tests.support.cli import atlas


def test_upgrade_info_downgrade(blank_url: str, backend: str) -> None:
    head = migrate.head_revision()
    up = atlas("db", "upgrade", "--db", blank_url)
    assert (up.exit_code, up.output) == (0, f"{backend}: schema none -> {head}\n")
    assert atlas("db", "upgrade", "--db", blank_url).output == f"{backend}: schema already at {head}\n"
    atlas("facts", "load", "kn-paper", "--relations", "P36", "--limit-per-relation", "3", "--db", blank_url)
    info = atlas("db", "info", "--db", blank_url).output.splitlines()
    assert f"backend:  {backend}" in info and f"schema:   {head} (code head {head})" in info
    counts = {line.split()[0]: line.split()[1] for line in info if len(line.split()) == 2}
    n_prompts = read_kn_paper(["P36"], 3).n_prompts
    assert (counts["facts"], counts["prompts"], counts["relations"], counts["knowledge_neurons"]) == (
        "3",
        str(n_prompts),
        "1",
        "0",
    )
    down = atlas("db", "downgrade", "base", "--db", blank_url)
    assert (down.exit_code, down.output) == (0, f"{backend}: schema now none\n")


def test_upgrade_unreachable_server_is_one_line() -> None:
    result = atlas("db", "upgrade", "--db", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert (
        result.exit_code == 1 and result.output.startswith("Error: cannot connect") and result.output.count("\n") == 1
    )


def test_reading_a_missing_duckdb_file_does_not_create_it(tmp_path: Path) -> None:
    path = tmp_path / "typo.duckdb"
    result = atlas("facts", "list", "--db", str(path))
    assert (
        result.exit_code == 1
        and "the file does not exist, so it has no atlas schema: run `atlas db upgrade`" in result.output
    )
    assert not path.exists()
