"""Which prompt-level scores to store, for a whole batch of prompts at once, on the scores' device.

Same rule as `indexer.attribution.refine.sparse_scores` (scores >= 0.1 x the prompt's max, best first, ties in
index order, at most `cap`), vectorised over the batch and run where the scores are: on a GPU run
the per-prompt host version cost up to a quarter of an item's time, and moving the dense scores
(46,080 per prompt) to the host is itself a copy of ~60 MB per item, where ~50 scores per prompt
are kept. One difference on purpose: the cap never cuts a coarse neuron (>= 0.2 x max), so
refining from stored rows always sees every coarse neuron.

The per-prompt rule compares float32 scores with a float64 threshold. Here the threshold is
rounded UP to the nearest float32 instead (`_at_least`), which selects exactly the same scores
(x >= t  <=>  x >= the smallest float32 >= t, for float32 x) without float64 copies of the scores.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from indexer.attribution.refine import COARSE_T, SPARSE_RATIO


def _at_least(ratio: float, top: Tensor) -> Tensor:
    """The smallest float32 >= ratio * top (computed in float64), per prompt."""
    exact = ratio * top.double()
    t = exact.float()
    return torch.where(t.double() < exact, torch.nextafter(t, torch.full_like(t, float("inf"))), t)


def sparse_rows(
    scores: Tensor, cap: int, ratio: float = SPARSE_RATIO, coarse_t: float = COARSE_T
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``scores`` [P, L, N] float32 (any device) -> (prompt index, layer, neuron, score) of the rows
    to store, as host arrays ordered by prompt, then score (descending), then position."""
    P, L, N = scores.shape
    flat = scores.reshape(P, L * N)
    top = flat.amax(1) if flat.shape[1] else torch.zeros(P, device=flat.device)
    keep = (flat >= _at_least(ratio, top)[:, None]) & (top > 0)[:, None]
    n_keep = keep.sum(1)
    n_coarse = (flat >= _at_least(coarse_t, top)[:, None]).sum(1)
    limit = torch.minimum(n_keep, n_coarse.clamp(min=cap))
    p_idx, i_idx = keep.nonzero(as_tuple=True)  # prompt-major, index order within a prompt
    vals = flat[p_idx, i_idx]
    order = torch.sort(vals, descending=True, stable=True).indices  # best first, ties in index order
    order = order[torch.sort(p_idx[order], stable=True).indices]  # ... within each prompt
    p_idx, i_idx, vals = p_idx[order], i_idx[order], vals[order]
    start = n_keep.cumsum(0) - n_keep
    rank = torch.arange(len(p_idx), device=flat.device) - start[p_idx]
    sel = rank < limit[p_idx]
    p_idx, i_idx, vals = (t[sel].cpu().numpy() for t in (p_idx, i_idx, vals))
    return p_idx.astype(np.int64), (i_idx // N).astype(np.int16), (i_idx % N).astype(np.int32), vals.astype(np.float32)
