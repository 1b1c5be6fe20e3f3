"""`atlas index`, `atlas models`, `atlas runs` through click: output, exit codes, errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from atlas.cli import cli
from atlas.db.store import Store
from tests.support.db import snapshot
from tests.support.index_world import DATASET, load_world, tiny_dir

COMMANDS = [["index"], ["models"], ["models", "add"], ["models", "list"], ["runs"], ["runs", "list"], ["runs", "show"]]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_dir(tmp_path_factory.mktemp("models"))


def _atlas(*args: str) -> object:
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_has_an_example(command: list[str]) -> None:
    result = _atlas(*command, "--help")
    assert result.exit_code == 0
    if command in (["models"], ["runs"]):
        return
    assert "Example:" in result.output and f"atlas {' '.join(command)}" in result.output


def test_index_then_runs_and_models(store: Store, model_dir: Path) -> None:
    load_world(store)
    first = _atlas(
        "index",
        "--db",
        store.url,
        "--model",
        str(model_dir),
        "--dataset",
        DATASET,
        "--run",
        "cli",
        "--facts-per-item",
        "3",
    )
    assert first.exit_code == 0, first.output
    assert re.search(r"run cli \(id \d+, created\): done", first.output)
    assert "facts 9  prompts 36 (ok 28, skipped 8)" in first.output
    assert "skipped 4: answer has a token unknown to the tokenizer" in first.output
    assert "prompts/s" in first.output and "database" in first.output
    assert re.search(r"\d+ prompts per pass, 1 worker\(s\), started in \d+\.\d s", first.output), first.output

    again = _atlas("index", "--db", store.url, "--model", str(model_dir), "--dataset", DATASET, "--run", "cli")
    assert again.exit_code == 0 and re.search(r"run cli \(id \d+, already complete\): done", again.output)

    listed = _atlas("runs", "list", "--db", store.url)
    assert listed.exit_code == 0 and "cli" in listed.output and "done" in listed.output and "items 4/4" in listed.output
    shown = _atlas("runs", "show", "cli", "--db", store.url)
    assert shown.exit_code == 0, shown.output
    for text in (
        "status      done",
        '"steps": 20',
        "work items  4/4 done; relations finalised 2/2",
        "prompts     36 (ok 28, skipped 8)",
        "throughput",
    ):
        assert text in shown.output

    models = _atlas("models", "list", "--db", store.url)
    assert "tiny-llama" in models.output and "LlamaForCausalLM" in models.output and "3 x 48" in models.output
    added = _atlas("models", "add", str(model_dir), "--db", store.url)
    assert added.exit_code == 0 and re.search(r"already known: tiny-llama \(id \d+\)", added.output)


def test_models_add_registers_once(store: Store, model_dir: Path) -> None:
    first = _atlas("models", "add", str(model_dir), "--db", store.url)
    assert first.exit_code == 0 and re.search(
        r"added: tiny-llama \(id \d+\) LlamaForCausalLM 3 layers x 48 neurons", first.output
    )
    assert "already known" in _atlas("models", "add", str(model_dir), "--db", store.url).output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "nope"], "Error: unknown dataset 'nope'"),
        (
            ["--dataset", DATASET, "--relations", "P999"],
            "Error: relation(s) P999 have no facts in dataset 'tiny-world'",
        ),
        (["--dataset", DATASET, "--workers", "0"], "Invalid value for '--workers': '0': give a number >= 1 or auto"),
        (["--dataset", DATASET, "--precision", "fp8"], "Invalid value for '--precision'"),
        (["--dataset", DATASET, "--sketch-rank", "-1"], "'--sketch-rank': -1 is not in the range x>=0"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    store: Store, model_dir: Path, args: list[str], message: str
) -> None:
    load_world(store)
    before = snapshot(store)
    result = _atlas("index", "--db", store.url, "--model", str(model_dir), *args)
    assert result.exit_code != 0 and message in result.output
    assert "Traceback" not in result.output
    assert snapshot(store) == before


def test_unknown_model_and_run(store: Store, tmp_path: Path) -> None:
    load_world(store)
    result = _atlas("index", "--db", store.url, "--model", str(tmp_path / "missing"), "--dataset", DATASET)
    assert result.exit_code == 1 and "cannot load model" in result.output and "no such directory" in result.output
    shown = _atlas("runs", "show", "nope", "--db", store.url)
    assert shown.exit_code == 1 and "unknown run 'nope' (see `atlas runs list`)" in shown.output
