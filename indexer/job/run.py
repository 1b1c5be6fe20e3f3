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

Processes: on a CPU with one worker everything runs in this process (the database work on a
thread, overlapping the model). On a GPU, or with several workers, the model runs in worker
processes (one per GPU) that this process feeds and whose results it writes (`WorkerPool`,
`pool_loop`): the database work then never competes with the model for the interpreter lock, and
a DuckDB file has its one writer. On PostgreSQL any number of such `atlas index` processes, on
any number of machines, share one run through the leases of the work queue.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
from concurrent.futures import Future, ThreadPoolExecutor
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from atlas.db.datasets import causal_prefix
from atlas.model.loading import LoadedModel, load_model
from atlas.db.models import ModelInfo
from atlas.db.retry import with_retries
from atlas.db.runs import (BatchResult, CoarseTally, LeaseLost, PromptOutput, RelationNeurons, Run, RunCounts, RunSpec, add_stats, check_selection, get_run, item_prompts,
                        mark_done, open_run, relation_facts, relation_tallies, run_counts, run_prompt_total, run_prompts_done,
                        write_batch, write_relation)
from atlas.model.adapters import model_class_name
from atlas.db.store import Store
from atlas.db.workqueue import DEFAULT_LEASE_S, WorkItem, WorkQueue
from indexer.attribution import refine
from atlas.model.encode import encode_causal, encode_masked
from indexer.attribution.sparse import sparse_rows
from indexer.attribution.ig import IGConfig, PromptItem, attribute_stacked, default_batch_size

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
    batch_size: int | None = None  # prompts per attribution pass (None: default_batch_size, from memory on a GPU)
    facts_per_item: int | None = None  # facts per work item, the unit of claiming, writing and redoing (None: 8 on
    # a CPU, 96 on a GPU, where an item must hold enough prompts to fill large passes)
    lease_s: int = DEFAULT_LEASE_S
    stop_at: float | None = None  # time.time() after which no new item is claimed (time-boxed benchmarks)

    def stopped(self) -> bool:
        return self.stop_at is not None and time.time() >= self.stop_at

    def result_params(self) -> dict[str, Any]:
        return {"method": "ig", "steps": self.steps, "rule": "left", "answer": "joint", "precision": self.precision,
                "coarse_t": refine.COARSE_T, "score_ratio": refine.SPARSE_RATIO, "score_cap": self.score_cap,
                "min_prompts": refine.MIN_PROMPTS, "p_start": refine.P_START, "p_step": refine.P_STEP}

    def item_facts(self) -> int:
        return self.facts_per_item or (96 if self.device.startswith("cuda") else 8)

    def ig_config(self, adapter: Any = None) -> IGConfig:
        dtype = PRECISIONS[self.precision]
        return IGConfig(steps=self.steps, batch_size=self.batch_size or default_batch_size(self.device, adapter, self.steps, dtype),
                        dtype=dtype)


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
    pass_size: int | None = None  # prompts per attribution pass (None: no item was attributed)

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
        self.cfg = opts.ig_config(lm.adapter)
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
        result = BatchResult(item=item, outputs=[])
        if todo:
            # reduced on the model's device: per prompt only its outputs and kept scores come back
            res = attribute_stacked(self.lm.model, self.lm.adapter, [p for _, p in todo], self.cfg)
            finite = torch.isfinite(res.scores).flatten(1).all(1) & torch.isfinite(res.p_gold)
            pi, result.score_layer, result.score_neuron, result.score_value = sparse_rows(res.scores[finite], self.opts.score_cap)
            top = res.scores.flatten(1).amax(1).tolist()
            ok_ids: list[int] = []
            for (prompt_id, pitem), fin, p_gold, rank, mx in zip(todo, finite.tolist(), res.p_gold.tolist(),
                                                                  res.gold_rank.tolist(), top):
                if fin:
                    ok_ids.append(prompt_id)
                    outputs[prompt_id] = PromptOutput(prompt_id, "ok", None, p_gold, int(rank) - 1, mx, len(pitem.answer_ids))
                else:
                    outputs[prompt_id] = PromptOutput(prompt_id, "skipped", "attribution is not finite (overflow)",
                                                      n_answer_tokens=len(pitem.answer_ids))
            result.score_prompt = np.array(ok_ids, np.int64)[pi]
        result.outputs = [outputs[r[0]] for r in rows]
        result.model_s = time.perf_counter() - t0
        return result


# --- the database side -------------------------------------------------------------------------

def _retry(fn: Callable[[], T], what: str) -> T:
    return with_retries(fn, what=what)


def _fact_tally(t: CoarseTally | None) -> refine.FactTally:
    """The store's tally of a fact (None: no ok prompt) as the refiner takes it."""
    if t is None:
        return refine.tally([])
    return refine.FactTally(t.n_prompts, t.layers, t.neurons, t.counts, t.sums)


def finalize_relation(store: Store, run_id: int, relation_id: str) -> RelationNeurons:
    """Refine the relation's knowledge neurons from its stored coarse sets and store them."""
    fact_ids = relation_facts(store, run_id, relation_id)
    tallies = relation_tallies(store, run_id, relation_id, refine.COARSE_T)
    res = refine.refine_tallies([_fact_tally(tallies.get(f)) for f in fact_ids])
    rel = RelationNeurons(relation_id, [], [], [], [], [], float(res.p), float(res.mean_neurons), len(fact_ids))
    for fact_id, neurons in zip(fact_ids, res.facts):
        for n in neurons:
            rel.fact_id.append(fact_id), rel.layer.append(n.layer), rel.neuron.append(n.neuron)
            rel.score.append(n.mean_score), rel.n_prompts.append(n.n_prompts)
    write_relation(store, run_id, rel)
    return rel


def _finalize_if_complete(store: Store, queue: WorkQueue, relation_id: str) -> None:
    for prog in queue.progress():
        if prog.relation_id == relation_id and prog.complete and not prog.finalized:
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


def _finalize_relation_of(store: Store, queue: WorkQueue, result: BatchResult, timings: Timings) -> None:
    """Finalise the relation of a written item if that was its last item."""
    relation = result.item.relation_id
    with timings.db():
        _retry(lambda: _finalize_if_complete(store, queue, relation), f"finalising {relation}")


def _store_result(store: Store, queue: WorkQueue, result: BatchResult, timings: Timings,
                  finalize: Callable[[BatchResult], Any]) -> bool:
    """Write one item's result, then hand it to ``finalize`` (which finalises its relation if that
    was its last item: `work_loop` right away, `pool_loop` on a thread of its own)."""
    with timings.db():
        try:
            _retry(lambda: write_batch(store, queue, result), f"writing item {result.item.item_id}")
        except LeaseLost:
            return False
    finalize(result)
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
        if _store_result(store, queue, result, timings, lambda r: _finalize_relation_of(store, queue, r, timings)):
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


def _compute_worker(index: int, n: int, opts: IndexOptions, tasks: Any, results: Any) -> None:
    """A worker process: attributes the items it is handed and hands the results back.

    Inside a pinned worker the one visible GPU is `cuda`. A CPU worker gets its share of the cores
    (N processes each spinning up one OpenMP thread per core oversubscribe the CPU); a GPU worker
    gets two, as its host-side work is small and idle OpenMP threads spin on cores the writer
    needs. The time spent waiting for the next item (the database side being slower) comes back
    with each result."""
    try:
        cuda = opts.device.startswith("cuda")
        torch.set_num_threads(2 if cuda else max(1, (os.cpu_count() or 1) // n))
        attributor = Attributor(load(opts.model, "cuda" if cuda else opts.device, opts.precision), opts)
        results.put(("ready", index, attributor.cfg.batch_size))
        t_idle = time.perf_counter()
        while (task := tasks.get()) is not None:
            waited = time.perf_counter() - t_idle
            results.put(("result", attributor.compute(*task), waited))
            t_idle = time.perf_counter()
    except BaseException:
        results.put(("error", index, traceback.format_exc()))


class WorkerPool:
    """``n`` model processes (one per GPU with ``--workers auto``) fed by this process, which does
    all the database work. Why processes: the model side launches thousands of GPU kernels per
    pass from Python; sharing the interpreter lock with the database thread slowed it by a quarter
    (bench/item_profile.py --busy-thread), and a DuckDB file admits one writer anyway.

    The processes start (and load the model) as soon as the pool is made, so their start-up
    overlaps the run's set-up in this process."""

    def __init__(self, opts: IndexOptions, n: int) -> None:
        ctx = mp.get_context("spawn")
        self.opts, self.n, self.used = opts, n, False
        self.pass_size: int | None = None  # prompts per pass, as the first ready worker reports it
        self.tasks, self.results = ctx.Queue(), ctx.Queue()
        self.procs = [ctx.Process(target=_compute_worker, args=(i, n, opts, self.tasks, self.results), daemon=True)
                      for i in range(n)]
        _start_pinned(self.procs, opts)

    def submit(self, item: WorkItem, rows: list[tuple[int, str, str]]) -> None:
        self.used = True
        self.tasks.put((item, rows))

    def result(self, timeout: float = 5.0) -> tuple[BatchResult, float] | None:
        """The next finished item and how long its worker had waited for it; None on timeout."""
        while True:
            try:
                kind, payload, extra = self.results.get(timeout=timeout)
            except queue_mod.Empty:
                if not any(p.is_alive() for p in self.procs):
                    raise IndexingError("every worker process died; committed batches are kept, "
                                        "run the same command again to resume") from None
                return None
            if kind == "error":
                raise IndexingError(f"worker {payload} failed:\n{extra}")
            if kind == "result":
                return payload, extra
            self.pass_size = self.pass_size or extra  # "ready"

    def close(self) -> None:
        """Stop the workers (at once when they were never used: nothing of theirs to finish)."""
        for _ in self.procs:
            self.tasks.put(None)
        for p in self.procs:
            p.join(timeout=10 if self.used else 0)
            if p.is_alive():
                p.kill()


def pool_loop(store: Store, queue: WorkQueue, pool: WorkerPool, causal: bool, timings: Timings,
              on_item: Callable[[BatchResult], None] = lambda r: None) -> None:
    """`work_loop` for model processes: claim and read items ahead (two per worker), write each
    result as it comes back, renew the leases of everything handed out. Like `work_loop`, when
    nothing is claimable but items remain (leased by workers of other `atlas index` processes),
    it waits and retries, redoing the items of those that died once their leases expire.

    Relations are finalised on a thread of their own: refining a 1,000-fact relation takes
    seconds, longer than the items claimed ahead last, and the GPUs would sit idle meanwhile."""
    opts = pool.opts
    in_flight: dict[int, WorkItem] = {}
    finalizing: list[Future] = []

    def finalize(result: BatchResult) -> None:
        finalizing.append(finalizer.submit(_finalize_relation_of, store, queue, result, timings))
        while finalizing and finalizing[0].done():
            finalizing.pop(0).result()  # raises what the finaliser raised

    def feed() -> bool:
        if opts.stopped():
            return False
        with timings.db():
            item = _retry(queue.claim, "claiming a work item")
            if item is None:
                return False
            leases.add(item)
            rows = _retry(lambda: _rows(store, item, causal), f"reading item {item.item_id}")
        pool.submit(item, rows)
        in_flight[item.item_id] = item
        return True

    with _Leases(queue) as leases, ThreadPoolExecutor(max_workers=1, thread_name_prefix="atlas-finalize") as finalizer:
        while True:
            while len(in_flight) < 2 * pool.n and feed():
                pass
            if not in_flight:
                while finalizing:
                    finalizing.pop(0).result()
                if opts.stopped() or _retry(queue.remaining, "counting items left") == 0:
                    return
                time.sleep(min(5.0, queue.lease_s / 4))
                continue
            got = pool.result()
            if got is None:
                continue
            result, waited = got
            timings.wait_s += waited
            del in_flight[result.item.item_id]
            if _store_result(store, queue, result, timings, finalize):
                on_item(result)
            leases.discard(result.item)


def _n_workers(opts: IndexOptions) -> int:
    if opts.workers == "auto":
        return max(1, torch.cuda.device_count()) if opts.device.startswith("cuda") else 1
    n = int(opts.workers)
    if n < 1:
        raise IndexingError(f"--workers must be >= 1 or auto, got {n}")
    return n


# --- the entry point ---------------------------------------------------------------------------

Progress = Callable[[int, int, str], None]  # (prompts done, prompts in the run, current relation)


def index(store: Store, opts: IndexOptions, on_progress: Progress = lambda done, total, relation: None) -> IndexSummary:
    """Index ``opts.dataset`` with ``opts.model`` into ``store``: create or resume the run, attribute
    every pending item, finalise relations, and return counts and timings."""
    t_start = time.perf_counter()
    n = _n_workers(opts)
    _retry(lambda: check_selection(store, opts.dataset, opts.relations), "checking the selection")
    # a GPU or several workers: model processes, started now so that they load while we set up
    pool = WorkerPool(opts, n) if n > 1 or opts.device.startswith("cuda") else None
    try:
        lm = load(opts.model, "cpu" if pool else opts.device, opts.precision)
        with _keep_open(store):
            return _index(store, opts, on_progress, lm, pool, t_start)
    finally:
        if pool:
            pool.close()


def _index(store: Store, opts: IndexOptions, on_progress: Progress, lm: LoadedModel, pool: WorkerPool | None,
           t_start: float) -> IndexSummary:
    causal = not lm.adapter.is_masked_lm
    timings = Timings()
    with timings.db():
        spec = RunSpec(model_info(lm), opts.dataset, tuple(opts.relations) if opts.relations else None, opts.limit_per_relation,
                       causal, opts.result_params(), CODE_VERSION)
        run, created = _retry(lambda: open_run(store, spec, opts.run_name, opts.item_facts()), "opening the run")
        queue = WorkQueue(store, run.id, lease_s=opts.lease_s)
        if store.backend == "duckdb":
            _retry(queue.reset_claims, "resetting claims of a dead process")
        total = _retry(lambda: run_prompt_total(store, run.id, causal), "counting prompts")
        done = _retry(lambda: run_prompts_done(store, run.id), "counting prompts")
    left, pass_size = 0, None
    if run.status != "done":
        on_progress(done, total, "")
        seen = [done]

        def on_item(result: BatchResult) -> None:
            seen[0] += len(result.outputs)
            on_progress(seen[0], total, result.item.relation_id)

        if pool is None:
            attributor = Attributor(lm, opts)
            pass_size = attributor.cfg.batch_size
            work_loop(store, queue, attributor, timings, on_item)
        else:
            pool_loop(store, queue, pool, causal, timings, on_item)
            pass_size = pool.pass_size
        left = _finish(store, queue, timings)
    wall = time.perf_counter() - t_start
    if run.status != "done":
        stats = {"sessions": 1, "wall_s": wall, **timings.as_stats()}
        _retry(lambda: add_stats(store, run.id, stats), "saving run stats")
    run = _retry(lambda: get_run(store, run.id), "reading the run")
    counts = _retry(lambda: run_counts(store, run.id), "counting results")
    return IndexSummary(run, counts, created, wall, timings, pool.n if pool else 1, left, pass_size)
