"""Neurons projected onto the vocabulary: which tokens a value slot writes (`atlas vocab`, and the
neuron pages of `atlas serve`).

`store_vocab` follows read -> compute -> write: the run's knowledge neurons are read, the model
runs with no transaction open, the rows are written in one. `OnDemandVocab` serves a page: the
run's weights are loaded once per process (and checked against the run's hash), projections are
kept in memory, and written to the database where the server may write beside its read-only
readers (PostgreSQL; a DuckDB file is open read-only while it serves: `atlas vocab RUN` stores
them there).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from atlas.db.runs import Run, get_run
from atlas.db.store import Store
from atlas.db.vocab import run_neuron_coords, write_tokens
from atlas.errors import AtlasError
from atlas.jobs.weights import check_weights, resolve_model
from atlas.model.loading import SMOLLM2_SPEC, LoadedModel
from atlas.model.slots import top_tokens

TOP_K = 20
COLUMNS = pa.schema([("rank", pa.int64()), ("token_id", pa.int64()), ("token", pa.string()), ("logit", pa.float64())])


def project(lm: LoadedModel, coords: Sequence[tuple[int, int]], k: int = TOP_K) -> list[dict[str, Any]]:
    """Rows (layer, neuron, rank, token_id, token, logit) of each neuron's top ``k`` tokens."""
    out: list[dict[str, Any]] = []
    by_layer: dict[int, list[int]] = {}
    for layer, neuron in coords:
        by_layer.setdefault(layer, []).append(neuron)
    for layer, neurons in sorted(by_layer.items()):
        ids, logits = top_tokens(lm.adapter, layer, neurons, k)
        for i, neuron in enumerate(neurons):
            for rank, (tid, logit) in enumerate(zip(ids[i].tolist(), logits[i].tolist()), start=1):
                token = lm.tokenizer.decode([tid])
                out.append(dict(layer=layer, neuron=neuron, rank=rank, token_id=tid, token=token, logit=logit))
    return out


def store_vocab(store: Store, run: int | str, k: int = TOP_K, lm: LoadedModel | None = None) -> int:
    """Project every knowledge neuron of ``run`` and store the rows; returns how many neurons."""
    r = get_run(store, run)
    coords = run_neuron_coords(store, r.id)
    lm = resolve_model(store, lm, r)
    check_weights(lm, r)
    rows = project(lm, coords, k)
    write_tokens(store, r.model_id, rows)
    return len(coords)


def loadable(spec: str) -> bool:
    """Weights that load without a network: the bundled model or a local directory."""
    return spec == SMOLLM2_SPEC or Path(spec).is_dir()


class OnDemandVocab:
    """Projections for pages, computed when first asked (see the module docstring)."""

    def __init__(self, store: Store, k: int = TOP_K) -> None:
        self.store, self.k = store, k
        self._models: dict[int, LoadedModel | str] = {}  # model id -> weights, or why they are not there
        self._tokens: dict[tuple[int, int, int], pa.Table] = {}
        self._lock = threading.Lock()

    def tokens(self, run: Run, layer: int, neuron: int) -> tuple[pa.Table, str]:
        """The neuron's top tokens and a note for the page ('' when computed)."""
        key = (run.model_id, layer, neuron)
        with self._lock:
            if key in self._tokens:
                return self._tokens[key], ""
            lm = self._model(run)
            if isinstance(lm, str):
                return COLUMNS.empty_table(), lm
            rows = project(lm, [(layer, neuron)], self.k)
            table = pa.Table.from_pylist([{c: r[c] for c in COLUMNS.names} for r in rows], schema=COLUMNS)
            self._tokens[key] = table
        if self.store.backend == "postgresql":
            write_tokens(self.store, run.model_id, rows)
        return table, ""

    def _model(self, run: Run) -> LoadedModel | str:
        if run.model_id not in self._models:
            spec = run.model_spec()
            if not loadable(spec):
                self._models[run.model_id] = f"The weights of {run.model_name} are not on this machine."
            else:
                try:
                    lm = resolve_model(self.store, spec, run)
                    check_weights(lm, run)
                    self._models[run.model_id] = lm
                except AtlasError as exc:
                    self._models[run.model_id] = f"The weights could not be used: {exc}"
        return self._models[run.model_id]
