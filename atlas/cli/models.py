"""``atlas models``: register models and list the ones an atlas knows."""

from __future__ import annotations

import click

from atlas.cli.common import db_option, open_store
from atlas.db.models import list_models, register_model


@click.group()
def models() -> None:
    """Register models (by weight hash) and list them."""


@models.command()
@db_option
@click.argument("spec", metavar="PATH|NAME")
def add(db_url: str | None, spec: str) -> None:
    """Load a model (smollm2, a local HF directory or a hub id) and record it in the models table.

    \b
    Example:
        atlas models add smollm2
        atlas models add ./checkpoints/my-llama
    """
    from indexer.job.attributor import load_for_index, model_info

    store = open_store(db_url)
    info = model_info(load_for_index(spec, "cpu"))
    row, created = register_model(store, info)
    click.echo(
        f"{'added' if created else 'already known'}: {row.name} (id {row.id}) {row.architecture} "
        f"{row.n_layers} layers x {row.n_neurons} neurons, sha256 {row.sha256[:16]}"
    )


@models.command("list")
@db_option
def list_(db_url: str | None) -> None:
    """List the registered models.

    \b
    Example:
        atlas models list
    """
    rows = list_models(open_store(db_url))
    for r in rows:
        click.echo(
            f"{r.id:4d}  {r.name:24s} {r.architecture:22s} {r.n_layers:3d} x {r.n_neurons:<6d} "
            f"{r.sha256[:16]}  {r.source}"
        )
    if not rows:
        click.echo("no models (index something, or `atlas models add smollm2`)")
