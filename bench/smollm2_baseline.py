"""What the real SmolLM2 knows: every left-to-right prompt of a dataset scored once (no edit).

For each causal prompt of the selected facts: P(gold) (joint, teacher-forced), the gold's first
token rank, and whether greedy decoding gives the gold answer. Written as a Parquet table keyed by
prompt id, next to an atlas that holds the same prompts, so that edit benchmarks can pick the
facts the model got right before without scoring them again (on a GPU this takes seconds for all
of kn-paper; on the 2-core CPU, hours).

Example:
    python3 bench/smollm2_baseline.py --db atlas.duckdb --dataset kn-paper --out baseline.parquet --device cuda
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atlas.db.datasets import causal_prefix  # noqa: E402
from atlas.db.results import item_prompts  # noqa: E402
from atlas.db.runs import select_facts  # noqa: E402
from atlas.db.store import Store  # noqa: E402
from atlas.model.encode import encode_causal  # noqa: E402
from atlas.model.loading import load_model  # noqa: E402
from atlas.model.scoring import score  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True)
    ap.add_argument("--dataset", default="kn-paper")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=512)
    args = ap.parse_args()
    store = Store(args.db)
    facts = [f for _, f in select_facts(store, args.dataset, None, None, True)]
    rows = [r for i in range(0, len(facts), 5000) for r in item_prompts(store, tuple(facts[i : i + 5000]), True)]
    lm = load_model("smollm2", device=args.device)
    t0 = time.perf_counter()
    ids, items = [], []
    for r in rows:
        enc = encode_causal(lm.tokenizer, causal_prefix(r.text), r.object)
        if not isinstance(enc, str):
            ids.append(int(r.prompt_id))
            items.append(enc)
    scored = score(lm.model, lm.adapter, items, batch_size=args.batch_size)
    table = pa.table(
        {
            "prompt_id": pa.array(ids, pa.int64()),
            "p_gold": pa.array([s.p_gold for s in scored], pa.float64()),
            "greedy": pa.array([s.greedy for s in scored], pa.bool_()),
            "top1": pa.array([s.top1 for s in scored], pa.int64()),
            "answer_first": pa.array([it.answer_ids[0] for it in items], pa.int64()),
            "n_answer_tokens": pa.array([len(it.answer_ids) for it in items], pa.int32()),
        }
    )
    pq.write_table(table, args.out)
    wall = time.perf_counter() - t0
    right = sum(table["greedy"].to_pylist())
    print(f"scored {len(items)} prompts of {len(facts)} facts in {wall:.1f} s; {right} greedy right; {lm.sha256}")


if __name__ == "__main__":
    main()
