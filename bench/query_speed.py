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
import json
import platform
import statistics
import subprocess
import time
from datetime import date
from pathlib import Path

import sqlalchemy as sa

from atlas import queries, schema
from atlas.duckdb_mirror import PostgresMirror
from atlas.store import Store

RESULTS = Path(__file__).parent / "results.jsonl"
SAMPLE_KEYS = {"run_id", "run_a", "run_b", "relation_id", "fact_id", "layer", "neuron"}  # what sample_params gives
TARGETS_MS = {"relation-neurons": 20, "fact-interference": 20, "interference-pairs": 3000}


def sample_params(store: Store) -> dict[str, object]:
    """Parameters that hit real data: the run, a large relation, a fact and a neuron of it."""
    with store.begin() as conn:
        run_id = conn.execute(sa.select(sa.func.min(schema.runs.c.id))).scalar_one()
        kn, facts = schema.knowledge_neurons, schema.facts
        relation = conn.execute(
            sa.select(facts.c.relation_id).group_by(facts.c.relation_id).order_by(sa.func.count().desc(), facts.c.relation_id).limit(1)
        ).scalar_one()
        fact = conn.execute(sa.select(sa.func.min(facts.c.id)).where(facts.c.relation_id == relation)).scalar_one()
        layer, neuron = conn.execute(
            sa.select(kn.c.layer, kn.c.neuron).where(kn.c.run_id == run_id, kn.c.fact_id == fact).order_by(kn.c.score.desc()).limit(1)
        ).one()
    return {"run_id": run_id, "run_a": run_id, "run_b": run_id, "relation_id": relation, "fact_id": fact, "layer": layer, "neuron": neuron}


def time_query(store: Store, name: str, params: dict, via: str, repeat: int, mirror: PostgresMirror | None) -> tuple[float, int]:
    """Median seconds over ``repeat`` runs after one warm-up, and the row count."""
    wanted = {p.name for p in queries.load_query(name).params}
    args = {k: v for k, v in params.items() if k in wanted}
    result = queries.run_query(store, name, args, via=via, mirror=mirror)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        queries.run_query(store, name, args, via=via, mirror=mirror)
        times.append(time.perf_counter() - started)
    return statistics.median(times), len(result.rows)


def bench_backend(url: str, names: list[str], repeat: int) -> list[dict]:
    store = Store(url)
    params = sample_params(store)
    paths: list[tuple[str, str, PostgresMirror | None]] = [("native", "native", None), ("duckdb", "duckdb", None)]
    snapshot = None
    if store.backend == "postgresql":
        snapshot = PostgresMirror(store, mode="snapshot")
        started = time.perf_counter()
        snapshot.snapshot(["knowledge_neurons", "facts", "relations", "prompts", "prompt_scores"])
        print(f"snapshot of the PostgreSQL tables into DuckDB: {time.perf_counter() - started:.2f} s {snapshot.copied}")
        paths.append(("snapshot", "duckdb", snapshot))
    records = []
    for name in names:
        for label, via, mirror in paths:
            seconds, rows = time_query(store, name, params, via, repeat, mirror)
            target = TARGETS_MS.get(name)
            records.append({"backend": store.backend, "path": label, "query": name, "median_ms": round(seconds * 1000, 2),
                            "rows": rows, "repeat": repeat, "target_ms": target})
            flag = "" if target is None else ("  (target met)" if seconds * 1000 <= target else f"  (target {target} ms MISSED)")
            print(f"{store.backend:10s} {label:8s} {name:20s} {seconds * 1000:10.1f} ms {rows:>9,d} rows{flag}", flush=True)
    if snapshot is not None:
        snapshot.close()
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duckdb", default="duckdb:////tmp/bench.duckdb", help="DuckDB atlas URL ('' to skip)")
    parser.add_argument("--postgresql", default="postgresql+psycopg:///atlas_bench", help="PostgreSQL atlas URL ('' to skip)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--query", action="append", help="only these queries (repeatable)")
    args = parser.parse_args()
    names = args.query or [q.name for q in queries.list_queries() if {p.name for p in q.params if p.required} <= SAMPLE_KEYS]
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    with RESULTS.open("a") as out:
        for url in (args.duckdb, args.postgresql):
            if not url:
                continue
            for rec in bench_backend(url, names, args.repeat):
                rec.update({"bench": "query_speed", "date": date.today().isoformat(), "machine": platform.node(), "git": sha})
                out.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
