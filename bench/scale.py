"""Real-size models through `atlas index`: random-init SmolLM2, Llama-3.2-1B and Llama-3-8B shapes on
PARAREL subsets, with the attribution engine alone measured in the same run.

For each shape (speed does not depend on the weights' values):
- the model is built once under --root: bf16 safetensors with the SmolLM2 tokenizer (its ids are a
  subset of every shape's vocabulary; each shape keeps its real vocabulary size, so the head costs
  what it costs);
- engine alone: `attribute_stacked` on --engine-prompts prompts spread over the subset, at the pass
  size the indexer measures, in this process;
- the indexer: `indexer.job.run.index` with workers "auto" and device cuda (what `atlas index
  --workers auto --device cuda` runs) in a child process per GPU count (--gpus 1,4: the child sees
  that many GPUs), on a fresh DuckDB file or PostgreSQL database. Reported: prompts/s (wall and
  steady), start-up (until the run is open and the first worker ready: spawn, load, hash, pass
  measured), each worker's start-up, peak GPU memory (nvidia-smi every 0.5 s), the DB wait share,
  and the projection for the whole PARAREL left-to-right set (144,325 prompts) = start-up +
  144,325 / steady, stated as a projection;
- --fidelity N: N prompts with fp32 weights (the reference), fp32 weights with a bf16 scaled pass
  (a CPU's way) and bf16 weights (a GPU run's way): top-20 neuron agreement and P(gold) differences.

Examples (a GPU machine; --model smollm2 --device cpu measures the real model's fidelity on a CPU):
  python3 bench/scale.py --tokenizer bench/.tokenizer --shapes smollm2,llama-1b --limit 24 --fidelity 128
  python3 bench/scale.py --tokenizer bench/.tokenizer --shapes llama-8b --limit 100 --db postgres --gpus 1,4
  python3 bench/scale.py --model smollm2 --device cpu --fidelity 48 --limit 24 --gpus ""
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from index_speed import Databases, measure  # noqa: E402
from results import git_sha  # noqa: E402
from shapes import SHAPES  # noqa: E402

PARAREL_L2R = 144_325


def build(shape: str, tokenizer: str, root: Path) -> Path:
    """The random `shape` model as a bf16 HF directory (made once; initialised on the GPU)."""
    import torch
    import transformers as tf

    dest = root / shape
    if (dest / "config.json").exists():
        return dest
    cfg = tf.LlamaConfig(**SHAPES[shape], architectures=["LlamaForCausalLM"])
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = tf.LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(dest)
    tf.AutoTokenizer.from_pretrained(tokenizer).save_pretrained(dest)
    del model
    _free()
    return dest


def _free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def subset_rows(limit: int) -> list[tuple[str, str]]:
    """(prompt text, object) of the subset's left-to-right prompts, in the indexer's order."""
    from atlas.db.datasets import read_dataset

    return [(p.text, f.object) for f in read_dataset("pararel", None, limit).facts for p in f.prompts if p.causal]


def _spread(rows: list, n: int) -> list:
    step = max(1, len(rows) // n)
    return rows[::step][:n]


def _options(model: str, device: str, precision: str):
    from indexer.job.options import IndexOptions

    return IndexOptions(model=model, dataset="pararel", device=device, precision=precision)


def _attributor(opts, weights) -> object:
    """The indexer's model side on `opts`, its weights loaded in `weights` (a torch dtype)."""
    from indexer.job.attributor import Attributor, load_for_index

    return Attributor(load_for_index(opts.model, opts.device, weights), opts)


def _encoded(att, rows: list[tuple[str, str]]) -> list:
    return [e for e in (att.encode(t, o) for t, o in rows) if not isinstance(e, str)]


def engine_alone(model: str, device: str, rows: list[tuple[str, str]], precision: str, n: int) -> dict:
    """The engine's prompts/s on `n` prompts at the indexer's measured pass size (warmed up)."""
    import torch

    from atlas.model.loading import hash_cache_path
    from indexer.attribution.ig import attribute_stacked
    from indexer.job.attributor import weights_dtype

    cuda = device.startswith("cuda")
    opts = _options(model, device, precision)
    weights = weights_dtype(opts)  # as the indexer loads them
    cached = hash_cache_path(Path(model), weights).exists() if Path(model).is_dir() else None
    t0 = time.perf_counter()
    att = _attributor(opts, weights)
    load_s = time.perf_counter() - t0
    items = _encoded(att, _spread(rows, n))

    model_, adapter, cfg = att.lm.model, att.lm.adapter, att.cfg

    def run(its: list) -> None:
        attribute_stacked(model_, adapter, its, cfg).scores.sum().item()

    run(items[: cfg.batch_size])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run(items)
    dt = time.perf_counter() - t0
    out = {
        # load + hash + pass measured, in this process (the hash cached by an earlier load or not)
        "engine_load_s": round(load_s, 1),
        "engine_hash_was_cached": cached,
        "engine_prompts": len(items),
        "engine_prompts_per_s": round(len(items) / dt, 2),
        "engine_pass_size": cfg.batch_size,
        "engine_peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else None,
    }
    return out  # the model goes with this frame: the caller frees the GPU memory


def fidelity(model: str, device: str, rows: list[tuple[str, str]], n: int) -> dict:
    """bf16 against fp32 on the same prompts: the scaled pass alone in bf16, and bf16 weights."""
    from dataclasses import replace

    import torch

    from indexer.attribution.ig import attribute_stacked

    def scores(att, cfg) -> tuple:
        res = attribute_stacked(att.lm.model, att.lm.adapter, items, cfg)
        return res.scores.flatten(1).float().cpu(), res.p_gold.double().cpu(), res.gold_rank.cpu()

    full = _attributor(_options(model, device, "fp32"), torch.float32)
    items = _encoded(full, _spread(rows, n))
    ref = scores(full, full.cfg)
    modes = {"bf16 scaled pass, fp32 weights": scores(full, replace(full.cfg, dtype=torch.bfloat16))}
    del full
    low = _attributor(_options(model, device, "bf16"), torch.bfloat16)  # bf16 weights, on a CPU too
    modes["bf16 weights"] = scores(low, low.cfg)
    out = {"fidelity_prompts": len(items)}
    top_ref = ref[0].topk(20, dim=1).indices
    for name, (s, p, r) in modes.items():
        top = s.topk(20, dim=1).indices
        overlap = [len(set(a.tolist()) & set(b.tolist())) / 20 for a, b in zip(top_ref, top)]
        rel = ((p - ref[1]).abs() / ref[1].clamp_min(1e-30)).sort().values
        out[name] = {
            "top20_agreement": round(sum(overlap) / len(overlap), 4),
            "p_gold_rel_diff_median": float(f"{rel[len(rel) // 2]:.3g}"),
            "p_gold_rel_diff_max": float(f"{rel[-1]:.3g}"),
            "same_top1": round(float(((r == 1) == (ref[2] == 1)).double().mean()), 4),  # known by both or neither
            "max_abs_score_diff": float(f"{(s - ref[0]).abs().max():.3g}"),
        }
    del low
    _free()
    return out


class GpuMemory:
    """Peak memory used on each visible GPU, read from nvidia-smi every `every` seconds."""

    def __init__(self, every: float = 0.5) -> None:
        self.every, self.peak, self._stop = every, {}, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        query = ["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"]
        while not self._stop.wait(self.every):
            try:
                lines = subprocess.run(query, capture_output=True, text=True, timeout=10).stdout.splitlines()
            except (OSError, subprocess.SubprocessError):
                continue
            for line in lines:
                i, used = (int(v) for v in line.split(","))
                self.peak[i] = max(self.peak.get(i, 0), used)

    def __enter__(self) -> GpuMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def child(args: argparse.Namespace) -> None:
    """One indexing measurement in this process (the GPUs it sees are the ones it uses)."""
    from atlas.db.store import Store

    ns = argparse.Namespace(
        relations=None,
        limit_per_relation=args.limit,
        device=args.device,
        precision=args.precision,
        batch_size=None,
        facts_per_item=args.facts_per_item,
        steps=20,
        time_box=args.time_box,
    )
    store = Store(args.db_url)
    with GpuMemory() as mem:
        row = measure(store, ns, args.model_dir, "auto")
    row["peak_gpu_mib"] = [mem.peak[i] for i in sorted(mem.peak)]
    print("ROW " + json.dumps(row), flush=True)


def index_in_child(args: argparse.Namespace, model_dir: Path, url: str, gpus: int) -> dict:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(gpus)]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(ids[:gpus]))
    cmd = [sys.executable, __file__, "--child", "--model-dir", str(model_dir), "--db-url", url]
    cmd += ["--limit", str(args.limit), "--precision", args.precision, "--device", args.device]
    cmd += ["--facts-per-item", str(args.facts_per_item)] if args.facts_per_item else []
    cmd += ["--time-box", str(args.time_box)] if args.time_box else []
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    rows = [line[4:] for line in proc.stdout.splitlines() if line.startswith("ROW ")]
    if proc.returncode or not rows:
        raise SystemExit(f"indexing on {gpus} GPU(s) failed:\n{proc.stderr[-4000:]}")
    return json.loads(rows[-1])


def record(row: dict, args: argparse.Namespace) -> None:
    """Print one measurement and append it to --out, with date, machine, git and command."""
    import platform

    import torch

    from atlas.model.cpu import cpu_name, cpuinfo_text

    gpu = f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}, " if torch.cuda.is_available() else ""
    row = dict(
        row,
        date=time.strftime("%Y-%m-%d %H:%M"),
        machine=f"{gpu}{cpu_name(cpuinfo_text())} ({platform.machine()}, {os.cpu_count()} cpus)",
        db=args.db,
        precision=args.precision,
        git=git_sha(),
        label=args.label,
        command="python3 bench/scale.py " + " ".join(sys.argv[1:]),
    )
    print(json.dumps(row), flush=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="smollm2,llama-1b,llama-8b", help=f"comma-separated, of {list(SHAPES)}")
    ap.add_argument("--model", help="a model spec instead of random shapes (e.g. smollm2, for --fidelity)")
    ap.add_argument("--tokenizer", help="a directory holding the SmolLM2 tokenizer (random shapes)")
    ap.add_argument("--root", default="/tmp/kn-scale", help="where the random models and databases live")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--limit", type=int, default=24, help="PARAREL facts per relation (24: 5,136 prompts)")
    ap.add_argument("--db", default="duckdb", help="duckdb | postgres (embedded) | a postgresql+psycopg:// URL")
    ap.add_argument("--gpus", default="1", help="GPU counts to index with, one child run each ('' for none)")
    ap.add_argument("--engine-prompts", type=int, default=512, help="(0: no engine-alone measurement)")
    ap.add_argument("--fidelity", type=int, default=0, help="prompts of the bf16-vs-fp32 comparison (0: none)")
    ap.add_argument("--facts-per-item", type=int)
    ap.add_argument("--time-box", type=float)
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results.jsonl"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--db-url", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    rows = subset_rows(args.limit)
    dbs = Databases(args.db, root) if args.gpus else None
    for shape in [args.model] if args.model else args.shapes.split(","):
        t0 = time.perf_counter()
        model = args.model or str(build(shape, args.tokenizer, root))
        base = {"bench": "scale", "shape": shape, "prompts_in_subset": len(rows), "build_s": time.perf_counter() - t0}
        if args.fidelity:
            record(dict(base, **fidelity(model, args.device, rows, args.fidelity)), args)
        measure_engine = args.gpus and args.engine_prompts
        engine = engine_alone(model, args.device, rows, args.precision, args.engine_prompts) if measure_engine else {}
        _free()
        first = None
        for gpus in [int(g) for g in args.gpus.split(",") if g]:
            store = dbs.fresh(f"{Path(shape).name.replace('-', '_')}_{gpus}")
            url = store.url
            store.dispose()
            row = {**base, **engine, **index_in_child(args, Path(model), url, gpus), "gpus": gpus, "bench": "scale"}
            if engine:
                row["indexer_vs_engine"] = round(row["steady_prompts_per_s"] / gpus / engine["engine_prompts_per_s"], 3)
            row["projected_pararel_s"] = round(row["startup_s"] + PARAREL_L2R / row["steady_prompts_per_s"], 1)
            first = first or row
            row["scaling_steady"] = round(row["steady_prompts_per_s"] / first["steady_prompts_per_s"], 3)
            row["scaling_wall"] = round(row["prompts_per_s"] / first["prompts_per_s"], 3)
            record(row, args)


if __name__ == "__main__":
    main()
