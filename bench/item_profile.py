"""Where one indexing work item's model-side time goes: encoding, attribution, and the rest of
`indexer.run.Attributor.compute` (moving scores to the host, stacking, sparse selection).

No database: the item's rows are read from the bundled PARAREL files. The attribution time is
measured on the same encoded prompts with `indexer.ig.attribute` alone, so "rest" = compute
minus encode minus attribute. Each configuration runs once to warm up, then `--repeat` times.

Example:
    python3 bench/item_profile.py --device cuda --tokenizer bench/.tokenizer --precision bf16 --batch-sizes 64,128
    python3 bench/item_profile.py --facts 8 --batch-sizes 4          # CPU, the real SmolLM2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from atlas.datasets import read_dataset  # noqa: E402
from atlas.models import load_model  # noqa: E402
from atlas.workqueue import WorkItem  # noqa: E402
from indexer.ig import attribute  # noqa: E402
from indexer.run import Attributor, IndexOptions  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokenizer", help="SmolLM2 tokenizer directory: a RANDOM model of its architecture")
    ap.add_argument("--relation", default="P19")
    ap.add_argument("--facts", type=int, default=48, help="facts in the item")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--batch-sizes", default="128")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    if args.tokenizer:
        from index_speed import random_smollm2

        spec = str(random_smollm2(args.tokenizer, Path(tempfile.mkdtemp()) / "smollm2-random"))
    else:
        spec = "smollm2"
    lm = load_model(spec, device=args.device)
    facts = read_dataset("pararel", [args.relation], args.facts).facts
    rows = [(k, text, obj) for k, (text, obj) in enumerate((p.text, f.object) for f in facts for p in f.prompts if p.causal)]
    item = WorkItem(0, 0, args.relation, tuple(f.id for f in facts), 0)
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        att = Attributor(lm, IndexOptions(model=spec, dataset="pararel", device=args.device, precision=args.precision,
                                          batch_size=bs))
        t = time.perf_counter()
        encoded = [att.encode(text, obj) for _, text, obj in rows]
        encode_s = time.perf_counter() - t
        prompts = [e for e in encoded if not isinstance(e, str)]
        att.compute(item, rows)  # warm-up: kernels for every shape of this item
        compute_s = attr_s = 0.0
        for _ in range(args.repeat):
            sync(args.device)
            t = time.perf_counter()
            att.compute(item, rows)
            sync(args.device)
            compute_s += time.perf_counter() - t
            t = time.perf_counter()
            attribute(lm.model, lm.adapter, prompts, att.cfg)
            sync(args.device)
            attr_s += time.perf_counter() - t
        compute_s, attr_s = compute_s / args.repeat, attr_s / args.repeat
        rec = {"bench": "item_profile", "device": args.device, "precision": args.precision, "batch_size": bs,
               "prompts": len(rows), "encode_s": round(encode_s, 4), "attribute_s": round(attr_s, 4),
               "rest_s": round(compute_s - attr_s - encode_s, 4), "compute_s": round(compute_s, 4),
               "prompts_per_s": round(len(rows) / compute_s, 1), "attribute_prompts_per_s": round(len(rows) / attr_s, 1)}
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
