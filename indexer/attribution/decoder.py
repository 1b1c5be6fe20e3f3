"""Decoders: the prefix cache and the answer-side sweep (see `indexer.attribution.ig` for the method).

The clean run caches, per layer, the prefix keys/values, the residual `base_l = h_in + attention`
and activations `w_l` at the answer position, and the clean hidden states of the answer-token
positions. One pass then sweeps the layers once: rows of layer l (one per step) are injected at
the output of layer l as `base_l + W_out(alpha w_l)` and only the answer-side positions are re-run
from layer l+1 upward against the cached prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from atlas.model.adapters import DecoderAdapter
from atlas.model.encode import PromptItem
from indexer.attribution.config import Attributions, IGConfig, alphas
from indexer.attribution.head import head
from indexer.attribution.tensors import answer, device, head_chunk, low_precision, pad, put, up


def _attend(
    q: Tensor, k: Tensor, v: Tensor, k_pre: Tensor | None, v_pre: Tensor | None, pre_valid: Tensor | None, scale: float
) -> Tensor:
    """Causal attention of T new positions per row over a shared per-prompt prefix plus themselves.

    q `[G,R,T,H,D]`, k/v `[G,R,T,Hk,D]` (new positions), k_pre/v_pre `[G,P,Hk,D]` (the prompt's
    cached prefix, shared by its R rows), pre_valid `[G,P]`. Returns `[G,R,T,H*D]`.
    """
    G, R, T, H, D = q.shape
    hk = k.shape[-2]
    qg = q.reshape(G, R, T, hk, H // hk, D)
    s_new = up(torch.einsum("grtked,grskd->grkets", qg, k)) * scale
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    s_new = s_new.masked_fill(causal, float("-inf"))
    P = 0 if k_pre is None else k_pre.shape[1]
    if P:
        s_pre = up(torch.einsum("grtked,gpkd->grketp", qg, k_pre)) * scale
        s_pre = s_pre.masked_fill(~pre_valid[:, None, None, None, None, :], float("-inf"))
        s_new = torch.cat([s_pre, s_new], dim=-1)
    w = torch.softmax(s_new, dim=-1).to(v.dtype)
    ctx = torch.einsum("grkets,grskd->grtked", w[..., P:], v)
    if P:
        ctx = ctx + torch.einsum("grketp,gpkd->grtked", w[..., :P], v_pre)
    return ctx.reshape(G, R, T, H * D)


def _block(
    ad: DecoderAdapter,
    layer: int,
    h: Tensor,
    pos: Any,
    k_pre: Tensor | None,
    v_pre: Tensor | None,
    pre_valid: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One decoder block on `h [G,R,T,d]`; returns (out, base, act, k, v)."""
    q, k, v = ad.attention_inputs(layer, h, pos)
    ctx = _attend(q, k, v, k_pre, v_pre, pre_valid, ad.attention_scale(layer))
    base = h + ad.attention_output(layer, ctx)
    act = ad.mlp_activation(layer, h, base)
    return base + ad.mlp_output(layer, act), base, act, k, v


@dataclass
class _CleanCache:
    """What the sweep needs from the unscaled run, per layer (lists indexed by layer)."""

    k_pre: list[Tensor]  # [G,P,Hk,D] keys of positions < answer position
    v_pre: list[Tensor]
    pre_valid: Tensor  # [G,P]
    base: list[Tensor]  # [G,d]  h_in + attention at the answer position
    act: list[Tensor]  # [G,N]  neuron activations at the answer position
    after: list[Tensor]  # [G,T-1,d] clean block outputs at the answer-token positions
    final: Tensor  # [G,T,d] final hidden (normed) at answer positions, for P/rank

    def to(self, dtype: torch.dtype | None) -> _CleanCache:
        """The cache cast for a scaled pass in `dtype` (itself when no cast is needed)."""
        if dtype is None or dtype == self.act[0].dtype:
            return self

        def cast(ts: list[Tensor]) -> list[Tensor]:
            return [t.to(dtype) for t in ts]

        return _CleanCache(
            cast(self.k_pre),
            cast(self.v_pre),
            self.pre_valid,
            cast(self.base),
            cast(self.act),
            cast(self.after),
            self.final.to(dtype),
        )


def _gather_pos(x: Tensor, idx: Tensor) -> Tensor:
    """x `[G,S,...]`, idx `[G,T]` -> `[G,T,...]`."""
    shape = idx.shape + x.shape[2:]
    flat = idx.reshape(idx.shape[0], -1, *([1] * (x.dim() - 2))).expand(*shape)
    return x.gather(1, flat)


@torch.no_grad()
def _clean_run(ad: DecoderAdapter, ids: Tensor, p: Tensor, P: int, T: int) -> _CleanCache:
    """`p` `[G]` answer positions on the device, `P` their maximum (from the host: reading it
    back from the device would wait for all queued work)."""
    G, S = ids.shape
    positions = torch.arange(S, device=ids.device).expand(G, S)
    h = ad.embed(ids, positions)[:, None]
    pos = ad.positional(positions, h)
    t_idx = (p[:, None] + torch.arange(T, device=ids.device)).clamp(max=S - 1)
    cache = _CleanCache([], [], torch.arange(P, device=ids.device)[None] < p[:, None], [], [], [], h)
    for layer in range(ad.n_layers):
        h, base, act, k, v = _block(ad, layer, h, pos, None, None, None)
        cache.k_pre.append(k[:, 0, :P])
        cache.v_pre.append(v[:, 0, :P])
        cache.base.append(_gather_pos(base[:, 0], p[:, None])[:, 0])
        cache.act.append(_gather_pos(act[:, 0], p[:, None])[:, 0])
        cache.after.append(_gather_pos(h[:, 0], t_idx[:, 1:]))
    cache.final = _gather_pos(ad.final_norm(h[:, 0]), t_idx)
    return cache


def decoder_group(model: nn.Module, ad: DecoderAdapter, items: list[PromptItem], cfg: IGConfig) -> Attributions:
    dev = device(model)
    answers = [answer(it, cfg) for it in items]
    seqs = [it.prompt_ids + a[:-1] for it, a in zip(items, answers)]
    limit = ad.max_positions_exact()
    if limit is not None and max(len(s) for s in seqs) > limit:
        raise ValueError(f"sequence longer than {limit} positions (sliding window / position table)")
    ids = put(pad(seqs), dev)
    p_host = [len(it.prompt_ids) - 1 for it in items]
    p = put(torch.tensor(p_host), dev)
    T = max(len(a) for a in answers)
    gold = put(pad(answers), dev)
    valid = put(torch.tensor([[1.0] * len(a) + [0.0] * (T - len(a)) for a in answers]), dev)
    W, b = ad.unembedding(), ad.unembedding_bias()

    cache = _clean_run(ad, ids, p, max(p_host), T)
    logp0, rank0, _ = head(cache.final, W, b, gold, valid, head_chunk(cfg, dev), want_grad=False)
    low = low_precision(ad, cfg.dtype)
    chosen = cfg.layer_range(ad.n_layers)
    grad_sums = torch.zeros(len(items), ad.n_layers, ad.n_neurons, device=dev)  # [G,L,N]; 0 outside `chosen`
    grad_sums[:, chosen.start : chosen.stop] = _sweep(low, cache.to(cfg.dtype), p, T, gold, valid, cfg, chosen)
    acts = torch.stack(cache.act, dim=1).float()  # [G,L,N], the clean run's own precision
    return Attributions(acts * grad_sums / cfg.steps, logp0.sum(-1).exp(), rank0)


def _sweep(
    ad: DecoderAdapter,
    cache: _CleanCache,
    p: Tensor,
    T: int,
    gold: Tensor,
    valid: Tensor,
    cfg: IGConfig,
    chosen: range,
) -> Tensor:
    """The scaled pass: the `chosen` layers x steps x prompts at once; returns the gradients of
    P(gold) summed over the steps, `[G,len(chosen),N]` fp32. Rows start at the first chosen layer
    (nothing below it runs) and every row still runs through the layers above it."""
    G, m, dev = p.shape[0], cfg.steps, p.device
    W, b = ad.unembedding(), ad.unembedding_bias()
    dtype = cache.act[0].dtype
    a = put(alphas(m, cfg.rule), dev).to(up(cache.act[0][:1]).dtype)
    new_pos = p[:, None] + torch.arange(T, device=dev)
    h: Tensor | None = None
    xs: list[Tensor] = []
    with torch.enable_grad():
        pos = ad.positional(new_pos, cache.base[0])
        for layer in range(chosen.start, ad.n_layers):
            if h is not None:
                h = _block(ad, layer, h, pos, cache.k_pre[layer], cache.v_pre[layer], cache.pre_valid)[0]
            if layer not in chosen:
                continue
            x = (a[None, :, None] * cache.act[layer][:, None, :]).to(dtype).requires_grad_(True)  # [G,m,N]
            inj = (cache.base[layer][:, None, :] + ad.mlp_output(layer, x))[:, :, None, :]
            if T > 1:
                rest = cache.after[layer][:, None].expand(G, m, T - 1, -1).to(inj.dtype)
                inj = torch.cat([inj, rest], dim=2)
            h = inj if h is None else torch.cat([h, inj.to(h.dtype)], dim=1)
            xs.append(x)
        hf = ad.final_norm(h)  # [G, L*m, T, d]
        logp, _, g = head(hf.detach(), W, b, gold[:, None, :], valid[:, None, :], head_chunk(cfg, dev), want_grad=True)
        g = g * logp.sum(-1).exp()[..., None, None].to(g.dtype)  # dP/dh = P * dlogP/dh
        grads = torch.autograd.grad(hf, xs, grad_outputs=g.to(hf.dtype))
    return torch.stack([gr.float().sum(1) for gr in grads], dim=1)


# --- masked LMs: plain batched route --------------------------------------------------------------
