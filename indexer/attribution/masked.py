"""Masked LMs: the plain batched route (every position attends to the mask, so nothing can be cached)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from atlas.model.adapters import Adapter
from atlas.model.encode import PromptItem
from atlas.model.hooks import hooks
from indexer.attribution.config import Attributions, IGConfig, alphas
from indexer.attribution.tensors import answer, autocast, device, first_rank, pad, put


def _mask_positions(items: list[PromptItem], mask_id: int) -> list[list[int]]:
    out = []
    for it in items:
        pos = [i for i, t in enumerate(it.prompt_ids) if t == mask_id]
        if len(pos) != len(it.answer_ids):
            raise ValueError(f"prompt has {len(pos)} mask tokens for {len(it.answer_ids)} answer tokens")
        out.append(pos)
    return out


def _masked_logp(model: nn.Module, b: _Batch) -> tuple[Tensor, Tensor]:
    """Sum over masks of log P(gold) `[B]`, and the rank of the first mask's gold `[B]`."""
    logits = model(input_ids=b.ids, attention_mask=b.attn, token_type_ids=torch.zeros_like(b.ids)).logits
    sel = logits.gather(1, b.mpos[..., None].expand(-1, -1, logits.shape[-1])).float()  # [B,K,V]
    logp = torch.log_softmax(sel, dim=-1).gather(-1, b.gold[..., None])[..., 0]
    return (logp * b.valid).sum(-1), first_rank(sel[:, 0], b.gold[:, 0])


def masked_group(model: nn.Module, ad: Adapter, items: list[PromptItem], cfg: IGConfig) -> Attributions:
    mask_id = cfg.mask_token_id if cfg.mask_token_id is not None else ad.mask_token_id
    if mask_id is None:
        raise ValueError("masked LM: set IGConfig.mask_token_id (or adapter.mask_token_id)")
    dev = device(model)
    pos_lists = _mask_positions(items, mask_id)
    if cfg.answer == "first":
        pos_lists = [pl[:1] for pl in pos_lists]
    answers = [answer(it, cfg) for it in items]
    K = max(len(a) for a in answers)
    batch = _Batch(
        put(pad([it.prompt_ids for it in items]), dev),
        put(pad([[1] * len(it.prompt_ids) for it in items]), dev),
        put(pad(pos_lists), dev),  # padding points at position 0, masked out by `valid`
        put(pad(answers), dev),
        put(torch.tensor([[1.0] * len(a) + [0.0] * (K - len(a)) for a in answers]), dev),
    )
    rows = torch.arange(len(items), device=dev)
    acts: dict[int, Tensor] = {}  # layer -> [G, N] activations at the first mask

    def record(layer: int):
        return lambda x: acts.__setitem__(layer, x[rows, batch.mpos[:, 0]].detach())

    with torch.no_grad(), hooks(ad, {layer: record(layer) for layer in range(ad.n_layers)}):
        logp0, rank0 = _masked_logp(model, batch)
    chosen = cfg.layer_range(ad.n_layers)
    scores = [
        _layer_scores(model, ad, batch, acts[layer], layer, cfg)
        if layer in chosen
        else torch.zeros(acts[layer].shape, device=dev)  # fp32, as `_layer_scores` returns
        for layer in range(ad.n_layers)
    ]
    return Attributions(torch.stack(scores, dim=1), logp0.exp(), rank0)


@dataclass
class _Batch:
    """A pass's inputs, `[B, ...]`: ids, attention mask, mask positions, gold ids and their validity."""

    ids: Tensor
    attn: Tensor
    mpos: Tensor
    gold: Tensor
    valid: Tensor

    def repeated(self, m: int) -> _Batch:
        """Each input `m` times (row = step * B + b), one copy per IG step."""
        return _Batch(
            *(t.repeat(m, *([1] * (t.dim() - 1))) for t in (self.ids, self.attn, self.mpos, self.gold, self.valid))
        )


def _layer_scores(model: nn.Module, ad: Adapter, batch: _Batch, act: Tensor, layer: int, cfg: IGConfig) -> Tensor:
    """IG scores `[G, N]` of one layer: every step's scaled activations replace the first mask's."""
    G, m = act.shape[0], cfg.steps
    a = put(alphas(m, cfg.rule), act.device).to(act.dtype)
    x = (a[:, None, None] * act[None]).reshape(m * G, -1).requires_grad_(True)
    big = batch.repeated(m)
    rows = torch.arange(m * G, device=act.device)

    def scaled(inp: Tensor) -> Tensor:
        inp = inp.clone()
        inp[rows, big.mpos[:, 0]] = x.to(inp.dtype)
        return inp

    with torch.enable_grad(), autocast(model, cfg), hooks(ad, {layer: scaled}):
        logp, _ = _masked_logp(model, big)
        (grad,) = torch.autograd.grad(logp.exp().sum(), x)
    return act.float() * grad.float().reshape(m, G, -1).sum(0) / m
