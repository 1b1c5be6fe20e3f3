"""Every command documents itself (help with an Example block) and the README covers the CLI and its formats."""

from __future__ import annotations

import re
from pathlib import Path

import click
from click.testing import CliRunner

from atlas.cli import COMMANDS, cli
from atlas.db.datasets import read_jsonl
from tests.support.cli import walk

README = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")


def test_every_command_has_help_with_an_example() -> None:
    missing = []
    for path, _cmd in [((), cli), *walk(cli)]:
        result = CliRunner().invoke(cli, [*path, "--help"])
        if result.exit_code != 0 or "Example:" not in result.output:
            missing.append(" ".join(path) or "atlas")
    assert not missing, f"commands without an Example: block in --help: {missing}"


def test_readme_lists_every_top_level_command() -> None:
    absent = [name for name in COMMANDS if f"`atlas {name}`" not in README]
    assert not absent, f"README's CLI overview misses: {absent}"


def test_readme_starts_with_the_two_setup_commands() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    assert README.startswith("# ")
    assert blocks[0].strip().endswith("atlas demo") and "pip install torch==2.13.0" in blocks[0]
    assert blocks[1].strip() == "python3 -m pytest -q"


def test_readme_jsonl_example_loads(tmp_path: Path) -> None:
    lines = [
        line for block in re.findall(r"```json\n(.*?)```", README, re.S) for line in block.splitlines() if line.strip()
    ]
    path = tmp_path / "readme.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = read_jsonl(path)
    assert {f.id for f in data.facts} == {"capital-fr", "fav-ada"}
    assert {r.id for r in data.relations} == {"P36", "X1"}


def test_the_lazy_command_table_says_what_each_command_does() -> None:
    """`atlas --help` lists commands from a table, without importing them: the table's one-line help
    must be each command's own (the first line of its docstring)."""
    for name, (_, _, short) in COMMANDS.items():
        cmd = cli.get_command(click.Context(cli), name)
        assert cmd is not None and cmd.help.splitlines()[0].strip() == short, name
