"""The ``atlas`` command: a thin layer over the ``atlas`` library.

Each command group lives in its own module (``atlas/cli/<group>.py``) and only parses options,
calls one library function and prints. Errors the user can fix become one-line messages with a
non-zero exit code (``click.ClickException``), never tracebacks.
"""

from __future__ import annotations

import importlib

import click

# (module, attribute) of every top-level command, in the order `atlas --help` lists them.
COMMANDS: list[tuple[str, str]] = [
    ("atlas.cli.db", "db"),
    ("atlas.cli.facts", "facts"),
    ("atlas.cli.demo", "demo"),
    ("atlas.cli.index", "index"),
    ("atlas.cli.models", "models"),
    ("atlas.cli.runs", "runs"),
    ("atlas.cli.probe", "probe"),
    ("atlas.cli.edit", "edit"),
    ("atlas.cli.audit", "audit"),
    ("atlas.cli.report", "report"),
    ("atlas.cli.query", "query"),
    ("atlas.cli.query", "sql"),
    ("atlas.cli.plot", "plot"),
]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
        atlas query fact-neurons --param fact_id=...
    """


for _module, _attr in COMMANDS:
    cli.add_command(getattr(importlib.import_module(_module), _attr))


def main() -> None:
    cli(prog_name="atlas")
