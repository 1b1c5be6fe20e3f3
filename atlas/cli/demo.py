"""``atlas demo``: the main job of the README, on the embedded default database."""

from __future__ import annotations

import click

from atlas.cli.common import db_option, open_store
from atlas.jobs.demo import DEMO_FACTS_PER_RELATION, DEMO_RELATIONS, run_demo


@click.command()
@db_option
@click.option("--relations", default=",".join(DEMO_RELATIONS), show_default=True, help="kn-paper relations to load.")
@click.option("--facts-per-relation", type=int, default=DEMO_FACTS_PER_RELATION, show_default=True)
def demo(db_url: str | None, relations: str, facts_per_relation: int) -> None:
    """Build a small atlas: create/upgrade the database, load a few bundled facts, show them.

    \b
    Example:
        atlas demo
        atlas demo --db postgresql+psycopg:///atlas --relations P36 --facts-per-relation 2
    """
    store = open_store(db_url, check_schema=False)
    run_demo(store, tuple(r.strip() for r in relations.split(",") if r.strip()), facts_per_relation, echo=click.echo)
