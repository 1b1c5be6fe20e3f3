"""A table of bad inputs through the real command line, on both backends: each one gets ONE line
naming the file:line or the value, a non-zero exit, no traceback, and the database unchanged.

Extend the table whenever a new way in appears (a command, an option, a file format).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from atlas.cli import cli
from atlas.db.store import Store
from tests.support.db import snapshot
from tests.support.index_world import DATASET, load_world

GOOD = {"id": "new-1", "relation": "P36", "subject": "France", "object": "Paris"}
TEMPLATE = "The capital of [X] is [Y]."


def fact(**changes: object) -> str:
    doc = {**GOOD, "templates": [TEMPLATE], **changes}
    return json.dumps({k: v for k, v in doc.items() if v is not None})


@dataclass(frozen=True)
class Case:
    name: str
    args: Callable[[Path, str], list[str]]  # (tmp folder, db url) -> command line
    expect: str  # a piece of the one line
    file: str | bytes | None = None  # the content of FILE.jsonl, where the case loads one


def load(*extra: str) -> Callable[[Path, str], list[str]]:
    return lambda tmp, db: ["facts", "load", str(tmp / "f.jsonl"), "--db", db, *extra]


def cmd(*args: str) -> Callable[[Path, str], list[str]]:
    """A command; ``{tmp}`` in an argument is the test's folder."""
    return lambda tmp, db: [a.replace("{tmp}", str(tmp)) for a in args] + ["--db", db]


def no_db(*args: str) -> Callable[[Path, str], list[str]]:
    return lambda tmp, db: [a.replace("{tmp}", str(tmp)) for a in args]


CASES = [
    # --- fact files ---------------------------------------------------------------------------
    Case(
        "non-utf8",
        load(),
        "f.jsonl:2: not UTF-8: byte 0xe9",
        b"\n" + fact(subject="x").encode()[:-2] + b'\xe9"}',
    ),
    Case(
        "lone-surrogate",
        load(),
        "f.jsonl:1: field 'subject' contains a lone surrogate",
        fact().replace("France", "Fr\\ud800"),
    ),
    Case("deep-nesting", load(), "f.jsonl:1: JSON nested too deeply", "[" * 100_000 + "]" * 100_000),
    Case(
        "deep-nesting-in-field",
        load(),
        "f.jsonl:1: JSON nested too deeply",
        fact(extra=json.loads("[" * 40 + "]" * 40)),
    ),
    Case("nul-subject", load(), "f.jsonl:1: field 'subject' contains a NUL character", fact(subject="Fr\x00ance")),
    Case(
        "nul-template",
        load(),
        "f.jsonl:1: field 'template' contains a NUL character",
        fact(templates=["[X] \x00 [Y]."]),
    ),
    Case("nul-id", load(), "f.jsonl:1: field 'id' contains a NUL", fact(id="a\x00b")),
    Case("long-id", load(), "f.jsonl:1: field 'id' is 3,000 characters long; the limit is 200", fact(id="i" * 3000)),
    Case(
        "long-template",
        load(),
        "field 'template' is 3,009 characters long; the limit is 400",
        fact(templates=["[X] " + "w" * 3000 + " [Y]."]),
    ),
    Case(
        "long-prompt",
        load(),
        "field 'prompt' is 3,005 characters long",
        fact(templates=None, prompts=["w" * 3000 + " [Y]."]),
    ),
    Case("long-subject", load(), "field 'subject' is 201 characters long; the limit is 200", fact(subject="s" * 201)),
    Case("long-relation", load(), "field 'relation' is 300 characters long", fact(relation="R" * 300)),
    Case(
        "slot-y-in-subject",
        load(),
        "f.jsonl:1: subject 'The [Y] Republic' contains [Y]",
        fact(subject="The [Y] Republic"),
    ),
    Case("slot-x-in-object", load(), "f.jsonl:1: object 'a [X]' contains [X]", fact(object="a [X]")),
    Case("malformed-json", load(), "f.jsonl:1: malformed JSON", '{"id": "a",'),
    Case("not-an-object", load(), "f.jsonl:1: expected a JSON object, got list", "[1, 2]"),
    Case("missing-subject", load(), "f.jsonl:1: missing field 'subject'", fact(subject=None)),
    Case("empty-object", load(), "f.jsonl:1: field 'object' must be a non-empty string", fact(object="")),
    Case("number-subject", load(), "f.jsonl:1: field 'subject' must be a non-empty string, got 7", fact(subject=7)),
    Case(
        "template-without-x",
        load(),
        "f.jsonl:1: template 'no subject [Y].' must contain [X]",
        fact(templates=["no subject [Y]."]),
    ),
    Case("template-two-y", load(), "must contain [Y] exactly once", fact(templates=["[X] [Y] [Y]."])),
    Case(
        "templates-not-list",
        load(),
        "f.jsonl:1: field 'templates' must be a non-empty list",
        fact(templates="[X] is [Y]."),
    ),
    Case("templates-and-prompts", load(), "needs exactly one of 'templates' or 'prompts'", fact(prompts=["a [Y]."])),
    Case(
        "prompt-with-x",
        load(),
        "must contain [Y] exactly once and no [X]",
        fact(templates=None, prompts=["[X] is [Y]."]),
    ),
    Case(
        "undeclared-relation",
        load(),
        "f.jsonl:1: relation X9 is neither declared in the file nor bundled",
        fact(relation="X9"),
    ),
    Case(
        "bad-relation-type",
        load(),
        "f.jsonl:1: relation type '2-2' is not one of",
        '{"relation": "X1", "label": "l", "type": "2-2"}',
    ),
    Case(
        "relation-redeclared-in-file",
        load(),
        "f.jsonl:2: relation X1 declared again as 'b' (1-1); ",
        '{"relation": "X1", "label": "a", "type": "1-1"}\n{"relation": "X1", "label": "b", "type": "1-1"}',
    ),
    Case(
        "relation-redeclared-against-db",
        load(),
        "f.jsonl:1: relation P36 is 'capital city' (1-1) here but 'capital' (1-1) in the database",
        '{"relation": "P36", "label": "capital city", "type": "1-1"}\n' + fact(),
    ),
    Case(
        "same-id-other-content",
        load(),
        "f.jsonl:2: fact new-1 differs from its earlier line",
        fact() + "\n" + fact(object="Lyon"),
    ),
    Case(
        "id-conflicts-with-db",
        load(),
        "fact P36-france is P36('France', 'Lyon') but the database has",
        fact(id="P36-france", object="Lyon"),
    ),
    Case(
        "long-dataset-name",
        load("--dataset", "d" * 300),
        "dataset name: field 'dataset' is 300 characters long",
        fact(),
    ),
    Case("limit-zero", load("--limit-per-relation", "0"), "--limit-per-relation", fact()),
    Case("missing-file", cmd("facts", "load", "{tmp}/nope.jsonl"), "nope.jsonl: not a bundled dataset"),
    Case("folder-as-file", cmd("facts", "load", "{tmp}"), "not a bundled dataset"),
    # --- output paths, checked before any work ------------------------------------------------
    Case("sql-output-missing-folder", cmd("sql", "SELECT 1", "-o", "{tmp}/no/x.csv", "--format", "csv"), "folder"),
    Case(
        "sql-output-unwritable",
        cmd("sql", "SELECT 1", "-o", "/proc/version", "--format", "csv"),
        "cannot write /proc/version",
    ),
    Case(
        "query-output-missing-folder",
        cmd("query", "layer-distribution", "-p", "run_id=1", "-o", "{tmp}/no/x.csv"),
        "does not exist",
    ),
    Case(
        "query-output-unwritable",
        cmd("query", "layer-distribution", "-p", "run_id=1", "-o", "/proc/version"),
        "cannot write",
    ),
    Case("plot-output-missing-folder", cmd("plot", "layers", "--run", "1", "-o", "{tmp}/no/x.png"), "does not exist"),
    Case(
        "plot-output-unwritable",
        cmd("plot", "layers", "--run", "1", "-o", "/proc/version"),
        "cannot write /proc/version",
    ),
    Case(
        "report-output-missing-folder", cmd("report", "--run", "1", "--output", "{tmp}/no/deeper/r"), "does not exist"
    ),
    Case(
        "report-output-unwritable", cmd("report", "--run", "1", "--output", "/proc/version"), "is a file, not a folder"
    ),
    Case("export-unwritable", cmd("edit", "export", "1", "/proc/atlas-model"), "is not writable"),
    Case("output-is-folder", cmd("sql", "SELECT 1", "-o", "{tmp}", "--format", "csv"), "is a directory"),
    # --- options and values -------------------------------------------------------------------
    Case(
        "device-cuda-without-gpu",
        cmd("index", "--model", "{tmp}/m", "--dataset", DATASET, "--device", "cuda"),
        "--device cuda: no CUDA GPU",
    ),
    Case(
        "device-foo",
        cmd("index", "--model", "{tmp}/m", "--dataset", DATASET, "--device", "foo"),
        "'foo': give cpu, cuda or cuda:N",
    ),
    Case(
        "workers-zero",
        cmd("index", "--model", "{tmp}/m", "--dataset", DATASET, "--workers", "0"),
        "give a number >= 1 or auto",
    ),
    Case("upgrade-bad-revision", cmd("db", "upgrade", "--revision", "zzzz"), "revision 'zzzz': Can't locate revision"),
    Case("downgrade-bad-revision", cmd("db", "downgrade", "zzzz"), "revision 'zzzz'"),
    Case(
        "duckdb-relative-url",
        no_db("db", "info", "--db", "duckdb://relative/x.duckdb"),
        "bad DuckDB URL 'duckdb://relative/x.duckdb'",
    ),
    Case("unsupported-url", no_db("db", "info", "--db", "mysql://x/y"), "unsupported database URL"),
    Case("memory-upgrade", no_db("db", "upgrade", "--db", "duckdb:///:memory:"), "in-memory DuckDB database"),
    Case("missing-duckdb-file", no_db("db", "info", "--db", "duckdb:///{tmp}/none.duckdb"), "the file does not exist"),
    Case("unknown-query", cmd("query", "no-such-query"), "no-such-query"),
    Case(
        "query-bad-param",
        cmd("query", "fact-neurons", "-p", "run_id=abc", "-p", "fact_id=x"),
        "run_id='abc' is not int",
    ),
    Case("sql-write", cmd("sql", "DELETE FROM facts"), "refused: DELETE"),
    Case("sql-two-statements", cmd("sql", "SELECT 1; DROP TABLE facts"), "refused: 2 statements"),
    Case("sql-server-file", cmd("sql", "SELECT pg_read_file('/etc/passwd')"), "refused: function pg_read_file()"),
    Case("sql-parquet-to-terminal", cmd("sql", "SELECT 1", "--format", "parquet"), "--format parquet needs --output"),
    Case("sql-bad-timeout", cmd("sql", "SELECT 1", "--timeout", "-1"), "--timeout"),
    Case("unknown-option", no_db("--bogus"), "No such option '--bogus'"),
    Case("unknown-command", no_db("bogus"), "No such command 'bogus'"),
    Case("missing-argument", cmd("facts", "load"), "Missing argument"),
    Case("lease-below-minimum", cmd("index", "--model", "{tmp}/m", "--dataset", DATASET, "--lease", "1"), "--lease"),
    Case("unknown-fact", cmd("facts", "show", "no-such-fact"), "no-such-fact"),
    Case("unknown-run", cmd("runs", "show", "no-such-run"), "no-such-run"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case: Case, store: Store, tmp_path: Path) -> None:
    load_world(store)
    if case.file is not None:
        data = case.file if isinstance(case.file, bytes) else case.file.encode("utf-8", "surrogatepass")
        (tmp_path / "f.jsonl").write_bytes(data)
    before = snapshot(store)
    result = CliRunner().invoke(cli, case.args(tmp_path, store.url), catch_exceptions=False)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output and len(lines) == 1, result.output
    assert case.expect in lines[0], lines[0]
    assert snapshot(store) == before


def test_the_table_is_long_enough() -> None:
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)
