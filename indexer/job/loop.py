"""The indexing loop: claim items, hand them to the model, write what comes back.

One loop for every layout (`indexer.job.pool`: the model on a thread, or in worker processes).
This process does all the database work; the model only computes:

1. claim and read items ahead (two per worker), renewing the lease of everything held;
2. take each finished item and write its rows together with its `done` mark (one transaction);
   an item whose lease was lost meanwhile is dropped, its redo belongs to another worker;
3. finalise a relation whose last item was written, on a thread of its own: refining a
   1,000-fact relation takes seconds, longer than the items claimed ahead last, and the model
   would sit idle meanwhile.

When nothing is claimable but items remain (leased by workers of other `atlas index` processes),
it waits and retries: if those workers died, their leases expire and this one redoes their items.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from atlas.db.results import BatchResult, item_prompts, write_batch
from atlas.db.retry import with_retries
from atlas.db.store import Store
from atlas.db.workqueue import LeaseLost, WorkItem, WorkQueue
from indexer.job.attributor import Rows
from indexer.job.finalize import finalize_if_complete
from indexer.job.pool import Pool

T = TypeVar("T")
log = logging.getLogger("atlas.index")


@dataclass
class Timings:
    """Where the time went: the model (encoding + attribution) vs the database (claims, reads, writes)."""

    model_s: float = 0.0
    db_s: float = 0.0  # busy time of database work (it overlaps the model's work)
    wait_s: float = 0.0  # time the model sat waiting for the database
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
        return {
            "model_s": self.model_s,
            "db_s": self.db_s,
            "db_wait_s": self.wait_s,
            "prompts": self.prompts,
            "items": self.items,
        }


def retry(fn: Callable[[], T], what: str) -> T:
    return with_retries(fn, what=what)


class Leases:
    """Renews, every third of the lease, the lease of every item this process holds - the ones
    being attributed AND the ones claimed ahead. (Renewing only the current one let a prefetched
    item's lease run out on a slow CPU, and the item was then claimed a second time.)"""

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
                _quietly(lambda i=item: self.queue.renew(i))  # a missed beat only risks a harmless redo

    def __enter__(self) -> Leases:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for item in list(self.held.values()):  # whatever we still hold goes back to the queue
            _quietly(lambda i=item: self.queue.release(i))


def _quietly(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - leases expire by themselves
        pass


def rows_of(store: Store, item: WorkItem, causal: bool) -> Rows:
    """(prompt_id, text, object) of the item's prompts the model can read."""
    return [(int(r.prompt_id), r.text, r.object) for r in item_prompts(store, item.fact_ids, causal)]


class _Finalizer:
    """Finalises relations on a thread of its own; `drain` waits and re-raises what it raised."""

    def __init__(self, store: Store, queue: WorkQueue, timings: Timings) -> None:
        self.store, self.queue, self.timings = store, queue, timings
        self.pending: list[Future] = []
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="atlas-finalize")

    def submit(self, relation_id: str) -> None:
        self.pending.append(self.executor.submit(self._run, relation_id))
        while self.pending and self.pending[0].done():
            self.pending.pop(0).result()

    def _run(self, relation_id: str) -> None:
        with self.timings.db():
            retry(lambda: finalize_if_complete(self.store, self.queue, relation_id), f"finalising {relation_id}")

    def drain(self) -> None:
        while self.pending:
            self.pending.pop(0).result()

    def close(self) -> None:
        self.executor.shutdown(wait=True)


def run_loop(
    store: Store,
    queue: WorkQueue,
    pool: Pool,
    causal: bool,
    timings: Timings,
    on_item: Callable[[BatchResult], None] = lambda r: None,
) -> None:
    """Index every item of the queue that is left, through `pool` (see the module docstring)."""
    opts = pool.opts
    in_flight: dict[int, WorkItem] = {}
    finalizer = _Finalizer(store, queue, timings)

    def feed() -> bool:
        if opts.stopped():
            return False
        with timings.db():
            item = retry(queue.claim, "claiming a work item")
            if item is None:
                return False
            leases.add(item)
            rows = retry(lambda: rows_of(store, item, causal), f"reading item {item.item_id}")
        pool.submit(item, rows)
        in_flight[item.item_id] = item
        return True

    try:
        with Leases(queue) as leases:
            while True:
                while len(in_flight) < 2 * pool.n and feed():
                    pass
                if not in_flight:
                    finalizer.drain()
                    if opts.stopped() or retry(queue.remaining, "counting items left") == 0:
                        return
                    time.sleep(min(5.0, queue.lease_s / 4))
                    continue
                got = pool.result()
                if got is None:
                    continue
                result, waited = got
                timings.wait_s += waited
                del in_flight[result.item.item_id]
                if _write(store, queue, result, timings):
                    finalizer.submit(result.item.relation_id)
                    on_item(result)
                leases.discard(result.item)
    finally:
        finalizer.close()


def _write(store: Store, queue: WorkQueue, result: BatchResult, timings: Timings) -> bool:
    """Write one item's rows with its done mark; False (nothing written) when its lease was lost."""
    with timings.db():
        try:
            retry(lambda: write_batch(store, queue, result), f"writing item {result.item.item_id}")
        except LeaseLost as exc:
            log.warning("%s: result dropped", exc)
            return False
    timings.model_s += result.model_s
    timings.prompts += len(result.outputs)
    timings.items += 1
    return True
