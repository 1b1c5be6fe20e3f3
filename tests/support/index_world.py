"""A small, controlled fact set for indexer tests, and helpers to read a run's rows back.

Two relations, short prompts (the tiny models read at most 64 positions), letters-only answers
except on purpose: "Brasilia" with an accent (the char tokenizer cannot encode it) and one
subject so long that its prompts do not fit the model. A masked-only template checks that a
decoder never attributes prompts it cannot use.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
import torch

from atlas.db.datasets import Dataset, Fact, Relation, make_prompt
from atlas.db.facts import load_dataset
from atlas.db.schema import knowledge_neurons, prompt_outputs, prompt_scores, relation_thresholds, runs, work_items
from atlas.db.store import Store

CAPITAL = [
    "The capital of [X] is [Y].",
    "[X]'s capital is [Y].",
    "[X] has its capital in [Y].",
    "The capital city of [X] is [Y].",
    "[Y] is the capital of [X].",
]  # the last one: masked LMs only
LANGUAGE = [
    "The native language of [X] is [Y].",
    "[X] speaks [Y].",
    "[X] was born speaking [Y].",
    "The mother tongue of [X] is [Y].",
]

FACTS = [
    ("P36", "france", "France", "Paris"),
    ("P36", "italy", "Italy", "Rome"),
    ("P36", "spain", "Spain", "Madrid"),
    ("P36", "brazil", "Brazil", "Brasília"),
    ("P36", "uk", "The United Kingdom of Great Britain and Northern Ireland", "London"),
    ("P103", "hugo", "Victor Hugo", "French"),
    ("P103", "dante", "Dante", "Italian"),
    ("P103", "goethe", "Goethe", "German"),
    ("P103", "cervantes", "Cervantes", "Spanish"),
]
DATASET = "tiny-world"


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Compute with ``n`` intra-op threads. Runs compared row for row must use the same count as
    the processes they are compared with: another count sums in another order, and P(gold) of an
    unlikely answer (~1e-16) then differs in its 6th digit."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def world() -> Dataset:
    rels = [Relation("P36", "capital", "1-1"), Relation("P103", "native language", "N-1")]
    templates = {"P36": CAPITAL, "P103": LANGUAGE}
    facts = [
        Fact(f"{rel}-{key}", rel, subj, obj, tuple(make_prompt(t, subj) for t in templates[rel]))
        for rel, key, subj, obj in FACTS
    ]
    return Dataset(DATASET, rels, facts)


def load_world(store: Store) -> None:
    load_dataset(store, world())


def run_id(store: Store, name: str) -> int:
    with store.begin() as conn:
        return conn.execute(sa.select(runs.c.id).where(runs.c.name == name)).scalar_one()


def run_rows(store: Store, run: int) -> dict[str, list[tuple]]:
    """Every result row of a run without the run id (so two runs compare), sorted."""
    out = {}
    with store.begin() as conn:
        for table in (prompt_outputs, prompt_scores, knowledge_neurons, relation_thresholds):
            cols = [c for c in table.c if c.name != "run_id"]
            rows = conn.execute(sa.select(*cols).where(table.c.run_id == run)).all()
            out[table.name] = sorted(tuple(r) for r in rows)
        items = conn.execute(
            sa.select(work_items.c.item_id, work_items.c.relation_id, work_items.c.fact_ids, work_items.c.status).where(
                work_items.c.run_id == run
            )
        ).all()
        out["work_items"] = sorted(tuple(r) for r in items)
    return out


def assert_same_rows(a: dict[str, list[tuple]], b: dict[str, list[tuple]], tol: float = 1e-6) -> None:
    """Equal keys and texts; floats equal to ``tol`` relative (the runs are deterministic on CPU)."""
    assert a.keys() == b.keys()
    for table in a:
        assert len(a[table]) == len(b[table]), (table, len(a[table]), len(b[table]))
        for ra, rb in zip(a[table], b[table]):
            assert len(ra) == len(rb)
            for x, y in zip(ra, rb):
                if isinstance(x, float) and isinstance(y, float):
                    assert abs(x - y) <= tol * max(abs(x), abs(y), 1e-30), (table, ra, rb)
                else:
                    assert x == y, (table, ra, rb)


def tiny_dir(root: Path) -> Path:
    from tests.support.tiny_hf import save_tiny

    return save_tiny(root / "tiny-llama")


def index_command(model_dir: Path, run: str, lease: int = 60) -> list[str]:
    """`atlas index` of the tiny world in a child process (argv; `[3:]` are the CLI's arguments)."""
    return [
        sys.executable,
        "-c",
        "from atlas.cli import main; main()",
        "index",
        "--model",
        str(model_dir),
        "--dataset",
        DATASET,
        "--facts-per-item",
        "1",
        "--batch-size",
        "2",
        "--run",
        run,
        "--lease",
        str(lease),
    ]
