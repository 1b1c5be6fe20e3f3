"""The vocabulary head of the attribution pass: log P(gold), rank and d log P / d h, by vocabulary slices."""

from __future__ import annotations

import torch
from torch import Tensor

from indexer.attribution.tensors import up


def head(
    hf: Tensor, W: Tensor, b: Tensor | None, gold: Tensor, valid: Tensor, chunk: int, want_grad: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """log P(gold) per position `[...,T]`, rank of position 0, and d log P / d hf (optional).

    hf `[..., T, d]`, gold/valid broadcastable to `[..., T]`. The vocabulary is swept in slices
    of `chunk // rows` words with an online (streaming) softmax, so every row meets each slice of
    `W` once while it is hot in cache and only `chunk` logits exist at any moment. On a 2-core
    CPU this is what makes the head cheap: row-chunked, the 113 MB head matrix streamed from
    memory once per chunk and the head was half of all IG time.

    With `S = sum_j exp(z_j - m)` and the gold word excluded from the running sums,
        log P(g) = z_g - m - log S,     d log P / dh = (S_other / S) W[g] - sum_{j != g} p_j W_j,
    the second form having no cancellation when P(g) is close to 1 (which matters once the
    matmuls are bf16). The gold logit is computed on its own, in full precision.
    """
    d, V = hf.shape[-1], W.shape[0]
    lead = hf.shape[:-1]
    r = hf.reshape(-1, d)
    R = r.shape[0]
    g = gold.expand(lead).reshape(-1)
    fp = up(r[:1]).dtype
    z_g = (up(r) * up(W[g])).sum(-1) + (0 if b is None else up(b[g]))  # [R]
    m = z_g.clone()  # running max, seeded by the gold logit
    s_other = torch.zeros(R, device=r.device, dtype=fp)
    above = torch.zeros(R, device=r.device, dtype=torch.long)
    acc = torch.zeros(R, d, device=r.device, dtype=fp) if want_grad else None
    step = max(64, chunk // max(R, 1))
    for v0 in range(0, V, step):
        Wc = W[v0 : v0 + step]
        # bf16 weights give bf16 logits: the matmul has rounded them already, so the elementwise
        # work stays in bf16 (half the memory traffic) while every sum is fp32.
        z = torch.nn.functional.linear(r, Wc, None if b is None else b[v0 : v0 + step])
        # the gold word is accounted for by z_g: mask it in the rows whose gold is in this slice
        # (gather/where/scatter rather than boolean indexing, which waits for the device)
        col = (g - v0).clamp(0, Wc.shape[0] - 1)[:, None]
        own = ((g >= v0) & (g < v0 + Wc.shape[0]))[:, None]
        z.scatter_(1, col, z.gather(1, col).masked_fill(own, float("-inf")))
        if not want_grad:  # ranks are only wanted from the clean run
            above += (z > z_g[:, None]).sum(-1)
        # the running max, made representable in z's dtype so that `z - m` below is the m used
        m_new = torch.maximum(m, up(z.amax(-1))).to(z.dtype)
        p = z.sub_(m_new[:, None]).exp_()  # exp(z - m_new), in place
        m_new = up(m_new)
        rescale = torch.exp(m - m_new)
        s_other = s_other * rescale + p.sum(-1, dtype=fp)
        if want_grad:
            acc = acc * rescale[:, None] + up(torch.mm(p, Wc))
        m = m_new
        del z, p
    S = s_other + torch.exp(z_g - m)
    logp = (z_g - m - torch.log(S)).reshape(lead) * valid
    rank = (above + 1).reshape(lead)[..., 0]
    if not want_grad:
        return logp, rank, None
    grad = (s_other / S)[:, None] * up(W[g]) - acc / S[:, None]
    return logp, rank, grad.to(r.dtype).reshape(hf.shape) * valid[..., None]
