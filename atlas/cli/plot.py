"""``atlas plot``: pictures of an atlas (PNG), drawn from the named queries."""

from __future__ import annotations

from pathlib import Path

import click

from atlas.cli.common import db_option, open_store
from atlas.cli.output import writable_file

run_option = click.option("--run", required=True, metavar="RUN", help="Run id or name.")
output_option = click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    callback=writable_file,
    help="PNG file to write.",
)


@click.group()
def plot() -> None:
    """Draw an atlas: layers, relation overlap, one fact across its prompts."""


@plot.command()
@run_option
@output_option
@db_option
def layers(run: str, output: Path, db_url: str | None) -> None:
    """Knowledge neurons per layer per relation (relation x layer heatmap).

    \b
    Example:
        atlas plot layers --run 1 --output layers.png
    """
    from atlas.jobs import plots

    click.echo(plots.plot_layers(open_store(db_url), run, output))


@plot.command()
@run_option
@output_option
@click.option(
    "--min-facts", default=2, show_default=True, help="A relation's neuron must serve this many of its facts..."
)
@click.option(
    "--min-share",
    default=0.1,
    show_default=True,
    help="...and this share of them (0.1: the paper's relation-level neurons).",
)
@db_option
def overlap(run: str, output: Path, min_facts: int, min_share: float, db_url: str | None) -> None:
    """Relation x relation heatmap of shared relation-level neurons.

    \b
    Example:
        atlas plot overlap --run 1 --output overlap.png
    """
    from atlas.jobs import plots

    click.echo(plots.plot_overlap(open_store(db_url), run, output, min_facts=min_facts, min_share=min_share))


@plot.command()
@click.argument("fact_id")
@run_option
@output_option
@click.option("--top", default=20, show_default=True, help="Neurons to show (knowledge neurons first).")
@db_option
def fact(fact_id: str, run: str, output: Path, top: int, db_url: str | None) -> None:
    """One fact's neurons across its prompts (prompts x top neurons heatmap).

    \b
    Example:
        atlas plot fact 0a1b2c3d-... --run 1 --output fact.png
    """
    from atlas.jobs import plots

    click.echo(plots.plot_fact(open_store(db_url), run, fact_id, output, top=top))
