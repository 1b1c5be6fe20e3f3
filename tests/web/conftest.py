"""A small real atlas to serve: the tiny LLaMA world indexed by the real indexer, one audited
update, and a fact whose subject is markup (it must render as text)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from atlas.db.datasets import Dataset, Fact, Relation, make_prompt
from atlas.db.facts import load_dataset
from atlas.db.store import Store
from atlas.jobs.audit import audit_sample
from atlas.web.app import create_app
from atlas.web.options import ServeOptions
from tests.support.kn_world import World, index_world

XSS_SUBJECT = "<script>alert('x')</script>&<b>"
XSS_FACT = "xss-1"


def free_port() -> int:
    """A port nothing listens on (for a real server in a test)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Served:
    """The world, its audited edit, and how to open a client on it. On DuckDB the server holds the
    file read-only, so the store itself is used before `client()` opens or after it closes."""

    store: Store
    world: World
    edit_id: int

    @contextmanager
    def client(self, **options: object) -> Iterator[TestClient]:
        app = create_app(self.store, ServeOptions(**{"timeout": 2.0, "pool": 4, **options}))  # type: ignore[arg-type]
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client


def build_served_world(store: Store, tmp_path: Path) -> tuple[World, int]:
    world = index_world(store, tmp_path, sketch_rank=1)  # the audit then predicts from gradient sketches
    edit_id = audit_sample(store, world.lm, world.run, 1, limit=10).edits[0].edit_id
    markup = Fact(XSS_FACT, "P36", XSS_SUBJECT, "Paris</td>", (make_prompt("The capital of [X] is [Y]", XSS_SUBJECT),))
    load_dataset(store, Dataset("markup", [Relation("P36", "capital", "N-1")], [markup]))
    return world, edit_id


@pytest.fixture
def served(store: Store, tmp_path: Path) -> Served:
    world, edit_id = build_served_world(store, tmp_path)
    return Served(store, world, edit_id)
