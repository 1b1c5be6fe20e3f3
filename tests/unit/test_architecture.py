"""The folders are the layers: each folder's import rule (ARCHITECTURE.md) and the size limits, checked.

Imports are read from the source (every `import` and `from ... import`, inside functions too), so a
rule cannot be dodged by importing late. The CLI rule is about start-up instead: importing any
command module must not load torch, transformers or matplotlib (checked in a fresh interpreter).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "matplotlib")
DATABASE = ("sqlalchemy", "duckdb", "psycopg", "alembic", "atlas.db")

# folder -> import prefixes its modules must not use (the rule of each layer, as ARCHITECTURE.md states it)
RULES: dict[str, tuple[str, ...]] = {
    "atlas/errors.py": ("atlas", "indexer", "torch", "sqlalchemy"),
    "atlas/options.py": ("atlas", "indexer", "torch", "sqlalchemy"),
    "atlas/db": ("torch", "transformers", "matplotlib", "atlas.model", "atlas.jobs", "atlas.cli", "indexer"),
    "atlas/model": (*DATABASE, "atlas.jobs", "atlas.cli", "indexer", "matplotlib"),
    "indexer/attribution": (*DATABASE, "atlas.jobs", "atlas.cli", "indexer.job", "transformers", "matplotlib"),
    "indexer/job": ("atlas.jobs", "atlas.cli", "matplotlib", "sqlalchemy", "duckdb", "psycopg"),
    "atlas/jobs": ("atlas.cli", "sqlalchemy", "duckdb", "psycopg"),
    "atlas/cli": ("sqlalchemy", "duckdb", "psycopg"),
    "atlas/web": ("sqlalchemy", "duckdb", "psycopg", "torch", "transformers", "matplotlib", "atlas.model", "atlas.cli"),
}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules(folder: str) -> list[Path]:
    path = ROOT / folder
    return [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("folder", sorted(RULES))
def test_each_folder_keeps_its_import_rule(folder: str) -> None:
    broken = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in _modules(folder)
        for line, name in _imports(path)
        if any(_matches(name, p) for p in RULES[folder])
    ]
    assert not broken, "\n".join(broken)


def test_every_source_folder_has_a_rule() -> None:
    """A new folder must state its rule (here and in ARCHITECTURE.md) before it holds code."""
    folders = {str(p.parent.relative_to(ROOT)) for top in ("atlas", "indexer") for p in (ROOT / top).rglob("*.py")}
    ruled = {f for f in RULES if not f.endswith(".py")}
    loose = {str(p.relative_to(ROOT)) for p in (ROOT / "atlas").glob("*.py") if p.name != "__init__.py"}
    # subfolders of atlas/model keep atlas/model's rule (rglob above reads them)
    assert folders - ruled <= {"atlas", "indexer", "atlas/model/adapters", "atlas/model/inject"}, folders - ruled
    assert loose <= {"atlas/errors.py", "atlas/options.py"}, loose
    architecture = (ROOT / "ARCHITECTURE.md").read_text()
    assert all(f"`{folder}`" in architecture for folder in RULES), "ARCHITECTURE.md must state every folder's rule"


def test_cli_modules_start_without_heavy_libraries() -> None:
    """`atlas --help`, `atlas query`, `atlas sql`, `atlas facts`: no torch, transformers or matplotlib
    until a command that needs them runs."""
    code = (
        "import sys, pkgutil, importlib, atlas.cli as c\n"
        "[importlib.import_module(f'atlas.cli.{m.name}') for m in pkgutil.iter_modules(c.__path__)]\n"
        f"print(','.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "", f"importing the CLI loaded {loaded}"


def test_atlas_help_imports_no_heavy_library() -> None:
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "from atlas.cli import main; main()", "--help"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "Commands:" in out.stdout
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert not [m for m in imported if m.split(".")[0] in HEAVY + ("sqlalchemy", "duckdb")], sorted(imported)


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


@pytest.mark.parametrize("top", ["atlas", "indexer"])
def test_modules_and_functions_stay_small(top: str) -> None:
    too_big = []
    for path in sorted((ROOT / top).rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_big.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
        for fn in _functions(ast.parse(text)):
            length = fn.end_lineno - fn.lineno + 1
            if length > MAX_FUNCTION_LINES:
                too_big.append(f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name}: {length} lines")
    assert not too_big, "\n".join(too_big)
