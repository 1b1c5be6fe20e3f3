"""Where one indexing work item's model-side time goes: encoding, attribution, and the rest of
`indexer.job.attributor.Attributor.compute` (moving scores to the host, stacking, sparse selection).

No database: the item's rows are read from the bundled PARAREL files. The attribution time is
measured on the same encoded prompts with `indexer.attribution.ig.attribute_stacked` alone, so "rest" =
compute minus encode minus attribute. Each configuration runs once to warm up, then `--repeat`
times. On a GPU it also reports peak memory, the allocator's retries (cache flushes when memory
runs out: each one stalls the GPU), and with `--trace` the share of the item's wall time the GPU
was busy (from the profiler's kernel times). `--busy-thread 0.3` runs a pure-Python thread busy
30% of the time beside the model (as the indexer's database thread is), to show how much the
model side suffers from sharing the interpreter lock.

Example:
    python3 bench/item_profile.py --device cuda --tokenizer bench/.tokenizer --precision bf16 --batch-sizes 64,128
    python3 bench/item_profile.py --facts 8 --batch-sizes 4          # CPU, the real SmolLM2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from atlas.db.datasets import read_dataset  # noqa: E402
from atlas.db.workqueue import WorkItem  # noqa: E402
from atlas.model.loading import load_model  # noqa: E402
from indexer.attribution.ig import attribute_stacked  # noqa: E402
from indexer.job.attributor import Attributor  # noqa: E402
from indexer.job.options import IndexOptions  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@contextmanager
def busy_thread(share: float):
    """A thread spinning in pure Python `share` of every 100 ms (none when share is 0)."""
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            end = time.perf_counter() + 0.1 * share
            while time.perf_counter() < end:
                sum(range(200))
            time.sleep(0.1 * (1 - share))

    t = threading.Thread(target=spin, daemon=True)
    if share > 0:
        t.start()
    try:
        yield
    finally:
        stop.set()


def gpu_busy_share(fn, device: str) -> float:
    """Share of `fn()`'s wall time during which some kernel ran (sum of kernel times / wall)."""
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        sync(device)
    wall = time.perf_counter() - t
    kernels = sum(e.device_time_total for e in prof.key_averages() if e.device_type.name == "CUDA") / 1e6
    return kernels / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokenizer", help="SmolLM2 tokenizer directory: a RANDOM model of its architecture")
    ap.add_argument("--relations", default="P19", help="comma-separated: one item of each")
    ap.add_argument("--facts", type=int, default=48, help="facts in the item")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--batch-sizes", default="128")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--busy-thread", type=float, default=0.0, help="share of time a pure-Python thread spins beside the model"
    )
    ap.add_argument("--trace", action="store_true", help="also measure the GPU-busy share of one item (profiler)")
    args = ap.parse_args()

    if args.tokenizer:
        from index_speed import random_smollm2

        spec = str(random_smollm2(args.tokenizer, Path(tempfile.mkdtemp()) / "smollm2-random"))
    else:
        spec = "smollm2"
    lm = load_model(spec, device=args.device)
    for relation in args.relations.split(","):
        for bs in [int(b) for b in args.batch_sizes.split(",")]:
            try:
                profile_item(lm, spec, relation, bs, args)
            except torch.cuda.OutOfMemoryError:
                print(
                    json.dumps(
                        {"bench": "item_profile", "relation": relation, "batch_size": bs, "out_of_memory": True}
                    ),
                    flush=True,
                )
                torch.cuda.empty_cache()


def profile_item(lm, spec: str, relation: str, bs: int, args: argparse.Namespace) -> None:
    facts = read_dataset("pararel", [relation], args.facts).facts
    rows = [
        (k, text, obj) for k, (text, obj) in enumerate((p.text, f.object) for f in facts for p in f.prompts if p.causal)
    ]
    item = WorkItem(0, 0, relation, tuple(f.id for f in facts), 0)
    cuda = args.device.startswith("cuda")
    with busy_thread(args.busy_thread):
        att = Attributor(
            lm, IndexOptions(model=spec, dataset="pararel", device=args.device, precision=args.precision, batch_size=bs)
        )
        t = time.perf_counter()
        encoded = [att.encode(text, obj) for _, text, obj in rows]
        encode_s = time.perf_counter() - t
        prompts = [e for e in encoded if not isinstance(e, str)]
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            retries0 = torch.cuda.memory_stats().get("num_alloc_retries", 0)
        att.compute(item, rows)  # warm-up: kernels for every shape of this item
        compute_s = attr_s = 0.0
        for _ in range(args.repeat):
            sync(args.device)
            t = time.perf_counter()
            att.compute(item, rows)
            sync(args.device)
            compute_s += time.perf_counter() - t
            t = time.perf_counter()
            attribute_stacked(lm.model, lm.adapter, prompts, att.cfg)
            sync(args.device)
            attr_s += time.perf_counter() - t
        compute_s, attr_s = compute_s / args.repeat, attr_s / args.repeat
        rec = {
            "bench": "item_profile",
            "device": args.device,
            "precision": args.precision,
            "batch_size": bs,
            "relation": relation,
            "prompts": len(rows),
            "busy_thread": args.busy_thread,
            "encode_s": round(encode_s, 4),
            "attribute_s": round(attr_s, 4),
            "rest_s": round(compute_s - attr_s - encode_s, 4),
            "compute_s": round(compute_s, 4),
            "prompts_per_s": round(len(rows) / compute_s, 1),
            "attribute_prompts_per_s": round(len(rows) / attr_s, 1),
        }
        if cuda:
            rec.update(
                peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 1),
                reserved_gib=round(torch.cuda.max_memory_reserved() / 2**30, 1),
                alloc_retries=torch.cuda.memory_stats().get("num_alloc_retries", 0) - retries0,
            )
            if args.trace:
                rec["gpu_busy_share"] = round(gpu_busy_share(lambda: att.compute(item, rows), args.device), 3)
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
