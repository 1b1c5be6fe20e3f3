"""Full loads of the bundled datasets (`atlas facts load pararel|kn-paper`) on DuckDB and PostgreSQL.

Each dataset goes into a fresh database twice: the first load writes everything, the second must
add nothing. Timings include reading and validating the bundled files (what the command does,
less the ~1 s of Python start-up). Usage: ``python3 bench/load_facts.py [--pg postgresql+psycopg:///postgres]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from results import append_result

from atlas.db import migrate
from atlas.db.datasets import read_dataset
from atlas.db.facts import LoadReport, load_dataset
from atlas.db.store import Store

DATASETS = ("pararel", "kn-paper")


def timed_load(store: Store, source: str) -> tuple[LoadReport, float]:
    started = time.perf_counter()
    report = load_dataset(store, read_dataset(source))
    return report, time.perf_counter() - started


def bench_backend(backend: str, url: str, source: str) -> None:
    store = Store(url)
    migrate.upgrade(store)
    for attempt in ("first", "second"):
        report, wall = timed_load(store, source)
        row = append_result(
            "load_facts",
            {"dataset": source, "backend": backend, "load": attempt},
            wall,
            report.n_prompts,
            new_facts=report.new_facts,
            new_prompts=report.new_prompts,
        )
        print(f"{backend:10s} {attempt:6s} {report}  {wall:6.2f} s  ({row['items_per_s']:,.0f} prompts/s)")
    store.dispose()


def fresh_postgres(server: str, name: str) -> str:
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return sa.make_url(server).set(database=name).render_as_string(hide_password=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pg", default="postgresql+psycopg:///postgres", help="PostgreSQL server URL (a database is created)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for source in DATASETS:
            bench_backend("duckdb", f"duckdb:///{Path(tmp) / (source + '.duckdb')}", source)
            bench_backend("postgresql", fresh_postgres(args.pg, f"atlas_bench_{source.replace('-', '_')}"), source)


if __name__ == "__main__":
    main()
