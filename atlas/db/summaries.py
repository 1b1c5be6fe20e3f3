"""Whole-run tables that the web atlas's pages share, read once per done run and process.

A run's relations with their counts, its layers, and every (relation, neuron) pair with the
number of the relation's facts that have the neuron cost 0.1-2 s on a PARAREL-sized atlas in
PostgreSQL: too slow for every relation or neuron page. A run that is done never changes again
(only the indexer writes its results, and only while it runs), so `RunSummaries` reads them once
per run and keeps them (a few MB at PARAREL scale: plain arrays, indexed by relation and by
neuron); a run still running is read afresh each time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from sqlalchemy.engine import Connection

from atlas.db.queries import run_on
from atlas.db.runs import Run
from atlas.db.sqlfile import statement


@dataclass
class RunSummary:
    """One run's whole-run tables, and its (relation, neuron) counts as sorted arrays."""

    relations: pa.Table  # page_run_relations
    layers: pa.Table  # page_run_layers
    sizes: dict[str, int]  # facts with knowledge neurons, per relation
    labels: dict[str, str]
    pairs: pa.Table  # page_run_relation_neurons, sorted by relation then neuron
    _relation_bounds: dict[str, tuple[int, int]]
    _neuron_keys: np.ndarray  # [n] layer * 2^32 + neuron of each pair, sorted
    _neuron_order: np.ndarray  # [n] row of `pairs` of each sorted key

    @classmethod
    def read(cls, conn: Connection, run_id: int) -> RunSummary:
        relations = run_on(conn, statement("page_run_relations"), {"run_id": run_id})
        layers = run_on(conn, statement("page_run_layers"), {"run_id": run_id})
        pairs = run_on(conn, statement("page_run_relation_neurons"), {"run_id": run_id})
        pairs = pairs.sort_by([("relation_id", "ascending"), ("layer", "ascending"), ("neuron", "ascending")])
        rel = pairs.column("relation_id").to_numpy(zero_copy_only=False)
        bounds: dict[str, tuple[int, int]] = {}
        if len(rel):
            starts = np.flatnonzero(np.r_[True, rel[1:] != rel[:-1]])
            ends = np.r_[starts[1:], len(rel)]
            bounds = {str(rel[s]): (int(s), int(e)) for s, e in zip(starts, ends)}
        keys = _keys(pairs)
        order = np.argsort(keys, kind="stable")
        ids = relations.column("relation_id").to_pylist()
        sizes = dict(zip(ids, relations.column("facts_with_neurons").to_pylist()))
        labels = dict(zip(ids, relations.column("label").to_pylist()))
        return cls(relations, layers, sizes, labels, pairs, bounds, keys[order], order)

    def relation_pairs(self, relation_id: str) -> pa.Table:
        """The relation's neurons: layer, neuron, n_facts, mean_score (relation_id dropped)."""
        start, end = self._relation_bounds.get(relation_id, (0, 0))
        return self.pairs.slice(start, end - start).drop_columns(["relation_id"])

    def neuron_pairs(self, layer: int, neuron: int) -> pa.Table:
        """The relations that have the neuron: relation_id, layer, neuron, n_facts, mean_score."""
        key = _key(layer, neuron)
        lo, hi = np.searchsorted(self._neuron_keys, [key, key + 1])
        return self.pairs.take(pa.array(np.sort(self._neuron_order[lo:hi])))


def _key(layer: int, neuron: int) -> int:
    return (int(layer) << 32) + int(neuron)


def _keys(pairs: pa.Table) -> np.ndarray:
    layer = pairs.column("layer").to_numpy().astype(np.int64)
    neuron = pairs.column("neuron").to_numpy().astype(np.int64)
    return (layer << 32) + neuron


class RunSummaries:
    """`RunSummary` of each done run, read once (thread-safe); running runs are read every time."""

    def __init__(self) -> None:
        self._done: dict[int, RunSummary] = {}
        self._reading: dict[int, threading.Lock] = {}  # one reader per run: others wait for its result
        self._lock = threading.Lock()

    def of(self, conn: Connection, run: Run) -> RunSummary:
        if run.status != "done":
            return RunSummary.read(conn, run.id)
        with self._lock:
            reading = self._reading.setdefault(run.id, threading.Lock())
        with reading:
            if run.id not in self._done:
                self._done[run.id] = RunSummary.read(conn, run.id)
            return self._done[run.id]
