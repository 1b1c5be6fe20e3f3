"""Which prompt-level scores to store, for a whole batch of prompts at once (numpy only).

Same rule as `indexer.refine.sparse_scores` (scores >= 0.1 x the prompt's max, best first, at most
`cap`), vectorised over the batch: on a GPU run the per-prompt Python version costs more CPU time
than the attribution of the prompt. One difference on purpose: the cap never cuts a coarse
neuron (>= 0.2 x max), so refining from stored rows always sees every coarse neuron.
Comparisons are made in float64 exactly like the per-prompt version, so both select the same rows.
"""

from __future__ import annotations

import numpy as np

from indexer.refine import COARSE_T, SPARSE_RATIO


def sparse_rows(scores: np.ndarray, cap: int, ratio: float = SPARSE_RATIO,
                coarse_t: float = COARSE_T) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``scores`` [P, L, N] (float32) -> (prompt index, layer, neuron, score) of the rows to store."""
    P, L, N = scores.shape
    flat = scores.reshape(P, L * N)
    top = flat.max(axis=1).astype(np.float64)
    keep = flat >= (ratio * top)[:, None]  # float32 vs float64: numpy compares in float64
    keep &= (top > 0)[:, None]
    n_coarse = (flat >= (coarse_t * top)[:, None]).sum(axis=1)
    out_p, out_i = [], []
    for p in range(P):
        idx = np.flatnonzero(keep[p])
        vals = flat[p, idx].astype(np.float64)
        order = np.argsort(-vals, kind="stable")[: max(cap, int(n_coarse[p]))]
        out_p.append(np.full(len(order), p, np.int64))
        out_i.append(idx[order])
    pi = np.concatenate(out_p) if out_p else np.zeros(0, np.int64)
    ii = np.concatenate(out_i) if out_i else np.zeros(0, np.int64)
    return pi, (ii // N).astype(np.int16), (ii % N).astype(np.int32), flat[pi, ii].astype(np.float32)
