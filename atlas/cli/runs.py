"""``atlas runs``: the indexing runs of an atlas, their parameters, progress and throughput."""

from __future__ import annotations

import json

import click

from atlas.cli.common import db_option, open_store
from atlas.db.runs import get_run, list_runs, run_counts


@click.group()
def runs() -> None:
    """List indexing runs and show one in detail."""


@runs.command("list")
@db_option
def list_(db_url: str | None) -> None:
    """One line per run: id, name, status, dataset, prompts done.

    \b
    Example:
        atlas runs list
    """
    store = open_store(db_url)
    rows = list_runs(store)
    for r in rows:
        c = run_counts(store, r.id)
        click.echo(
            f"{r.id:4d}  {r.name:40s} {r.status:8s} {r.dataset:12s} items {c.items_done}/{c.items}  "
            f"prompts {c.prompts:,}  neurons {c.neurons:,}"
        )
    if not rows:
        click.echo("no runs yet (see `atlas index --help`)")


@runs.command()
@db_option
@click.argument("run")
def show(db_url: str | None, run: str) -> None:
    """Parameters, status, counts and throughput of RUN (a name or an id).

    \b
    Example:
        atlas runs show 1
    """
    store = open_store(db_url)
    r = get_run(store, run)
    c = run_counts(store, r.id)
    st = r.stats
    click.echo(f"run {r.id}: {r.name}")
    click.echo(
        f"status      {r.status} (created {r.created_at:%Y-%m-%d %H:%M:%S}"
        + (f", finished {r.finished_at:%Y-%m-%d %H:%M:%S})" if r.finished_at else ")")
    )
    click.echo(f"dataset     {r.dataset}   model id {r.model_id}   params key {r.params_key[:16]}")
    click.echo(f"parameters  {json.dumps(r.params, sort_keys=True)}")
    click.echo(f"work items  {c.items_done}/{c.items} done; relations finalised {c.relations_done}/{c.relations}")
    click.echo(f"facts       {c.facts:,} ({c.facts_with_neurons:,} with knowledge neurons, {c.neurons:,} neurons)")
    click.echo(f"prompts     {c.prompts:,} (ok {c.ok:,}, skipped {c.skipped:,})")
    for reason, n in sorted(c.skip_reasons.items(), key=lambda kv: -kv[1]):
        click.echo(f"  skipped {n:,}: {reason}")
    wall, model_s, db_s = st.get("wall_s", 0.0), st.get("model_s", 0.0), st.get("db_s", 0.0)
    if wall:
        click.echo(
            f"time        {wall:.1f} s wall over {st.get('sessions', 0)} session(s); model {model_s:.1f} s, "
            f"database {db_s:.1f} s ({100 * db_s / wall:.1f}%)"
        )
        click.echo(f"throughput  {st.get('prompts', 0) / wall:.2f} prompts/s (prompts attributed per wall second)")
