"""An edit's effect on every fact of its run, predicted from the atlas alone: the run's gradient
sketches (`indexer.attribution.sketch`) and the edit's recorded slot changes, before any weight is
touched and with no model loaded.

Per prompt, d log P(gold) ~ sum over the edit's layers of sum_k s_k u_k^T dV_l w_k (first order in
the value slots, every position of the prompt included), and its P(gold) moves by about
P (exp(d log P) - 1): linear in log space, so a large predicted drop saturates at -P instead of
passing below zero. A fact's prediction is the mean over its ok prompts, as the audit measures it.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from atlas.db.edits import EditRows
from atlas.db.sketches import has_sketches, layer_sketches
from atlas.db.store import Store
from atlas.jobs.weights import slots_of
from indexer.attribution.sketch import first_order


def slot_changes(edit: EditRows) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per layer: the edited neurons `[k]` and their value-slot changes `[hidden, k]` (float32)."""
    by_layer: dict[int, list] = defaultdict(list)
    for s in slots_of([edit]):
        by_layer[s.layer].append(s)
    return {
        layer: (
            np.array([s.neuron for s in slots], np.int64),
            np.stack([(s.edited.double() - s.original.double()).numpy() for s in slots], 1).astype(np.float32),
        )
        for layer, slots in by_layer.items()
    }


def sketch_prediction(store: Store, run_id: int, edit: EditRows, rank: int | None = None) -> dict[str, float] | None:
    """Each fact's predicted change of P(gold) (mean over its ok prompts); None when the run kept no
    sketches (indexed without `--sketch-rank`). `rank` uses only the first triplets of each sketch."""
    if not has_sketches(store, run_id):
        return None
    dlogp: dict[int, float] = defaultdict(float)
    meta: dict[int, tuple[str, float]] = {}
    for layer, (cols, dv) in slot_changes(edit).items():
        for rows in layer_sketches(store, run_id, layer):
            d = first_order(rows.blobs, cols, dv, rank)
            for prompt_id, fact_id, p, x in zip(rows.prompt_ids, rows.fact_ids, rows.p_gold, d):
                dlogp[prompt_id] += float(x)
                meta[prompt_id] = (fact_id, p)
    per_fact: dict[str, list[float]] = defaultdict(list)
    for prompt_id, (fact_id, p) in meta.items():
        per_fact[fact_id].append(p * float(np.expm1(min(dlogp[prompt_id], 50.0))))
    return {f: sum(v) / len(v) for f, v in per_fact.items()}
