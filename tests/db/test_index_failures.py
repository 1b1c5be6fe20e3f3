"""What the indexer does with bad input and a failing database: a clear one-line error and an
unchanged database for bad input; retries through dropped connections; a clean stop (committed
batches kept, nothing half-written) when the database stays away, and a resume afterwards."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from atlas.db import migrate
from atlas.db.datasets import Dataset, Fact, Relation, make_prompt
from atlas.db.facts import load_dataset
from atlas.db.schema import prompt_outputs, prompts, work_items
from atlas.db.store import Store
from atlas.errors import DatabaseUnavailable, InputError, ModelError
from indexer.job.run import IndexOptions, index
from tests.conftest import PG_SERVER
from tests.support.db import snapshot
from tests.support.index_world import DATASET, assert_same_rows, load_world, run_id, run_rows, tiny_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_dir(tmp_path_factory.mktemp("models"))


def _opts(model_dir: Path | str, **kw: object) -> IndexOptions:
    return IndexOptions(model=str(model_dir), dataset=DATASET, facts_per_item=1, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("workers", [1, 2])
def test_unknown_model_is_refused_before_anything_is_written(store: Store, tmp_path: Path, workers: int) -> None:
    """In this process or in worker processes (which alone load the model then), one line."""
    load_world(store)
    before = snapshot(store)
    with pytest.raises(ModelError, match=r"^cannot load model '.*no-such-model': no such directory$"):
        index(store, _opts(tmp_path / "no-such-model", workers=workers))
    assert snapshot(store) == before


@pytest.mark.parametrize(
    "dataset, relations, message",
    [
        ("nope", None, r"unknown dataset 'nope': loaded datasets: tiny-world \(load one with `atlas facts load`\)"),
        (DATASET, ("P999",), r"relation\(s\) P999 have no facts in dataset 'tiny-world'"),
    ],
)
def test_unknown_dataset_or_relation(store: Store, model_dir: Path, dataset: str, relations, message: str) -> None:
    load_world(store)
    before = snapshot(store)
    with pytest.raises(InputError, match=message):
        index(store, IndexOptions(model=str(model_dir), dataset=dataset, relations=relations))
    assert snapshot(store) == before


def test_empty_selection_writes_nothing(store: Store, model_dir: Path) -> None:
    """A dataset whose only prompts suit masked LMs selects nothing for a decoder."""
    masked_only = Fact("P36-x", "P36", "Chile", "Santiago", (make_prompt("[Y] is the capital of [X].", "Chile"),))
    load_dataset(store, Dataset("masked-only", [Relation("P36", "capital", "1-1")], [masked_only]))
    before = snapshot(store)
    with pytest.raises(
        InputError, match="empty selection: no fact of dataset 'masked-only' in P36 has a left-to-right prompt"
    ):
        index(store, IndexOptions(model=str(model_dir), dataset="masked-only"))
    assert snapshot(store) == before  # not even the model was registered


def _terminate_others(admin: sa.Engine, db: str) -> int:
    with admin.connect() as conn:
        return len(
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": db},
            ).all()
        )


@pytest.fixture
def pg_admin() -> sa.Engine:
    engine = sa.create_engine(PG_SERVER, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_dropped_connections_are_retried_and_the_run_matches_a_clean_one(
    store: Store, model_dir: Path, pg_admin: sa.Engine
) -> None:
    load_world(store)
    index(store, _opts(model_dir, run_name="clean"))
    db = sa.make_url(store.url).database
    stop, killed = threading.Event(), []

    def killer() -> None:
        """Watch closely (a quiet machine runs this world's transactions in milliseconds), and after
        each kill leave the retries a second to get through."""
        while not stop.is_set():
            killed.append(_terminate_others(pg_admin, db))
            time.sleep(1.0 if killed[-1] else 0.005)

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        summary = index(store, _opts(model_dir, run_name="harassed"))
    finally:
        stop.set()
        thread.join()
    assert sum(killed) > 0, "no connection was ever terminated: the test proves nothing"
    assert summary.run.status == "done"
    assert_same_rows(run_rows(store, run_id(store, "clean")), run_rows(store, run_id(store, "harassed")))


@pytest.fixture
def doomed_db(pg_admin: sa.Engine) -> str:
    """A database of its own, whose connections the test can switch off."""
    name = f"atlas_doomed_{int(time.time() * 1000)}"
    with pg_admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(PG_SERVER).set(database=name).render_as_string(hide_password=False)
    migrate.upgrade(Store(url))
    yield name, url
    with pg_admin.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_a_database_that_stays_away_stops_the_run_cleanly_and_it_resumes(
    doomed_db, model_dir: Path, pg_admin: sa.Engine
) -> None:
    name, url = doomed_db
    store = Store(url)
    load_world(store)
    index(store, _opts(model_dir, run_name="clean"))
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(index, store, _opts(model_dir, run_name="cut"))
        while True:  # wait for the first committed item, then take the database away
            time.sleep(0.05)
            with store.begin() as conn:
                done = conn.execute(
                    sa.text(
                        "SELECT count(*) FROM work_items w JOIN runs r ON r.id = w.run_id "
                        "WHERE r.name = 'cut' AND w.status = 'done'"
                    )
                ).scalar()
            if done:
                break
        with pg_admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
        _terminate_others(pg_admin, name)
        with pytest.raises(
            DatabaseUnavailable,
            match=r"database unavailable while .* \(gave up after 6 tries\).*"
            r"committed batches are kept, run the same command again to resume",
        ):
            fut.result(timeout=120)
    with pg_admin.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))

    cut = run_id(store, "cut")
    with store.begin() as conn:  # nothing half-written: outputs exist exactly for the done items' prompts
        items = conn.execute(
            sa.select(work_items.c.fact_ids, work_items.c.status).where(work_items.c.run_id == cut)
        ).all()
        written = set(
            conn.execute(
                sa.select(prompts.c.fact_id)
                .join(prompt_outputs, prompt_outputs.c.prompt_id == prompts.c.id)
                .where(prompt_outputs.c.run_id == cut)
            ).scalars()
        )
    done = {f for ids, status in items if status == "done" for f in json.loads(ids)}
    assert done and written == done and len(done) < len({f for ids, _ in items for f in json.loads(ids)})

    resumed = index(store, _opts(model_dir, run_name="cut"))
    assert resumed.run.status == "done" and not resumed.created
    assert_same_rows(run_rows(store, run_id(store, "clean")), run_rows(store, cut))
    store.dispose()
