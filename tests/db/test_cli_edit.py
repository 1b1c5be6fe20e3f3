"""The probe, edit and audit commands end to end through click, on both backends."""

from __future__ import annotations

import re

import click
import pytest
from click.testing import CliRunner
from transformers import AutoModelForCausalLM

from atlas.cli import cli
from atlas.model.loading import weights_sha256
from tests.support.db import snapshot
from tests.support.kn_world import build_world


@pytest.fixture
def world(store, tmp_path):
    return build_world(store, tmp_path)


def _run(store, *args: str, ok: bool = True):
    res = CliRunner().invoke(cli, [*args, "--db", store.url], catch_exceptions=False)
    assert (res.exit_code == 0) == ok, res.output
    if ok:
        return res.stdout
    # errors: exactly one line, the last; stderr may also hold the model loader's progress bars
    lines = res.output.strip().splitlines()
    assert "Traceback" not in res.output and sum("Error:" in line for line in lines) == 1, res.output
    assert lines[-1].startswith("Error: "), res.output
    return lines[-1]


def test_update_list_export_rollback(store, world, tmp_path) -> None:
    model = ["--model", str(world.model_dir)]
    out = _run(
        store, "edit", "update", "P36-1", "--new-object", "Berlin", "--run", world.run, "--other-facts", "2", *model
    )
    edit_id = int(re.search(r"edit (\d+): update P36-1", out).group(1))
    assert re.search(r"success \d+%, others ppl [+-]", out), out
    shown = _run(store, "edit", "show", str(edit_id))
    assert "form=ls" in shown and "measured on top of applied edits: none" in shown and "others, pooled" in shown
    listed = _run(store, "edit", "list")
    assert re.search(rf"^\s*{edit_id}\s+update\s+P36-1\s+applied", listed, re.M)
    exported = tmp_path / "exported"
    _run(store, "edit", "export", str(edit_id), str(exported), *model)
    sha_after = re.search(r"sha256 \w+ -> (\w+)", out).group(1)
    assert weights_sha256(AutoModelForCausalLM.from_pretrained(exported)).startswith(sha_after)
    _run(store, "edit", "rollback", str(edit_id), *model)
    before = snapshot(store)
    err = _run(store, "edit", "rollback", str(edit_id), *model, ok=False)
    assert err.startswith(f"Error: edit {edit_id} was already rolled back")
    assert snapshot(store) == before


def test_bad_input_gives_one_line_errors(store, world) -> None:
    model = ["--model", str(world.model_dir)]
    before = snapshot(store)
    cases = [
        (["edit", "update", "nope", "--new-object", "Rome", "--run", world.run], "unknown fact 'nope'"),
        (
            ["edit", "update", "P36-0", "--new-object", "Atlantis", "--run", world.run],
            "unknown object token 'Atlantis'",
        ),
        (["edit", "erase-relation", "P1", "--run", world.run], "unknown relation 'P1'"),
        (
            ["edit", "erase-relation", "P36", "--run", world.run, "--select", "frequent", "--form", "token:Atlantis"],
            "Atlantis",
        ),
        (
            ["edit", "erase-relation", "P36", "--run", world.run, "--form", "project", "--min-facts", "6"],
            "most specific candidate is L0.40",
        ),
        (["edit", "erase-relation", "P36", "--run", world.run, "--form", "blur"], "unknown --form 'blur'"),
        (["probe", "suppress", "--run", "nope"], "unknown run 'nope'"),
        (["audit", "77"], "unknown edit 77"),
        (["edit", "erase-relation", "P36", "--run", world.run, "--device", "cuda:99"], "--device cuda:99: "),
        (["probe", "suppress", "--run", world.run, "--device", "gpu"], "'gpu': give cpu, cuda or cuda:N"),
        (["audit", "--sample", "1", "--run", world.run, "--device", "cuda:99"], "use --device cpu"),
    ]
    for args, message in cases:
        out = _run(store, *args, *model, ok=False)
        assert message in out, out
    assert "unknown edit 404" in _run(store, "edit", "show", "404", ok=False)
    assert snapshot(store) == before


def test_probe_and_audit_commands(store, world) -> None:
    model = ["--model", str(world.model_dir)]
    out = _run(store, "probe", "amplify", "--run", world.run, "--relation", "P30", *model)
    for name in ("knowledge", "other_fact", "random"):
        assert re.search(rf"P30\s.*{name}\s.*5\s", out), out
    assert "ALL" in out
    out = _run(store, "audit", "--sample", "2", "--run", world.run, "--limit", "10", *model)
    assert len(re.findall(r"^edit \d+: targets 1", out, re.M)) == 2
    assert "overall: 2 edits" in out and "Spearman rho" in out and "impact@0.1" in out
    listed = _run(store, "edit", "list")
    assert len(re.findall(r"\btrial\b", listed)) == 2


@pytest.mark.parametrize("group", ["probe", "edit"])
def test_every_command_documents_an_example(group: str) -> None:
    ctx = click.Context(cli)
    cmd = cli.get_command(ctx, group)
    for name in cmd.list_commands(ctx):
        assert "Example:" in (cmd.get_command(ctx, name).help or ""), name
    assert "Example:" in cli.get_command(ctx, "audit").help


def test_report_covers_every_section(store, world, tmp_path) -> None:
    model = ["--model", str(world.model_dir)]
    empty = _run(store, "report", "--run", world.run, "--output", str(tmp_path / "r0"))
    assert "neurons_per_fact" in empty
    text = (tmp_path / "r0" / "report.md").read_text()
    assert "No probe results yet" in text and "No audits yet" in text
    _run(store, "probe", "suppress", "--run", world.run, *model)
    _run(
        store,
        "edit",
        "erase-relation",
        "P30",
        "--select",
        "frequent",
        "--top",
        "2",
        "--form",
        "zero",
        "--run",
        world.run,
        "--eval-facts",
        "3",
        "--other-facts",
        "2",
        *model,
    )
    _run(store, "audit", "--sample", "1", "--run", world.run, *model)
    out = _run(store, "report", "--run", world.run, "--output", str(tmp_path / "r1"))
    text = (tmp_path / "r1" / "report.md").read_text()
    # 15 facts, each with 3 or 4 planted neurons: 2 facts per relation hold the cross neuron
    assert "mean 3.40 per fact" in text and re.search(r"neurons_per_fact\s+3.4\b", out)
    for section in ("Suppressing", "Updating facts", "Erasing relations", "Interference audit", "Against the paper"):
        assert f"## {section}" in text
    assert re.search(r"\| \d+ \| P30 \| frequent, zero \| 2 / 2 \|", text), text
    assert re.search(r"\| ls, covariance \| 1 \|", text), text  # the sample's update: the default form
    for png in ("neurons.png", "probe.png", "audit.png"):
        assert (tmp_path / "r1" / png).stat().st_size > 1000
