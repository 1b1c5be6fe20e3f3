"""The ``atlas`` command: a thin layer over the library.

Each command group lives in its own module (``atlas/cli/<group>.py``) and only parses options,
calls one library function and prints. Commands are registered lazily: ``atlas --help`` lists
them from the table below without importing any of them, and a command's module is imported only
when it runs, so no command pays for torch, transformers or matplotlib unless it uses them.
Every error a user can fix is an ``atlas.errors.AtlasError``; the group turns it into one line on
stderr and exit status 1, whatever the command.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from atlas.errors import AtlasError

# name -> (module, attribute, one-line help), in the order `atlas --help` lists them.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "db": ("atlas.cli.db", "db", "Create, upgrade and inspect the database schema."),
    "facts": (
        "atlas.cli.facts",
        "facts",
        "Load fact datasets (bundled PARAREL / kn-paper, or your JSONL) and inspect them.",
    ),
    "demo": (
        "atlas.cli.demo",
        "demo",
        "Build a small atlas: create/upgrade the database, load a few bundled facts, show them.",
    ),
    "index": (
        "atlas.cli.index",
        "index",
        "Index a dataset: integrated-gradients scores per prompt, knowledge neurons per fact.",
    ),
    "models": ("atlas.cli.models", "models", "Register models (by weight hash) and list them."),
    "runs": ("atlas.cli.runs", "runs", "List indexing runs and show one in detail."),
    "probe": (
        "atlas.cli.probe",
        "probe",
        "Intervene on knowledge neurons' activations (the paper's suppress / amplify experiments).",
    ),
    "edit": (
        "atlas.cli.edit",
        "edit",
        "Change the model through its knowledge neurons; every edit is recorded and reversible.",
    ),
    "inject": (
        "atlas.cli.inject",
        "inject",
        "Add facts to a model as new FFN key-value slots (Kformer-style, no training); audited, reversible.",
    ),
    "audit": (
        "atlas.cli.audit",
        "audit",
        "Predict which facts EDIT_ID disturbs from the atlas alone, measure, score the prediction.",
    ),
    "report": (
        "atlas.cli.report",
        "report",
        "Write DIR/report.md: neurons per fact, sharing, suppress/amplify vs controls, edits, audits.",
    ),
    "query": ("atlas.cli.query", "query", "Run a named query (queries/NAME.sql) with bound parameters."),
    "sql": (
        "atlas.cli.query",
        "sql",
        "Run one ad-hoc read-only SELECT on the atlas's tables, sandboxed; anything else is refused.",
    ),
    "plot": ("atlas.cli.plot", "plot", "Draw an atlas: layers, relation overlap, one fact across its prompts."),
    "serve": (
        "atlas.cli.serve",
        "serve",
        "Browse the atlas in a web browser: pages, search, SQL and a JSON API, read-only.",
    ),
    "vocab": (
        "atlas.cli.serve",
        "vocab",
        "Store the top vocabulary tokens of every knowledge neuron of RUN.",
    ),
}


class AtlasGroup(click.Group):
    """A group whose commands are imported on first use and whose user errors are one line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, _, short) in COMMANDS.items()])

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any):
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:  # the group's own options (`atlas --bogus`)
            raise OneLineUsageError(exc) from exc

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AtlasError as exc:
            raise click.ClickException(str(exc)) from exc
        except click.UsageError as exc:  # one line too, naming the command's --help
            raise OneLineUsageError(exc) from exc


class OneLineUsageError(click.ClickException):
    """A usage error (bad option value, missing argument) as one line, exit status 2 as click's."""

    exit_code = 2

    def __init__(self, exc: click.UsageError) -> None:
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        super().__init__(" ".join(exc.format_message().split()) + where)


@click.group(cls=AtlasGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="kn-atlas")
def cli() -> None:
    """kn-atlas: which feed-forward neurons of a transformer store which facts.

    Index fact datasets with exact integrated-gradients attribution, keep the fact-to-neuron map
    in DuckDB (default: ./atlas.duckdb) or PostgreSQL, query it in SQL, and edit the model through
    the neurons it found.

    The database comes from --db URL or $ATLAS_DB (duckdb:///FILE or postgresql+psycopg://...).

    \b
    Example:
        atlas db upgrade
        atlas facts load kn-paper --relations P36 --limit-per-relation 5
        atlas index --model smollm2 --dataset kn-paper --relations P36
        atlas query fact-neurons --param run_id=1 --param fact_id=...
    """


def main() -> None:
    cli(prog_name="atlas")
