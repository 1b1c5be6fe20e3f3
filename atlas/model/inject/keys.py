"""Keys and gates of injected slots, from the model's own hidden states (no training).

For a fact, X+ `[n+, hidden]` are the FFN inputs x (post-norm) of the chosen layer at the answer
position of its training prompts (the last prompt token; the first mask of a masked LM), X-
`[n-, hidden]` those of hard negatives: every position of prompts of other facts of the same and
other relations (the answer position and, as ordinary text, every other one), of general text,
of the other facts being injected (answer positions) and of the fact's own object being spelled.
A plain normalised mean of X+ also fires on the relation's other facts (they share the
template), so the key is the discriminant direction

    w = (S- + eps I)^-1 (mu+ - mu-) / |...|,   eps = ridge * tr(S-) / hidden,

with S- the covariance of X-. The gate is placed between the scores s = w . x of the two sides:
lo = max s(X-), hi = min s(X+); the slot starts at b = lo + low (hi - lo) and saturates at
lo + high (hi - lo) (`widen` turns b and a = 1 / (saturation - b) into a clamped ramp). When the
sides overlap (hi <= lo) the ramp ends at the positives' minimum (every training prompt saturated)
and starts a quarter of their spread below it; `Gate.separable` says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from atlas.model.adapters import Adapter
from atlas.model.encode import PromptItem


@torch.no_grad()
def answer_inputs(
    model: torch.nn.Module,
    adapter: Adapter,
    items: Sequence[PromptItem],
    layers: Sequence[int],
    batch_size: int = 32,
    every_position: bool = False,
) -> dict[int, Tensor]:
    """FFN inputs at each item's answer position: {layer: `[n_items, hidden]`} (float64); with
    `every_position`, at every position of every item (`[n_tokens, hidden]`: negatives)."""
    seen: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    dev = next(model.parameters()).device
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        width = max(len(it.prompt_ids) for it in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        attn = torch.zeros_like(ids)
        pos = torch.zeros(len(chunk), dtype=torch.long)
        for r, it in enumerate(chunk):
            ids[r, : len(it.prompt_ids)], attn[r, : len(it.prompt_ids)] = torch.tensor(it.prompt_ids), 1
            if adapter.is_masked_lm:
                pos[r] = list(it.prompt_ids).index(adapter.mask_token_id)
            else:
                pos[r] = len(it.prompt_ids) - 1
        grabbed = _grab(model, adapter, layers, ids.to(dev), attn.to(dev))
        for layer in layers:
            got = grabbed[layer].double().cpu()
            seen[layer].append(got[attn.bool()] if every_position else got[torch.arange(len(chunk)), pos])
    return {layer: torch.cat(v) if v else torch.zeros(0, adapter.hidden_size) for layer, v in seen.items()}


def _grab(model: torch.nn.Module, adapter: Adapter, layers: Sequence[int], ids: Tensor, attn: Tensor) -> dict:
    """One forward pass recording each layer's FFN input `[B, S, hidden]`."""
    got: dict[int, Tensor] = {}
    handles = [
        adapter.ffn_in(layer).register_forward_pre_hook(lambda _m, args, layer=layer: got.__setitem__(layer, args[0]))
        for layer in layers
    ]
    try:
        extra = {"token_type_ids": torch.zeros_like(ids)} if adapter.is_masked_lm else {}
        model(input_ids=ids, attention_mask=attn, **extra)
    finally:
        for h in handles:
            h.remove()
    return got


@torch.no_grad()
def text_inputs(
    model: torch.nn.Module, adapter: Adapter, ids: Sequence[int], layers: Sequence[int], chunk: int = 256
) -> dict:
    """FFN inputs at every position of one token sequence (general text), read in chunks of
    `chunk` tokens: {layer: `[S, hidden]`}."""
    dev = next(model.parameters()).device
    parts: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    for start in range(0, len(ids), chunk):
        t = torch.tensor([list(ids[start : start + chunk])], device=dev)
        got = _grab(model, adapter, layers, t, torch.ones_like(t))
        for layer in layers:
            parts[layer].append(got[layer][0].double().cpu())
    return {layer: torch.cat(v) for layer, v in parts.items()}


def text_chunk(adapter: Adapter) -> int:
    """Tokens per chunk of general text: 256, or fewer where the model's positions end sooner."""
    limit = adapter.max_positions_exact() if hasattr(adapter, "max_positions_exact") else None
    return min(256, limit - 1) if limit else 256


def discriminant(pos: Tensor, neg: Tensor, ridge: float = 0.05) -> Tensor:
    """The unit key w `[hidden]` separating `pos` `[n+, hidden]` from `neg` `[n-, hidden]` (see the
    module docstring); the plain mean difference when there are too few negatives for a covariance."""
    diff = pos.mean(0) - neg.mean(0)
    if neg.shape[0] < 2:
        return diff / diff.norm()
    centred = neg - neg.mean(0)
    cov = centred.T @ centred / (neg.shape[0] - 1)
    eps = ridge * float(cov.trace()) / cov.shape[0] + 1e-12
    w = torch.linalg.solve(cov + eps * torch.eye(cov.shape[0], dtype=cov.dtype), diff)
    return w / w.norm()


@dataclass(frozen=True)
class Gate:
    """Where a slot's ramp lies on the key's scores: silent up to `threshold`, full at `saturation`."""

    threshold: float
    saturation: float
    neg_max: float
    pos_min: float
    separable: bool

    @property
    def slope(self) -> float:
        return 1.0 / (self.saturation - self.threshold)


def gate(pos_scores: Tensor, neg_scores: Tensor, low: float = 0.5, high: float = 0.9) -> Gate:
    """The ramp between the negatives' highest and the positives' lowest score (module docstring)."""
    lo = float(neg_scores.max()) if neg_scores.numel() else float(pos_scores.min()) - 1.0
    hi = float(pos_scores.min())
    if hi > lo:
        return Gate(lo + low * (hi - lo), lo + high * (hi - lo), lo, hi, True)
    spread = max(float(pos_scores.mean()) - hi, 1e-3 * max(abs(hi), 1.0))
    return Gate(hi - 0.25 * spread, hi, lo, hi, False)  # every training prompt saturated; some negatives fire
