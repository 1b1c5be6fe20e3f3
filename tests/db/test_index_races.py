"""Concurrent workers never crash on a race: registering at once, a worker paused past its lease,
a second writer on a DuckDB file. Real processes (spawned, or `atlas index` subprocesses) on the
real databases; the tiny random model of tests/support."""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from atlas.db.models import ModelInfo, register_model
from atlas.db.runs import RunSpec, open_run
from atlas.db.schema import prompt_outputs, work_items
from atlas.db.store import Store
from tests.support.index_world import DATASET, index_command, load_world, run_id, tiny_dir

PROCESSES = 4
ROUNDS = 4
PROGRESS = re.compile(r"^\d+/\d+ prompts")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_dir(tmp_path_factory.mktemp("models"))


def _register_at_once(url: str, sha: str, barrier, out) -> None:  # noqa: ANN001 - multiprocessing proxies
    store = Store(url)
    info = ModelInfo("racer", "test", "LlamaForCausalLM", 2, 16, sha)
    spec = RunSpec(info, DATASET, None, None, True, {"steps": 1})
    barrier.wait()
    try:
        model, created = register_model(store, info)
        run, run_created = open_run(store, spec, name=f"race-{sha[:6]}")
        out.put(("ok", model.id, created, run.id, run_created))
    except BaseException as exc:  # noqa: BLE001 - reported to the test, which fails on it
        out.put(("error", f"{type(exc).__name__}: {exc}"))


def test_four_processes_register_the_same_model_and_run_at_once(pg_url: str, request: pytest.FixtureRequest) -> None:
    store = Store(request.getfixturevalue("_migrated_pg"))
    load_world(store)
    ctx = mp.get_context("spawn")
    for round_ in range(ROUNDS):
        barrier, out = ctx.Barrier(PROCESSES), ctx.Queue()
        sha = f"{round_:02d}" * 32
        procs = [ctx.Process(target=_register_at_once, args=(store.url, sha, barrier, out)) for _ in range(PROCESSES)]
        for p in procs:
            p.start()
        got = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(30)
        assert all(g[0] == "ok" for g in got), got
        assert len({g[1] for g in got}) == 1 and sum(g[2] for g in got) == 1, got  # one model row, created once
        assert len({g[3] for g in got}) == 1 and sum(g[4] for g in got) == 1, got  # one run, created once
        with store.begin() as conn:
            assert conn.execute(sa.text("SELECT COUNT(*) FROM models WHERE sha256 = :s"), {"s": sha}).scalar() == 1


def _env(url: str) -> dict[str, str]:
    return {**os.environ, "ATLAS_DB": url, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _wait_for_items(proc: subprocess.Popen, items: int) -> list[str]:
    """Lines of ``proc``'s stderr until it reports ``items`` finished items."""
    lines, seen = [], -1  # the first progress line is the start
    for line in proc.stderr:
        lines.append(line)
        if PROGRESS.match(line):
            seen += 1
            if seen >= items:
                return lines
    raise AssertionError("the indexer ended before finishing an item:\n" + "".join(lines))


def _no_traceback(code: int, err: str) -> None:
    assert code == 0 and "Traceback" not in err, err


def test_four_indexers_started_together_on_a_fresh_database(store: Store, model_dir: Path, tmp_path: Path) -> None:
    if store.backend != "postgresql":
        pytest.skip("concurrent writers are a PostgreSQL feature (a DuckDB file has one writer)")
    load_world(store)
    procs = [
        subprocess.Popen(
            index_command(model_dir, "together"),
            env=_env(store.url),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(PROCESSES)
    ]
    for p in procs:
        out, err = p.communicate(timeout=300)
        _no_traceback(p.returncode, err.decode())
    with store.begin() as conn:
        rid = run_id(store, "together")
        statuses = conn.execute(sa.select(work_items.c.status).where(work_items.c.run_id == rid)).scalars().all()
        outputs = conn.execute(sa.select(sa.func.count()).where(prompt_outputs.c.run_id == rid)).scalar()
        assert conn.execute(sa.text("SELECT COUNT(*) FROM models")).scalar() == 1
    assert statuses and set(statuses) == {"done"} and outputs > 0


def _stop_between_transactions(proc: subprocess.Popen, store: Store) -> None:
    """SIGSTOP `proc` at a moment when none of its connections has a transaction open. Stopped inside
    one (between a claim's UPDATE and its COMMIT, say), it would keep that row locked, and the other
    worker's SKIP LOCKED claim would pass the item by until the stopped process resumed: a process
    frozen mid-transaction, not the lease that ran out which this test is about."""
    for _ in range(200):
        proc.send_signal(signal.SIGSTOP)
        with store.begin() as conn:
            open_elsewhere = conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"
                )
            ).scalar()
        if not open_elsewhere:
            return
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError("the worker was inside a transaction at every attempt to stop it")


def test_worker_paused_past_its_lease_drops_its_result_and_carries_on(
    store: Store, model_dir: Path, tmp_path: Path
) -> None:
    if store.backend != "postgresql":
        pytest.skip("leases are taken over by other processes on PostgreSQL only")
    load_world(store)
    env = _env(store.url)
    paused = subprocess.Popen(
        index_command(model_dir, "paused", lease=2), env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    _wait_for_items(paused, 1)
    _stop_between_transactions(paused, store)
    try:
        time.sleep(3)  # past its lease: the items it holds may be claimed by another worker
        other = subprocess.run(
            index_command(model_dir, "paused", lease=2), env=env, cwd=tmp_path, capture_output=True, text=True
        )
        _no_traceback(other.returncode, other.stderr)
    finally:
        paused.send_signal(signal.SIGCONT)
    err = paused.stderr.read()
    paused.wait(120)
    _no_traceback(paused.returncode, err)
    assert "was lost; another worker redoes it: result dropped" in err, err
    with store.begin() as conn:
        rid = run_id(store, "paused")
        statuses = conn.execute(sa.select(work_items.c.status).where(work_items.c.run_id == rid)).scalars().all()
    assert set(statuses) == {"done"}


def test_second_writer_on_a_duckdb_file_gets_one_line(store: Store, model_dir: Path, tmp_path: Path) -> None:
    if store.backend != "duckdb":
        pytest.skip("PostgreSQL takes any number of writers")
    load_world(store)
    env = _env(store.url)
    first = subprocess.Popen(index_command(model_dir, "one"), env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    _wait_for_items(first, 1)
    first.send_signal(signal.SIGSTOP)  # holds the file while the second starts
    try:
        second = subprocess.run(index_command(model_dir, "one"), env=env, cwd=tmp_path, capture_output=True, text=True)
    finally:
        first.send_signal(signal.SIGCONT)
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 1 and len(lines) == 1 and "is in use by another process" in lines[0], second.stderr
    err = first.stderr.read()
    first.wait(120)
    _no_traceback(first.returncode, err)

    # started together: each one finishes or gets the same line, none a traceback
    store.dispose()
    both = [
        subprocess.Popen(
            index_command(model_dir, "two"), env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    for p in both:
        _, err_b = p.communicate(timeout=300)
        text = err_b.decode()
        assert "Traceback" not in text, text
        assert p.returncode == 0 or (p.returncode == 1 and "is in use by another process" in text), text
