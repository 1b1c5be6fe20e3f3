"""`atlas inject` end to end through click on both backends: a JSONL file and --fact, show, list,
export, rollback, the report's section, and one-line errors that leave the database unchanged."""

from __future__ import annotations

import json
import re

import click
from transformers import AutoModelForCausalLM

from atlas.cli import cli
from atlas.model.loading import weights_sha256
from tests.db.test_cli_edit import _run
from tests.support.db import snapshot
from tests.support.kn_world import build_world

QUICK = [
    "--heldout", "1", "--audit-facts", "10", "--negatives", "60", "--audit-seen", "--gate-overlap", "open",
    "--key-position", "answer", "--no-fill-negatives",
]  # fmt: skip


def test_inject_show_list_report_export_rollback(store, tmp_path) -> None:
    w = build_world(store, tmp_path)
    model = ["--model", str(w.model_dir)]
    facts = tmp_path / "facts.jsonl"
    lines = [
        {
            "id": "cf-1",
            "relation": "P36",
            "subject": "France",
            "object": "Berlin",
            "templates": ["The capital of [X] is [Y]", "[X] has its capital in [Y]", "The capital city of [X] is [Y]"],
        },
    ]
    facts.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = _run(store, "inject", str(facts), "--run", w.run, *QUICK, *model)
    found = re.search(r"injection (\d+): 1 facts on run tiny-run \[applied\], layers \[\d\], FFN width 48 -> 50", out)
    assert found, out
    one = found.group(1)
    assert "efficacy 100.0%" in out
    out = _run(
        store,
        "inject",
        "--fact",
        "Japan|P36|Lima",
        "--template",
        "The capital of [X] is [Y]",
        "--template",
        "[X] has its capital in [Y]",
        "--run",
        w.run,
        "--layers",
        "1",
        *QUICK,
        *model,
    )
    two = re.search(r"injection (\d+): 1 facts", out).group(1)
    assert "layers [1], FFN width 50 -> 52" in out
    shown = _run(store, "inject", "show", one)
    assert "France -> Berlin (was Paris)" in shown and "generalisation (held-out prompts)" in shown
    assert re.search(r"specificity: mean \|dP/P\| [\d.]+% \(mean \|dP\| / mean P [\d.]+%\)", shown), shown
    # the other facts behind that figure, by name, most moved first
    assert re.search(r"moved most \(abs dP/P\): P\d+ \S.* -> \S.* [\d.e+-]+ \([\d.e-]+ -> [\d.e-]+\)", shown), shown
    assert "slots L" in shown and "+49 (relation)" in shown
    listed = _run(store, "inject", "list")
    assert listed.index(f"injection {two}:") < listed.index(f"injection {one}:")
    _run(store, "report", "--run", w.run, "--output", str(tmp_path / "rep"))
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "others mean abs dP / mean P" in text
    assert re.search(rf"- injection {one}: .*moved most \(abs dP/P\): P\d+ ", text), text
    assert "## Injecting facts" in text and re.search(rf"\| {two} \| applied \| 1 \| 1 \| 50 -> 52 \| 100.0% \|", text)
    exported = tmp_path / "exported"
    _run(store, "inject", "export", two, str(exported), *model)
    sha_after = re.search(r"sha256 \w+ -> (\w+)", out).group(1)
    assert weights_sha256(AutoModelForCausalLM.from_pretrained(exported)).startswith(sha_after)
    before = snapshot(store)
    err = _run(store, "inject", "rollback", one, *model, ok=False)
    assert f"cannot be rolled back before injection {two}" in err and snapshot(store) == before
    assert "[rolled_back]" in _run(store, "inject", "rollback", two, *model)
    assert "[rolled_back]" in _run(store, "inject", "rollback", one, *model)


def test_bad_input_gives_one_line_errors(store, tmp_path) -> None:
    w = build_world(store, tmp_path)
    model = ["--model", str(w.model_dir)]
    tpl = ["--template", "The capital of [X] is [Y]", "--run", w.run, *QUICK, *model]
    first = re.search(r"injection (\d+):", _run(store, "inject", "--fact", "France|P36|Berlin", *tpl)).group(1)
    before = snapshot(store)
    tpl = ["--template", "The capital of [X] is [Y]", "--run", w.run, *QUICK, *model]
    cases = [
        (["inject", "--fact", "Spain|P36|Atlantis", *tpl], "object 'Atlantis' cannot be used"),
        (["inject", "--fact", "France|P36|Rome", *tpl], f"contradicts injection {first}"),
        (["inject", "--fact", "Italy|P36|Rome", "--layers", "9", *tpl], "layer 9 is out of range"),
        (["inject", "--fact", "Italy|P36", *tpl], "write SUBJECT|RELATION|OBJECT"),
        (["inject", "--run", w.run, *model], "give either a FILE of facts or --fact"),
        (["inject", "--fact", "Italy|P36|Rome", *tpl[:2], "--run", "nope"], "unknown run 'nope'"),
        (["inject", "show", "404"], "unknown injection 404"),
        (["inject", "rollback", "404"], "unknown injection 404"),
    ]
    for args, message in cases:
        assert message in _run(store, *args, ok=False), args
    assert snapshot(store) == before


def test_every_inject_command_documents_an_example() -> None:
    ctx = click.Context(cli)
    cmd = cli.get_command(ctx, "inject")
    for name in cmd.list_commands(ctx):
        assert "Example:" in (cmd.get_command(ctx, name).help or ""), name
