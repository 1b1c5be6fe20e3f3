"""SIGKILL the indexer at random points, run the same command again: the run completes with
exactly the rows of an uninterrupted run (no duplicates, nothing missing). Both backends, real
subprocesses running `atlas index` on a tiny random model saved as a Hugging Face directory (the
runs nobody kills go through the same command in-process, to keep the test short)."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from atlas.cli import cli
from atlas.db.store import Store
from tests.support.index_world import (
    assert_same_rows,
    index_command,
    load_world,
    run_id,
    run_rows,
    tiny_dir,
    torch_threads,
)

KILLS = 3
PROGRESS = re.compile(r"^\d+/\d+ prompts")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_dir(tmp_path_factory.mktemp("models"))


def _index_in_process(model_dir: Path, run: str, store: Store) -> str:
    """The same `atlas index` command, run in this process (the runs nobody kills; saves start-up time),
    on one thread like the killed processes (OMP_NUM_THREADS=1)."""
    with torch_threads(1):
        result = CliRunner().invoke(cli, index_command(model_dir, run, lease=3)[3:] + ["--db", store.url])
    assert result.exit_code == 0, result.output
    return result.output


def _env(store: Store) -> dict[str, str]:
    # unbuffered: the progress lines that time each kill must arrive as they are written
    return {
        **os.environ,
        "ATLAS_DB": store.url,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    }


def _done_items(store: Store, name: str) -> tuple[int, int]:
    with store.begin() as conn:
        rows = (
            conn.execute(
                sa.text("SELECT w.status FROM work_items w JOIN runs r ON r.id = w.run_id WHERE r.name = :n"),
                {"n": name},
            )
            .scalars()
            .all()
        )
    return sum(s == "done" for s in rows), len(rows)


def _run_and_kill(cmd: list[str], env: dict[str, str], cwd: Path, items: int, delay: float) -> None:
    """Start the indexer, wait until it reports ``items`` finished items (its progress lines on a
    non-terminal stderr: "done/total prompts RELATION"), then SIGKILL it ``delay`` seconds later -
    a random point of its work that does not depend on how loaded the machine is."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = -1  # the first line is the start (prompts done so far)
    for line in proc.stderr:
        if PROGRESS.match(line):
            seen += 1
            if seen >= items:
                break
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()


def test_sigkill_then_resume_equals_an_uninterrupted_run(store: Store, model_dir: Path, tmp_path: Path) -> None:
    load_world(store)
    env = _env(store)
    _index_in_process(model_dir, "straight", store)

    rng = random.Random(20261121)
    partial = 0
    for _ in range(KILLS):
        _run_and_kill(
            index_command(model_dir, "killed", lease=3),
            env,
            tmp_path,
            items=rng.randint(0, 2),
            delay=rng.uniform(0.0, 0.3),
        )
        done, total = _done_items(store, "killed")
        partial += 0 < done < total
    assert partial >= 1, "no kill landed mid-run: the test proves nothing"

    # a killed process that was restarted may already have finished the run; either way the
    # same command now reports it done, and its rows must equal the uninterrupted run's
    assert re.search(r"\(id \d+, (resumed|already complete)\): done", _index_in_process(model_dir, "killed", store))
    a, b = run_rows(store, run_id(store, "straight")), run_rows(store, run_id(store, "killed"))
    assert a["prompt_outputs"] and a["knowledge_neurons"]
    assert_same_rows(a, b)
