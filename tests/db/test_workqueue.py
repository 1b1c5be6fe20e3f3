"""The work queue's leases: no double claims under concurrency (PostgreSQL, 4 processes), expired
leases come back, a worker that lost its lease cannot mark the item done."""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest
import sqlalchemy as sa

from atlas.db.schema import runs, work_items
from atlas.db.store import Store
from atlas.db.workqueue import WorkQueue, batches, create_items

N_ITEMS = 400


def _make_run(store: Store, n_items: int) -> int:
    with store.begin() as conn:
        run_id = conn.execute(
            runs.insert()
            .values(
                name=f"q{time.time_ns()}",
                model_id=1,
                dataset="d",
                method="ig",
                params="{}",
                params_key="k",
                code_version="0",
                status="running",
            )
            .returning(runs.c.id)
        ).scalar_one()
        create_items(store, conn, run_id, [("P1", [f"f{i}"]) for i in range(n_items)])
    return run_id


def _claimer(url: str, run_id: int, out: mp.Queue) -> None:
    store = Store(url)
    queue = WorkQueue(store, run_id, lease_s=600)
    got = []
    while (item := queue.claim()) is not None:
        got.append(item.item_id)
    out.put(got)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_four_processes_never_claim_the_same_item(store: Store) -> None:
    run_id = _make_run(store, N_ITEMS)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(store.url, run_id, out)) for _ in range(4)]
    for p in procs:
        p.start()
    claims = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    flat = [i for c in claims for i in c]
    assert len(flat) == len(set(flat)) == N_ITEMS  # every item once, none twice
    assert sum(1 for c in claims if c) >= 2  # they really competed


def test_expired_lease_is_reclaimed_and_the_late_worker_cannot_complete(store: Store) -> None:
    run_id = _make_run(store, 1)
    slow = WorkQueue(store, run_id, owner="slow", lease_s=1)
    item = slow.claim()
    assert item is not None and item.attempts == 1
    fast = WorkQueue(store, run_id, owner="fast", lease_s=600)
    assert fast.claim() is None  # leased
    time.sleep(1.5)
    again = fast.claim()
    assert again is not None and again.item_id == item.item_id and again.attempts == 2
    with store.begin() as conn:
        assert not slow.complete(conn, item)  # the lease moved on
        assert fast.complete(conn, again)
    assert fast.claim() is None and fast.counts() == {"done": 1}


def test_release_makes_an_item_pending_again(store: Store) -> None:
    run_id = _make_run(store, 2)
    q = WorkQueue(store, run_id)
    a = q.claim()
    q.release(a)
    with store.begin() as conn:
        status = conn.execute(
            sa.select(work_items.c.status).where(work_items.c.run_id == run_id, work_items.c.item_id == a.item_id)
        ).scalar_one()
    assert status == "pending" and q.claim().item_id == a.item_id


def test_batches_never_span_relations() -> None:
    pairs = [("P1", "a"), ("P1", "b"), ("P1", "c"), ("P2", "d"), ("P3", "e"), ("P3", "f")]
    assert batches(pairs, 2) == [("P1", ["a", "b"]), ("P1", ["c"]), ("P2", ["d"]), ("P3", ["e", "f"])]
