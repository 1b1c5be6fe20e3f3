"""The indexer's database side alone: how many prompts/s one writer process can take.

Runs the real claim -> read -> write -> refine-the-finished-relation sequence of `indexer.job`
over PARAREL on a fresh DuckDB file or PostgreSQL database, with synthetic item results in place
of the model: every ok prompt stores ``--scores-per-prompt`` scores (a random model stores ~250,
the real SmolLM2 far fewer), drawn from a pool of neurons per fact so that a fact's prompts share
neurons as real ones do. The numbers say how fast the GPUs may go before the writer holds them up
(the GPU runs in BENCHMARKS.md measure the whole thing).

Example:
    python3 bench/db_side.py --db duckdb --limit-per-relation 400
    python3 bench/db_side.py --db postgresql+psycopg://postgres@127.0.0.1/bench --limit-per-relation 400
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from index_speed import Databases, _git_sha  # noqa: E402

from atlas.db.datasets import read_dataset  # noqa: E402
from atlas.db.facts import load_dataset  # noqa: E402
from atlas.db.models import ModelInfo  # noqa: E402
from atlas.db.results import BatchResult, PromptOutput, item_prompts, write_batch  # noqa: E402
from atlas.db.runs import RunSpec, open_run  # noqa: E402
from atlas.db.workqueue import WorkQueue  # noqa: E402
from indexer.job.attributor import result_params  # noqa: E402
from indexer.job.finalize import finalize_relation  # noqa: E402
from indexer.job.options import IndexOptions  # noqa: E402

N_LAYERS, N_NEURONS = 30, 1536  # SmolLM2-135M


def synthetic_result(item, rows, per: int, rng: np.random.Generator) -> BatchResult:
    """An item's result as the model side would hand it over (scores uniform in [0, 1), max 1)."""
    ids = np.array([r.prompt_id for r in rows], np.int64)
    pools = {
        f: np.random.default_rng(abs(hash(f)) % 2**32).choice(N_LAYERS * N_NEURONS, int(1.5 * per), replace=False)
        for f in {r.fact_id for r in rows}
    }
    flat = np.concatenate([pools[r.fact_id][rng.choice(int(1.5 * per), per, replace=False)] for r in rows])
    values = rng.random(len(flat)).astype(np.float32)
    values[::per] = 1.0  # each prompt's max
    return BatchResult(
        item=item,
        outputs=[PromptOutput(int(i), "ok", None, 0.1, 3, 1.0, 1) for i in ids],
        score_prompt=np.repeat(ids, per),
        score_layer=(flat // N_NEURONS).astype(np.int16),
        score_neuron=(flat % N_NEURONS).astype(np.int32),
        score_value=values,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="duckdb", help="duckdb | postgres (embedded) | a postgresql+psycopg:// server URL")
    ap.add_argument("--limit-per-relation", type=int, default=400)
    ap.add_argument("--facts-per-item", type=int, default=96)
    ap.add_argument("--scores-per-prompt", type=int, default=200)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results.jsonl"))
    args = ap.parse_args()

    store = Databases(args.db, Path(tempfile.mkdtemp(prefix="kn-db-side-"))).fresh("db_side")
    load_dataset(store, read_dataset("pararel", None, args.limit_per_relation))
    opts = IndexOptions(model="synthetic", dataset="pararel", limit_per_relation=args.limit_per_relation)
    spec = RunSpec(
        ModelInfo("synthetic", "none", "LlamaForCausalLM", N_LAYERS, N_NEURONS, "0" * 64),
        "pararel",
        None,
        args.limit_per_relation,
        True,
        result_params(opts),
        "bench",
    )
    keep = store.engine.connect() if store.backend == "duckdb" else None  # as the indexer does (Store.kept_open)
    run, _ = open_run(store, spec, None, args.facts_per_item)
    queue = WorkQueue(store, run.id)
    rng = np.random.default_rng(0)
    spent: dict[str, float] = defaultdict(float)
    prompts = 0
    t_all = time.perf_counter()

    def timed(what: str, fn):
        t = time.perf_counter()
        try:
            return fn()
        finally:
            spent[what] += time.perf_counter() - t

    while (item := timed("claim", queue.claim)) is not None:
        rows = timed("read", lambda: item_prompts(store, item.fact_ids, True))
        result = synthetic_result(item, rows, args.scores_per_prompt, rng)
        timed("write", lambda result=result: write_batch(store, queue, result))
        for prog in timed("finalize", queue.progress):
            if prog.relation_id == item.relation_id and prog.complete:
                timed("finalize", lambda: finalize_relation(store, run.id, item.relation_id))
        prompts += len(rows)
    wall = time.perf_counter() - t_all
    if keep is not None:
        keep.close()
    rec = {
        "bench": "db_side",
        "date": str(date.today()),
        "db": store.backend,
        "limit_per_relation": args.limit_per_relation,
        "facts_per_item": args.facts_per_item,
        "scores_per_prompt": args.scores_per_prompt,
        "prompts": prompts,
        "wall_s": round(wall, 2),
        "ms_per_prompt": round(1000 * wall / prompts, 3),
        "prompts_per_s": round(prompts / wall, 1),
        **{f"{k}_s": round(v, 2) for k, v in spent.items()},
        "machine": f"{os.cpu_count()}-core {platform.machine()} CPU",
        "git": _git_sha(),
        "command": " ".join(sys.argv),
    }
    print(json.dumps(rec), flush=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
