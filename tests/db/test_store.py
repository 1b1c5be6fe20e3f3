"""The store's bulk writes and transactions, on both backends."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from atlas.db.schema import edit_slots, prompt_scores, prompts
from atlas.db.store import Store, resolve_url
from atlas.errors import StoreError
from tests.support.db import snapshot


def test_bulk_insert_round_trips_every_type(store: Store) -> None:
    with store.begin() as conn:
        store.bulk_insert(
            conn,
            prompts,
            {
                "fact_id": ["f1", "f2"],
                "template": ["", 'a "quoted", comma'],
                "text": ["line\nbreak", "é ü"],
                "causal": [True, False],
                "masked": [False, True],
            },
        )
        store.bulk_insert(
            conn,
            edit_slots,
            {
                "edit_id": [1],
                "layer": [2],
                "neuron": [3],
                "original": [b"\x00\x01\xff"],
                "edited": [b""],
                "dtype": ["float32"],
            },
        )
        store.bulk_insert(
            conn,
            prompt_scores,
            {
                "run_id": np.array([7, 7]),
                "prompt_id": np.array([1, 2]),
                "layer": np.array([0, 29], dtype=np.int16),
                "neuron": np.array([0, 1535]),
                "score": np.array([0.5, -1.25], dtype=np.float32),
            },
        )
    with store.begin() as conn:
        got = conn.execute(
            sa.select(
                prompts.c.fact_id, prompts.c.template, prompts.c.text, prompts.c.causal, prompts.c.masked
            ).order_by(prompts.c.fact_id)
        ).all()
        slots = conn.execute(sa.select(edit_slots.c.original, edit_slots.c.edited)).one()
        scores = conn.execute(
            sa.select(prompt_scores.c.layer, prompt_scores.c.neuron, prompt_scores.c.score).order_by(
                prompt_scores.c.prompt_id
            )
        ).all()
        ids = conn.execute(sa.select(prompts.c.id).order_by(prompts.c.id)).scalars().all()
    assert got == [("f1", "", "line\nbreak", True, False), ("f2", 'a "quoted", comma', "é ü", False, True)]
    assert (bytes(slots[0]), bytes(slots[1])) == (b"\x00\x01\xff", b"")
    assert scores == [(0, 0, 0.5), (29, 1535, -1.25)]
    assert len(set(ids)) == 2  # the sequence handed out distinct ids


def test_failed_transaction_leaves_database_unchanged(store: Store) -> None:
    with store.begin() as conn:
        store.bulk_insert(
            conn, prompts, {"fact_id": ["a"], "template": ["t"], "text": ["x"], "causal": [True], "masked": [True]}
        )
    before = snapshot(store)
    with pytest.raises(RuntimeError):
        with store.begin() as conn:
            store.bulk_insert(
                conn, prompts, {"fact_id": ["b"], "template": ["t"], "text": ["y"], "causal": [True], "masked": [True]}
            )
            raise RuntimeError("interrupted")
    assert snapshot(store) == before


def test_bulk_insert_rejects_unknown_columns_and_ragged_input(store: Store) -> None:
    with store.begin() as conn:
        with pytest.raises(ValueError, match="no column"):
            store.bulk_insert(conn, prompts, {"nope": [1]})
        with pytest.raises(ValueError, match="differ in length"):
            store.bulk_insert(conn, prompts, {"fact_id": ["a", "b"], "template": ["t"]})


def test_unreachable_postgres_is_a_one_line_error() -> None:
    s = Store("postgresql+psycopg://nobody@127.0.0.1:1/none")
    with pytest.raises(StoreError, match="cannot connect"):
        with s.begin():
            pass


def test_duckdb_in_missing_folder_is_refused(tmp_path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        Store(f"duckdb:///{tmp_path}/missing/dir/atlas.duckdb")


def test_url_resolution(monkeypatch) -> None:
    monkeypatch.delenv("ATLAS_DB", raising=False)
    assert resolve_url(None) == "duckdb:///atlas.duckdb"
    assert resolve_url("x.duckdb") == "duckdb:///x.duckdb"
    assert resolve_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    monkeypatch.setenv("ATLAS_DB", "postgresql+psycopg:///atlas")
    assert resolve_url(None) == "postgresql+psycopg:///atlas"
    with pytest.raises(StoreError, match="unsupported database URL"):
        Store("mysql://x/y")
