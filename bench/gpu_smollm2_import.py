"""Move an atlas's runs between GPU calls as Parquet (the device takes back at most a few files).

    python3 bench/gpu_smollm2_import.py ATLAS.duckdb DIR export   # the run tables -> DIR/*.parquet
    python3 bench/gpu_smollm2_import.py ATLAS.duckdb DIR          # DIR/*.parquet -> the run tables

The facts and prompts are not moved: `atlas facts load kn-paper` then `atlas facts load
bench/data/user_facts.jsonl --dataset user` on a fresh database give them the same ids.
"""

from __future__ import annotations

import sys

import duckdb

TABLES = ["models", "runs", "prompt_outputs", "prompt_scores", "knowledge_neurons", "relation_thresholds", "work_items"]


def main() -> None:
    db, folder = sys.argv[1], sys.argv[2]
    export = sys.argv[3:] == ["export"]
    con = duckdb.connect(db, read_only=export)
    for t in TABLES:
        if export:
            con.execute(f"COPY (SELECT * FROM {t}) TO '{folder}/{t}.parquet' (FORMAT parquet, COMPRESSION zstd)")
        else:
            con.execute(f"INSERT INTO {t} SELECT * FROM read_parquet('{folder}/{t}.parquet')")
    if not export:  # past the imported ids
        for seq, table in (("models_id_seq", "models"), ("runs_id_seq", "runs")):
            (top,) = con.execute(f"SELECT max(id) FROM {table}").fetchone()
            for _ in range(top or 0):
                con.execute(f"SELECT nextval('{seq}')").fetchone()
    print({t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES})


if __name__ == "__main__":
    main()
