"""The batch indexer's entry point: a dataset in, a queryable atlas out.

How a run proceeds (the modules of `indexer.job`):
1. `options`: what was asked; the model, loaded where it runs (`pool`: a worker process reports
   what the run records of it; a CPU run with one worker loads it here), registered in `models`;
   `atlas.db.runs.open_run` finds or creates the run (its `params_key` hashes the model's
   weights, the dataset, the selection and every parameter that changes results) with its work
   items (batches of facts of one relation);
2. `pool` runs the model (a thread here, or worker processes: one per GPU), `loop` claims items
   under leases, feeds them to the pool and writes each item's prompt outputs and kept scores
   together with its `done` mark in ONE transaction;
3. `finalize`: when the last item of a relation is done, its knowledge neurons are refined
   (relation-adaptive p) from the STORED coarse sets and replace any earlier ones;
4. when every relation is finalised the run is `done`.

Killing the process at any point loses at most the items in flight; running the same command
again resumes (claims skip done items, expired leases come back, unfinalised relations are
finalised), so the rows end up exactly as an uninterrupted run writes them. On PostgreSQL any
number of `atlas index` processes, on any number of machines, share one run through the leases.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from atlas.db.models import ModelInfo
from atlas.db.results import run_prompt_total, run_prompts_done
from atlas.db.retry import with_retries
from atlas.db.runs import Run, RunCounts, RunSpec, add_stats, check_selection, get_run, open_run, run_counts
from atlas.db.store import Store
from atlas.db.workqueue import WorkQueue
from atlas.errors import InputError
from atlas.model.cpu import check_cpu_precision
from atlas.model.loading import check_device
from indexer.job.attributor import (
    CODE_VERSION,
    Attributor,
    check_layers,
    load_for_index,
    result_params,
    weights_dtype,
)
from indexer.job.finalize import finish
from indexer.job.loop import Timings, run_loop
from indexer.job.options import IndexOptions, parse_device
from indexer.job.pool import LocalPool, Pool, WorkerPool

Progress = Callable[[int, int, str], None]  # (prompts done, prompts in the run, current relation)


@dataclass
class IndexSummary:
    run: Run
    counts: RunCounts
    created: bool
    wall_s: float
    timings: Timings
    workers: int
    pending_elsewhere: int = 0  # items other processes still hold (multi-machine runs)
    pass_size: int | None = None  # prompts per attribution pass (None: no item was attributed)
    worker_start_s: tuple[float, ...] = ()  # each model worker's start-up (load, hash, pass measured)

    @property
    def prompts_per_s(self) -> float:
        return self.timings.prompts / self.wall_s if self.wall_s > 0 else 0.0


def n_workers(opts: IndexOptions) -> int:
    """Model worker processes: `auto` is one per visible GPU (one on a CPU)."""
    if opts.workers == "auto":
        return max(1, torch.cuda.device_count()) if opts.on_gpu() else 1
    n = int(opts.workers)
    if n < 1:
        raise InputError(f"--workers must be >= 1 or auto, got {n}")
    return n


def index(store: Store, opts: IndexOptions, on_progress: Progress = lambda done, total, relation: None) -> IndexSummary:
    """Index `opts.dataset` with `opts.model` into `store`: create or resume the run, attribute
    every pending item, finalise relations, and return counts and timings.

    On DuckDB the file is held open from the start (before the model loads), so a second writer
    is refused at once with `DatabaseBusy`, whenever it starts."""
    t_start = time.perf_counter()
    check_device(parse_device(opts.device))
    check_cpu_precision(opts.precision, opts.device)
    n = n_workers(opts)
    with store.kept_open():
        with_retries(lambda: check_selection(store, opts.dataset, opts.relations), what="checking the selection")
        # a GPU or several workers: model processes, started now so that they load while we set up
        pool: Pool | None = WorkerPool(opts, n) if n > 1 or opts.on_gpu() else None
        try:
            pool = pool or LocalPool(Attributor(load_for_index(opts.model, opts.device, weights_dtype(opts)), opts))
            ready = pool.ready()
            check_layers(opts.layers, ready.model)
            return _index(store, opts, on_progress, ready.model, not ready.masked, pool, t_start)
        finally:
            if pool is not None:
                pool.close()


def _open(store: Store, opts: IndexOptions, model: ModelInfo, causal: bool) -> tuple[Run, bool, WorkQueue]:
    spec = RunSpec(
        model,
        opts.dataset,
        tuple(opts.relations) if opts.relations else None,
        opts.limit_per_relation,
        causal,
        result_params(opts),
        CODE_VERSION,
    )
    run, created = with_retries(lambda: open_run(store, spec, opts.run_name, opts.item_facts()), what="opening the run")
    queue = WorkQueue(store, run.id, lease_s=opts.lease_s)
    if store.backend == "duckdb":  # one process writes a DuckDB file: a claim found now belongs to a dead one
        with_retries(queue.reset_claims, what="resetting claims of a dead process")
    return run, created, queue


def _index(
    store: Store, opts: IndexOptions, on_progress: Progress, model: ModelInfo, causal: bool, pool: Pool, t_start: float
) -> IndexSummary:
    timings = Timings()
    with timings.db():
        run, created, queue = _open(store, opts, model, causal)
        total = with_retries(lambda: run_prompt_total(store, run.id, causal), what="counting prompts")
        seen = [with_retries(lambda: run_prompts_done(store, run.id), what="counting prompts")]
    left, pass_size = 0, None
    if run.status != "done":
        on_progress(seen[0], total, "")

        def on_item(result) -> None:
            seen[0] += len(result.outputs)
            on_progress(seen[0], total, result.item.relation_id)

        run_loop(store, queue, pool, causal, timings, on_item)
        with timings.db():
            left = finish(store, queue)
        stats = {"sessions": 1, "wall_s": time.perf_counter() - t_start, **timings.as_stats()}
        with_retries(lambda: add_stats(store, run.id, stats), what="saving run stats")
        pass_size = pool.pass_size
    run = with_retries(lambda: get_run(store, run.id), what="reading the run")
    counts = with_retries(lambda: run_counts(store, run.id), what="counting results")
    wall = time.perf_counter() - t_start
    return IndexSummary(run, counts, created, wall, timings, pool.n, left, pass_size, tuple(pool.starts))
