"""How fast every named query answers on a PARAREL-sized atlas, per backend and path.

Targets (issue #5): relation-neurons <= 20 ms, fact-interference for one fact <= 20 ms,
all-pairs interference (min_shared 2) <= 3 s. Each figure is the median of ``--repeat`` warm runs
(the machine is shared with other engineers' test runs, so single runs are noisy). Paths:

* ``native``: the query on the store's own backend;
* ``duckdb``: on a DuckDB atlas the same engine; on PostgreSQL DuckDB ATTACHes the database
  read-only and scans what the query needs, per query (what one `atlas query --via duckdb` does);
* ``snapshot`` (PostgreSQL only): DuckDB copies the tables once (copy time reported apart), then
  queries its in-memory copy (what a long-lived process reusing one mirror gets).

Build the atlases first with ``bench/synthetic_atlas.py`` (see BENCHMARKS.md). Prints a table and
appends one JSON line per (backend, path, query) to bench/results.jsonl.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import sqlalchemy as sa

from atlas.db import queries, schema
from atlas.db.mirror import PostgresMirror
from atlas.db.store import Store
from bench.results import append_result

SAMPLE_KEYS = {"run_id", "run_a", "run_b", "relation_id", "fact_id", "layer", "neuron"}  # what sample_params gives
SLOW_S = 2.0
OVERRIDES = {"relation-neurons": {"min_facts": 5}}  # REFERENCE.md's "neurons shared by >= 5 facts of a relation"
TARGETS_MS = {"relation-neurons": 20, "fact-interference": 20, "interference-pairs": 3000}


def sample_params(store: Store) -> dict[str, object]:
    """Parameters that hit real data: the run, a large relation, a fact and a neuron of it."""
    with store.begin() as conn:
        run_id = conn.execute(sa.select(sa.func.min(schema.runs.c.id))).scalar_one()
        kn, facts = schema.knowledge_neurons, schema.facts
        relation = conn.execute(
            sa.select(facts.c.relation_id)
            .group_by(facts.c.relation_id)
            .order_by(sa.func.count().desc(), facts.c.relation_id)
            .limit(1)
        ).scalar_one()
        fact = conn.execute(  # the relation's fact with the most knowledge neurons: a heavy case
            sa.select(kn.c.fact_id)
            .join(facts, facts.c.id == kn.c.fact_id)
            .where(kn.c.run_id == run_id, facts.c.relation_id == relation)
            .group_by(kn.c.fact_id)
            .order_by(sa.func.count().desc(), kn.c.fact_id)
            .limit(1)
        ).scalar_one()
        layer, neuron = conn.execute(
            sa.select(kn.c.layer, kn.c.neuron)
            .where(kn.c.run_id == run_id, kn.c.fact_id == fact)
            .order_by(kn.c.score.desc())
            .limit(1)
        ).one()
    return {
        "run_id": run_id,
        "run_a": run_id,
        "run_b": run_id,
        "relation_id": relation,
        "fact_id": fact,
        "layer": layer,
        "neuron": neuron,
    }


def time_query(
    store: Store,
    name: str,
    params: dict,
    via: str,
    repeat: int,
    mirror: PostgresMirror | None,
    conn: sa.Connection | None,
) -> tuple[list[float], int]:
    """Seconds of ``repeat`` runs after one warm-up (results fetched as Arrow), and the row count."""
    wanted = {p.name for p in queries.load_query(name).params}
    args = {k: v for k, v in {**params, **OVERRIDES.get(name, {})}.items() if k in wanted}
    started = time.perf_counter()
    result = queries.run_query(store, name, args, via=via, mirror=mirror, conn=conn)
    if time.perf_counter() - started > SLOW_S:  # a slow path: a few runs tell enough
        repeat = min(repeat, 3)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        queries.run_query(store, name, args, via=via, mirror=mirror, conn=conn)
        times.append(time.perf_counter() - started)
    return times, len(result.rows)


def bench_backend(url: str, names: list[str], repeat: int) -> None:
    """Time every query by every path on one atlas; print and record each figure.

    Native queries (and DuckDB's own) run on one open connection: "warm" means the database is
    open, as in a long-lived process; opening a DuckDB file costs ~50-100 ms more per CLI call.
    """
    store = Store(url)
    params = sample_params(store)
    mirrors: dict[str, PostgresMirror | None] = {"native": None, "duckdb": None}
    if store.backend == "postgresql":
        mirrors = {"native": None, "duckdb": PostgresMirror(store), "snapshot": PostgresMirror(store, mode="snapshot")}
        started = time.perf_counter()
        mirrors["snapshot"].snapshot(["knowledge_neurons", "facts", "relations", "prompts", "prompt_scores"])
        copied = {k: round(v, 2) for k, v in mirrors["snapshot"].copied.items()}
        print(f"snapshot of the PostgreSQL tables into DuckDB: {time.perf_counter() - started:.2f} s {copied}")
        append_result(
            "query_speed",
            {"backend": "postgresql", "step": "snapshot"},
            time.perf_counter() - started,
            0,
            tables_s=copied,
        )
    with store.begin() as conn:
        for name in names:
            for label, mirror in mirrors.items():
                via = "native" if label == "native" else "duckdb"
                times, rows = time_query(store, name, params, via, repeat, mirror, None if mirror else conn)
                median = statistics.median(times)
                target = TARGETS_MS.get(name)
                append_result(
                    "query_speed",
                    {"backend": store.backend, "path": label, "query": name, "repeat": repeat},
                    median,
                    rows,
                    median_ms=round(median * 1000, 2),
                    min_ms=round(min(times) * 1000, 2),
                    rows=rows,
                    target_ms=target,
                    machine="2-core python-svc",
                    runs=len(times),
                    load_avg_1min=round(os.getloadavg()[0], 1),
                )
                flag = (
                    ""
                    if target is None
                    else ("  target met" if median * 1000 <= target else f"  target {target} ms MISSED")
                )
                print(
                    f"{store.backend:10s} {label:8s} {name:20s} median {median * 1000:9.1f} ms  "
                    f"min {min(times) * 1000:9.1f} ms "
                    f"{rows:>9,d} rows  n={len(times)} load {os.getloadavg()[0]:.1f}{flag}",
                    flush=True,
                )
    for mirror in mirrors.values():
        if mirror is not None:
            mirror.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duckdb", default="duckdb:////tmp/bench.duckdb", help="DuckDB atlas URL ('' to skip)")
    parser.add_argument(
        "--postgresql", default="postgresql+psycopg:///atlas_bench", help="PostgreSQL atlas URL ('' to skip)"
    )
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--query", action="append", help="only these queries (repeatable)")
    args = parser.parse_args()
    names = args.query or [
        q.name for q in queries.list_queries() if {p.name for p in q.params if p.required} <= SAMPLE_KEYS
    ]
    for url in (args.duckdb, args.postgresql):
        if url:
            bench_backend(url, names, args.repeat)


if __name__ == "__main__":
    main()
