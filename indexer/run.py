"""The batch indexer: a dataset in, a queryable atlas out.

The only indexer module that imports `atlas`; it wires the attribution engine (`indexer.ig`),
the refining rules (`indexer.refine`) and the store (`atlas.runs`, `atlas.workqueue`).

How a run proceeds:
1. load the model, register it (`models`), find or create the run (`runs.params_key` = hash of
   model weights + dataset + selection + parameters) with its work items (batches of facts);
2. workers claim items, attribute every usable prompt, and write the item's prompt outputs and
   sparse scores together with its `done` mark in ONE transaction;
3. when the last item of a relation is done, the relation is refined (relation-adaptive p) from
   the STORED coarse sets and its knowledge neurons replace any earlier ones in one transaction;
4. when every relation is finalised the run is `done`.

Killing the process at any point loses at most the items in flight; running the same command
again resumes (claims skip done items, expired leases come back, unfinalised relations are
finalised), so the rows end up exactly as an uninterrupted run writes them.

Workers: on PostgreSQL every worker process claims and writes for itself (so workers on other
machines can join the same run). On DuckDB only one process may write the file: GPU worker
processes compute and hand their results back over a multiprocessing queue to the writer.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import sys
import queue as queue_mod
from concurrent.futures import Future, ThreadPoolExecutor
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np
import torch

from atlas.datasets import causal_prefix
from atlas.models import LoadedModel, load_model
from atlas.registry import ModelInfo
from atlas.retry import with_retries
from atlas.runs import (BatchResult, LeaseLost, PromptOutput, RelationNeurons, Run, RunCounts, RunSpec, add_stats, check_selection, get_run, item_prompts,
                        mark_done, open_run, relation_coarse, relation_facts, run_counts, run_prompt_total, run_prompts_done,
                        write_batch, write_relation)
from atlas.adapters import model_class_name
from atlas.store import Store
from atlas.workqueue import DEFAULT_LEASE_S, WorkItem, WorkQueue
from indexer import refine
from indexer.encode import encode_causal, encode_masked
from indexer.sparse import sparse_rows
from indexer.ig import IGConfig, PromptItem, attribute, default_batch_size

T = TypeVar("T")

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CODE_VERSION = "ig-1"


class IndexingError(Exception):
    """A problem the user can fix (unknown model, bad option, a worker that failed)."""


@dataclass(frozen=True)
class IndexOptions:
    """One `atlas index` invocation. Fields marked (result) enter the run's params_key."""

    model: str
    dataset: str
    relations: tuple[str, ...] | None = None  # (result)
    limit_per_relation: int | None = None  # (result)
    steps: int = 20  # (result)
    precision: str = "fp32"  # (result) fp32 | bf16 | fp16: the scaled pass's precision (see IGConfig.dtype)
    score_cap: int = 50  # (result) stored scores per prompt beyond the coarse ones
    device: str = "cpu"
    workers: int | str = 1  # a number, or "auto": one per visible GPU
    run_name: str | None = None
    batch_size: int | None = None  # prompts per attribution pass (None: default_batch_size(device))
    facts_per_item: int = 8  # facts per work item (the unit of claiming, writing and redoing)
    lease_s: int = DEFAULT_LEASE_S
    stop_at: float | None = None  # time.time() after which no new item is claimed (time-boxed benchmarks)

    def stopped(self) -> bool:
        return self.stop_at is not None and time.time() >= self.stop_at

    def result_params(self) -> dict[str, Any]:
        return {"method": "ig", "steps": self.steps, "rule": "left", "answer": "joint", "precision": self.precision,
                "coarse_t": refine.COARSE_T, "score_ratio": refine.SPARSE_RATIO, "score_cap": self.score_cap,
                "min_prompts": refine.MIN_PROMPTS, "p_start": refine.P_START, "p_step": refine.P_STEP}

    def ig_config(self) -> IGConfig:
        return IGConfig(steps=self.steps, batch_size=self.batch_size or default_batch_size(self.device),
                        dtype=PRECISIONS[self.precision])


@dataclass
class Timings:
    """Where the time went: the model (encoding + attribution) vs the database (claims, reads, writes)."""

    model_s: float = 0.0
    db_s: float = 0.0  # busy time of database work (it overlaps the model's work: see work_loop)
    wait_s: float = 0.0  # time the model side sat waiting for the database
    prompts: int = 0
    items: int = 0

    @contextmanager
    def db(self):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.db_s += time.perf_counter() - t0

    def as_stats(self) -> dict[str, float]:
        return {"model_s": self.model_s, "db_s": self.db_s, "db_wait_s": self.wait_s, "prompts": self.prompts, "items": self.items}


@dataclass
class IndexSummary:
    run: Run
    counts: RunCounts
    created: bool
    wall_s: float
    timings: Timings
    workers: int
    pending_elsewhere: int = 0  # items other processes still hold (multi-machine runs)

    @property
    def prompts_per_s(self) -> float:
        return self.timings.prompts / self.wall_s if self.wall_s > 0 else 0.0


# --- the model side ----------------------------------------------------------------------------

def load(spec: str, device: str, precision: str) -> LoadedModel:
    if precision not in PRECISIONS:
        raise IndexingError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if spec.startswith(("/", ".", "~")) and not os.path.isdir(os.path.expanduser(spec)):
        raise IndexingError(f"cannot load model {spec!r}: no such directory")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the indexer draws its own bar; a second one garbles it
    try:
        return load_model(spec, device=device)
    except Exception as exc:  # transformers raises OSError/ValueError/... with long texts
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise IndexingError(f"cannot load model {spec!r}: {reason}") from exc


def model_info(lm: LoadedModel) -> ModelInfo:
    return ModelInfo(lm.name, lm.source, model_class_name(lm.model), lm.adapter.n_layers, lm.adapter.n_neurons, lm.sha256)


def _max_len(lm: LoadedModel) -> int | None:
    cfg = lm.model.config
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


class Attributor:
    """Turns a work item's prompt rows into a `BatchResult` (torch side, no database)."""

    def __init__(self, lm: LoadedModel, opts: IndexOptions) -> None:
        self.lm = lm
        self.opts = opts
        self.cfg = opts.ig_config()
        self.causal = not lm.adapter.is_masked_lm
        self.max_len = _max_len(lm)

    def encode(self, text: str, obj: str) -> Any:
        tok = self.lm.tokenizer
        if self.causal:
            return encode_causal(tok, causal_prefix(text), obj, self.max_len)
        return encode_masked(tok, text, obj, self.max_len)

    def compute(self, item: WorkItem, rows: list[tuple[int, str, str]]) -> BatchResult:
        """``rows``: (prompt_id, text, object) of the item's usable prompts."""
        t0 = time.perf_counter()
        outputs: dict[int, PromptOutput] = {}
        todo: list[tuple[int, PromptItem]] = []
        for prompt_id, text, obj in rows:
            enc = self.encode(text, obj)
            if isinstance(enc, str):
                outputs[prompt_id] = PromptOutput(prompt_id, "skipped", enc)
            else:
                todo.append((prompt_id, PromptItem(enc.prompt_ids, enc.answer_ids)))
        attrs = attribute(self.lm.model, self.lm.adapter, [p for _, p in todo], self.cfg) if todo else []
        for (prompt_id, pitem), att in zip(todo, attrs):
            if not (torch.isfinite(att.scores).all() and math.isfinite(att.p_gold)):
                outputs[prompt_id] = PromptOutput(prompt_id, "skipped", "attribution is not finite (overflow)",
                                                  n_answer_tokens=len(pitem.answer_ids))
                continue
            outputs[prompt_id] = PromptOutput(prompt_id, "ok", None, float(att.p_gold), int(att.gold_rank) - 1,
                                              float(att.scores.max()), len(pitem.answer_ids))
        ok = [(pid, att) for (pid, _), att in zip(todo, attrs) if outputs[pid].status == "ok"]
        dense = np.stack([att.scores.numpy() for _, att in ok]) if ok else np.zeros((0, 1, 1), np.float32)
        pi, layer, neuron, value = sparse_rows(dense, self.opts.score_cap)
        ids = np.array([pid for pid, _ in ok], np.int64)
        return BatchResult(
            item=item, outputs=[outputs[r[0]] for r in rows],
            score_prompt=ids[pi], score_layer=layer, score_neuron=neuron, score_value=value,
            model_s=time.perf_counter() - t0)


# --- the database side -------------------------------------------------------------------------

def _retry(fn: Callable[[], T], what: str) -> T:
    return with_retries(fn, what=what)


def finalize_relation(store: Store, run_id: int, relation_id: str) -> RelationNeurons:
    """Refine the relation's knowledge neurons from its stored coarse sets and store them."""
    fact_ids = relation_facts(store, run_id, relation_id)
    coarse = relation_coarse(store, run_id, relation_id, refine.COARSE_T * (1 - 1e-4))  # exact test below
    per_fact = [[refine.coarse_from_triplets(zip(p.layers.tolist(), p.neurons.tolist(), p.scores.tolist()))
                 for p in coarse.get(f, [])] for f in fact_ids]
    res = refine.refine_relation(per_fact)
    rel = RelationNeurons(relation_id, [], [], [], [], [], float(res.p), float(res.mean_neurons), len(fact_ids))
    for fact_id, neurons in zip(fact_ids, res.facts):
        for n in neurons:
            rel.fact_id.append(fact_id), rel.layer.append(n.layer), rel.neuron.append(n.neuron)
            rel.score.append(n.mean_score), rel.n_prompts.append(n.n_prompts)
    write_relation(store, run_id, rel)
    return rel


def _finalize_if_complete(store: Store, queue: WorkQueue, relation_id: str) -> None:
    for prog in queue.progress():
        if prog.relation_id == relation_id and prog.complete:
            finalize_relation(store, queue.run_id, relation_id)


def _finish(store: Store, queue: WorkQueue, timings: Timings) -> int:
    """Finalise every complete relation that is not yet; mark the run done when all are.
    Returns the number of items not yet done (held by other workers)."""
    with timings.db():
        progress = _retry(queue.progress, "reading run progress")
        for prog in progress:
            if prog.complete and not prog.finalized:
                _retry(lambda p=prog: finalize_relation(store, queue.run_id, p.relation_id), f"finalising {prog.relation_id}")
        left = sum(p.n_items - p.n_done for p in progress)
        if left == 0:
            _retry(lambda: mark_done(store, queue.run_id), "marking the run done")
    return left


@contextmanager
def _keep_open(store: Store) -> Iterator[None]:
    """Hold one idle connection for the run on DuckDB: the store opens a connection per transaction,
    and without a live one DuckDB closes (and checkpoints) the file every time - ~10x slower."""
    if store.backend != "duckdb":
        yield
        return
    conn = store.engine.connect()
    try:
        yield
    finally:
        conn.close()


def _rows(store: Store, item: WorkItem, causal: bool) -> list[tuple[int, str, str]]:
    return [(int(r.prompt_id), r.text, r.object) for r in item_prompts(store, item.fact_ids, causal)]


def _store_result(store: Store, queue: WorkQueue, result: BatchResult, timings: Timings) -> bool:
    """Write one item's result and finalise its relation if that was its last item."""
    with timings.db():
        try:
            _retry(lambda: write_batch(store, queue, result), f"writing item {result.item.item_id}")
        except LeaseLost:
            return False
        _retry(lambda: _finalize_if_complete(store, queue, result.item.relation_id), f"finalising {result.item.relation_id}")
    timings.model_s += result.model_s
    timings.prompts += len(result.outputs)
    timings.items += 1
    return True


class _Leases:
    """Renews, every third of the lease, the lease of every item this worker holds - the one being
    attributed AND the one claimed ahead of it. (Renewing only the current one let a prefetched
    item's lease run out on a slow CPU, and the worker then claimed it a second time.)"""

    def __init__(self, queue: WorkQueue) -> None:
        self.queue = queue
        self.held: dict[int, WorkItem] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="atlas-leases")

    def add(self, item: WorkItem) -> None:
        with self._lock:
            self.held[item.item_id] = item

    def discard(self, item: WorkItem) -> None:
        with self._lock:
            self.held.pop(item.item_id, None)

    def _beat(self) -> None:
        while not self._stop.wait(self.queue.lease_s / 3):
            with self._lock:
                items = list(self.held.values())
            for item in items:
                try:
                    self.queue.renew(item)
                except Exception:  # a missed beat only risks a redo, which is harmless
                    pass

    def __enter__(self) -> _Leases:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for item in list(self.held.values()):  # whatever we still hold goes back to the queue
            _release_quietly(self.queue, item)


def work_loop(store: Store, queue: WorkQueue, attributor: Attributor, timings: Timings,
              on_item: Callable[[BatchResult], None] = lambda r: None) -> None:
    """Claim, attribute and write items until the run has none left (one process).

    Database work runs on one background thread, in submission order, so it overlaps the model:
    the next item is claimed and read while the current one is attributed, and results are
    written while the next is attributed. The model side only waits when the database is slower.
    When nothing is claimable but items remain (leased by other workers), it waits and retries:
    if those workers died, their leases expire and this worker redoes their items.
    """
    causal = attributor.causal

    def fetch() -> tuple[WorkItem, list[tuple[int, str, str]]] | None:
        with timings.db():
            item = _retry(queue.claim, "claiming a work item")
            if item is None:
                return None
            leases.add(item)
            return item, _retry(lambda: _rows(store, item, causal), f"reading item {item.item_id}")

    def write(result: BatchResult) -> None:
        if _store_result(store, queue, result, timings):
            on_item(result)
        leases.discard(result.item)

    with _Leases(queue) as leases, ThreadPoolExecutor(max_workers=1, thread_name_prefix="atlas-db") as db:
        writes: list[Future] = []
        nxt = db.submit(fetch)
        try:
            while True:
                cur = _wait(nxt, timings)
                if cur is None:
                    if attributor.opts.stopped():
                        break
                    while writes:
                        _wait(writes.pop(0), timings)
                    if _wait(db.submit(lambda: _retry(queue.remaining, "counting items left")), timings) == 0:
                        return
                    time.sleep(min(5.0, queue.lease_s / 4))
                    nxt = db.submit(fetch)
                    continue
                if attributor.opts.stopped():
                    break
                item, rows = cur
                nxt = db.submit(fetch)
                result = attributor.compute(item, rows)
                writes.append(db.submit(write, result))
                while len(writes) > 2 or (writes and writes[0].done()):
                    _wait(writes.pop(0), timings)
            while writes:
                _wait(writes.pop(0), timings)
        except BaseException:
            nxt.cancel()
            raise


def _wait(fut: Future, timings: Timings) -> Any:
    t0 = time.perf_counter()
    try:
        return fut.result()
    finally:
        timings.wait_s += time.perf_counter() - t0


def _release_quietly(queue: WorkQueue, item: WorkItem) -> None:
    try:
        queue.release(item)
    except Exception:  # the lease will expire anyway
        pass


# --- worker processes --------------------------------------------------------------------------

def _start_pinned(procs: list[Any], opts: IndexOptions) -> None:
    """Start worker i with CUDA_VISIBLE_DEVICES naming only the i-th visible GPU.

    The variable must be in the child's environment when it starts: setting it inside the child
    is too late, because importing transformers already asks torch about CUDA, which fixes the
    visible devices for the life of the process (both workers then share GPU 0).
    """
    if not opts.device.startswith("cuda"):
        for p in procs:
            p.start()
        return
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = before.split(",") if before else [str(i) for i in range(torch.cuda.device_count())]
    try:
        for i, p in enumerate(procs):
            os.environ["CUDA_VISIBLE_DEVICES"] = visible[i % len(visible)]
            p.start()
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


def _worker_device(opts: IndexOptions, n_workers: int) -> str:
    """Inside a pinned worker the one visible GPU is `cuda` (index 0). Each worker also gets its
    share of the CPU cores: N processes each spinning up one OpenMP thread per core oversubscribe
    the CPU, and the CPU-side work of every batch then crawls."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // n_workers))
    return "cuda" if opts.device.startswith("cuda") else opts.device


def _pg_worker(index: int, n: int, url: str, opts: IndexOptions, run_id: int, owner: str) -> None:
    """A PostgreSQL worker process: claims and writes for itself, like a worker on another machine."""
    device = _worker_device(opts, n)
    store = Store(url)
    lm = load(opts.model, device, opts.precision)
    if device == "cuda":
        print(f"worker {index}: CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}", file=sys.stderr, flush=True)
    timings = Timings()
    queue = WorkQueue(store, run_id, owner=f"{owner}/w{index}", lease_s=opts.lease_s)
    work_loop(store, queue, Attributor(lm, opts), timings)
    _retry(lambda: add_stats(store, run_id, {f"worker_{k}": v for k, v in timings.as_stats().items()}), "saving stats")


def _compute_worker(index: int, n: int, opts: IndexOptions, tasks: Any, results: Any) -> None:
    """A DuckDB-mode worker process: computes items it is handed, returns results to the writer."""
    try:
        lm = load(opts.model, _worker_device(opts, n), opts.precision)
        attributor = Attributor(lm, opts)
        while (task := tasks.get()) is not None:
            item, rows = task
            results.put(attributor.compute(item, rows))
    except BaseException:
        results.put(("error", index, traceback.format_exc()))


def _n_workers(opts: IndexOptions) -> int:
    if opts.workers == "auto":
        return max(1, torch.cuda.device_count()) if opts.device.startswith("cuda") else 1
    n = int(opts.workers)
    if n < 1:
        raise IndexingError(f"--workers must be >= 1 or auto, got {n}")
    return n


def _run_pg_workers(store: Store, queue: WorkQueue, opts: IndexOptions, n: int, on_done: Callable[[int], None]) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_pg_worker, args=(i, n, store.url, opts, queue.run_id, queue.owner)) for i in range(n)]
    _start_pinned(procs, opts)
    while any(p.is_alive() for p in procs):
        time.sleep(1.0)
        try:
            on_done(run_prompts_done(store, queue.run_id))
        except Exception:  # progress is cosmetic; the workers report real failures
            pass
    failed = [i for i, p in enumerate(procs) if p.exitcode != 0]
    if failed:
        raise IndexingError(f"worker(s) {failed} failed (exit codes {[procs[i].exitcode for i in failed]}); "
                            "committed batches are kept, run the same command again to resume")


def _run_duckdb_workers(store: Store, queue: WorkQueue, opts: IndexOptions, n: int, causal: bool, timings: Timings,
                        on_item: Callable[[BatchResult], None]) -> None:
    """One writer (this process) feeding ``n`` compute processes; DuckDB allows a single writer."""
    ctx = mp.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_compute_worker, args=(i, n, opts, tasks, results), daemon=True) for i in range(n)]
    _start_pinned(procs, opts)
    in_flight: dict[int, WorkItem] = {}

    def feed() -> bool:
        if opts.stopped():
            return False
        with timings.db():
            item = _retry(queue.claim, "claiming a work item")  # one writer: no claim of anybody else to wait for
            if item is None:
                return False
            tasks.put((item, _retry(lambda: _rows(store, item, causal), f"reading item {item.item_id}")))
        in_flight[item.item_id] = item
        return True

    try:
        for _ in range(2 * n):
            if not feed():
                break
        while in_flight:
            try:
                res = results.get(timeout=5.0)
            except queue_mod.Empty:
                if not any(p.is_alive() for p in procs):
                    raise IndexingError("every worker process died; run the same command again to resume")
                continue
            if isinstance(res, tuple):
                raise IndexingError(f"worker {res[1]} failed:\n{res[2]}")
            del in_flight[res.item.item_id]
            if _store_result(store, queue, res, timings):
                on_item(res)
            feed()
    finally:
        for _ in procs:
            tasks.put(None)
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
        for item in in_flight.values():
            _release_quietly(queue, item)


# --- the entry point ---------------------------------------------------------------------------

Progress = Callable[[int, int, str], None]  # (prompts done, prompts in the run, current relation)


def index(store: Store, opts: IndexOptions, on_progress: Progress = lambda done, total, relation: None) -> IndexSummary:
    """Index ``opts.dataset`` with ``opts.model`` into ``store``: create or resume the run, attribute
    every pending item, finalise relations, and return counts and timings."""
    t_start = time.perf_counter()
    n = _n_workers(opts)
    _retry(lambda: check_selection(store, opts.dataset, opts.relations), "checking the selection")
    lm = load(opts.model, "cpu" if n > 1 else opts.device, opts.precision)
    causal = not lm.adapter.is_masked_lm
    timings = Timings()
    with _keep_open(store):
        return _index(store, opts, on_progress, lm, n, causal, timings, t_start)


def _index(store: Store, opts: IndexOptions, on_progress: Progress, lm: LoadedModel, n: int, causal: bool, timings: Timings,
           t_start: float) -> IndexSummary:
    with timings.db():
        spec = RunSpec(model_info(lm), opts.dataset, tuple(opts.relations) if opts.relations else None, opts.limit_per_relation,
                       causal, opts.result_params(), CODE_VERSION)
        run, created = _retry(lambda: open_run(store, spec, opts.run_name, opts.facts_per_item), "opening the run")
        queue = WorkQueue(store, run.id, lease_s=opts.lease_s)
        if store.backend == "duckdb":
            _retry(queue.reset_claims, "resetting claims of a dead process")
        total = _retry(lambda: run_prompt_total(store, run.id, causal), "counting prompts")
        done = _retry(lambda: run_prompts_done(store, run.id), "counting prompts")
    left = 0
    if run.status != "done":
        on_progress(done, total, "")
        seen = [done]

        def on_item(result: BatchResult) -> None:
            seen[0] += len(result.outputs)
            on_progress(seen[0], total, result.item.relation_id)

        if n == 1:
            work_loop(store, queue, Attributor(lm, opts), timings, on_item)
        elif store.backend == "postgresql":
            _run_pg_workers(store, queue, opts, n, lambda d: on_progress(d, total, f"{n} workers"))
        else:
            _run_duckdb_workers(store, queue, opts, n, causal, timings, on_item)
        left = _finish(store, queue, timings)
    wall = time.perf_counter() - t_start
    if run.status != "done":
        stats = {"sessions": 1, "wall_s": wall, **timings.as_stats()}
        _retry(lambda: add_stats(store, run.id, stats), "saving run stats")
    run = _retry(lambda: get_run(store, run.id), "reading the run")
    counts = _retry(lambda: run_counts(store, run.id), "counting results")
    if n > 1 and store.backend == "postgresql":
        timings = replace(timings, prompts=counts.prompts - done)
    return IndexSummary(run, counts, created, wall, timings, n, left)
