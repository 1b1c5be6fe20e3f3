"""Integrated-gradients attribution of FFN neurons (Dai et al., ACL 2022), fast and exact.

What is computed (identical to the paper / official code, only organised differently):
for prompt x, gold answer y and layer l, let w be layer l's neuron activations at the ANSWER
POSITION (the [MASK] for masked LMs, the last prompt token for decoders). All neurons of layer l
are scaled together, `w -> alpha * w`, every other layer and position untouched, and

    score_l[i] = w_i / m * sum_k dP(y | x; alpha_k * w) / d(alpha_k w_i)

with P the softmax PROBABILITY of the gold answer, zero baseline, m = `steps` and
- rule "left" (official code, default): alpha_k = k/m, k = 0..m-1;
- rule "eleuther" (EleutherAI `knowledge-neurons`): alpha = linspace(0, 1, m).

Multi-token answers y = (y_1..y_n):
- answer="joint" (default): P = prod_j P(y_j | x, y_<j) with teacher forcing. For decoders the
  input is `prompt + y_1..y_{n-1}`; ONLY the last prompt token's activations are scaled (the
  positions of the appended answer tokens keep their own activations at layer l, and change
  above l only through attention to the scaled position). For masked LMs the prompt holds one
  mask per answer token; P is the product over the mask positions of one forward pass, and the
  FIRST mask position is the one scaled.
- answer="first": P = P(y_1 | x).
`p_gold` is that same P on the unscaled model; `gold_rank` is the 1-based rank of y_1 at the
answer position (1 = the model's top prediction).

Why it is fast (decoders): the clean run caches, per layer, the prefix keys/values, the residual
`base_l = h_in + attention` and activations `w_l` at the answer position, and the clean hidden
states of the answer-token positions. One pass then sweeps the layers once: rows of layer l (one
per step) are injected at the output of layer l as `base_l + W_out(alpha w_l)` and only the n
answer-side positions are re-run from layer l+1 upward against the cached prefix; nothing below l
is recomputed and all layers, steps and prompts of a batch share the pass. The vocabulary head's
gradient is formed in chunks from logsumexp (`dP/dh = P * (W[y] - softmax @ W)`), so the full
logits of every row never coexist in memory. Masked LMs take a plain batched route (every
position attends to the mask, so nothing can be cached).

This module imports only torch; it reaches the model solely through the adapter passed in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

Rule = Literal["left", "eleuther"]
AnswerMode = Literal["joint", "first"]


@dataclass(frozen=True)
class IGConfig:
    """Attribution settings.

    `batch_size` is the number of PROMPTS per pass (each expands to n_layers * steps rows; see
    `default_batch_size`); `dtype`, when set and different from the model's, runs the SCALED pass
    under autocast (torch.bfloat16 on a GPU or an AVX-512-BF16 CPU): the matmuls run in bf16 while
    the weights, the residual stream, softmaxes and sums stay fp32, and the clean run (activations,
    `p_gold`, `gold_rank`) stays in the model's own precision; `head_chunk` bounds the
    full-vocabulary logits held at once (elements; default 2**26 on a GPU, 2**24 = 64 MB of fp32
    logits on a CPU, where bigger chunks only cost memory); `mask_token_id` is needed for masked LMs when
    the adapter does not carry one.
    """

    steps: int = 20
    rule: Rule = "left"
    answer: AnswerMode = "joint"
    batch_size: int = 8
    dtype: torch.dtype | None = None
    head_chunk: int | None = None
    mask_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError("steps must be >= 1")
        if self.rule not in ("left", "eleuther"):
            raise ValueError(f"rule must be 'left' or 'eleuther', got {self.rule!r}")
        if self.answer not in ("joint", "first"):
            raise ValueError(f"answer must be 'joint' or 'first', got {self.answer!r}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")


@dataclass(frozen=True)
class PromptItem:
    """Token ids of one prompt and its gold answer (see module docstring for masked LMs)."""

    prompt_ids: list[int]
    answer_ids: list[int]


@dataclass
class PromptAttribution:
    """Scores `[n_layers, n_neurons]` (fp32, cpu) plus the unscaled model's P(gold) and gold rank."""

    scores: Tensor
    p_gold: float
    gold_rank: int


def default_batch_size(device: str | torch.device) -> int:
    """Prompts per pass: 16 on a GPU; 4 on a CPU, where a SmolLM2-sized pass (30 layers x 1536,
    m = 20) keeps ~0.35 GB of autograd state per prompt and larger passes are no faster (2 cores
    are saturated by 4 x 600 rows), so 4 keeps the process under ~3 GB."""
    return 4 if torch.device(device).type == "cpu" else 16


def alphas(steps: int, rule: Rule) -> Tensor:
    """Scaling factors of the Riemann sum (fp64 for exactness, cast by the caller)."""
    if rule == "left":
        return torch.arange(steps, dtype=torch.float64) / steps
    return torch.linspace(0.0, 1.0, steps, dtype=torch.float64)


def attribute(model: nn.Module, adapter: Any, items: Sequence[PromptItem], cfg: IGConfig = IGConfig()) -> list[PromptAttribution]:
    """Attribution scores of every FFN neuron of every layer for each item, in input order.

    Example:
        >>> res = attribute(model, adapter, [PromptItem([5, 7, 9], [11])], IGConfig())  # doctest: +SKIP
        >>> res[0].scores.shape                                                        # doctest: +SKIP
        torch.Size([30, 1536])
    """
    for it in items:
        if not it.prompt_ids or not it.answer_ids:
            raise ValueError("every PromptItem needs a non-empty prompt and answer")
    order = sorted(range(len(items)), key=lambda i: (len(_answer(items[i], cfg)), len(items[i].prompt_ids)))
    out: list[PromptAttribution | None] = [None] * len(items)
    group_fn = _masked_group if adapter.is_masked_lm else _decoder_group
    with _frozen(model):
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            for i, res in zip(idx, group_fn(model, adapter, [items[i] for i in idx], cfg)):
                out[i] = res
    return [r for r in out if r is not None]


# --- shared helpers ----------------------------------------------------------------------------


def _answer(item: PromptItem, cfg: IGConfig) -> list[int]:
    return list(item.answer_ids[:1] if cfg.answer == "first" else item.answer_ids)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """eval mode and no weight gradients (only input gradients are needed: half the backward)."""
    flags = [p.requires_grad for p in model.parameters()]
    training = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(training)


def _autocast(model: nn.Module, cfg: IGConfig) -> contextlib.AbstractContextManager:
    dev = _device(model)
    if cfg.dtype is None or cfg.dtype == next(model.parameters()).dtype:
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=cfg.dtype)


def _head_chunk(cfg: IGConfig, dev: torch.device) -> int:
    if cfg.head_chunk is not None:
        return cfg.head_chunk
    return 1 << 24 if dev.type == "cpu" else 1 << 26


def _up(x: Tensor) -> Tensor:
    """Softmax-bound values in at least fp32 (bf16/fp16 runs), fp64 kept for exactness checks."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _pad(seqs: list[list[int]], value: int = 0) -> Tensor:
    n = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (n - len(s)) for s in seqs], dtype=torch.long)


def _first_rank(logits: Tensor, gold: Tensor) -> Tensor:
    """1-based rank of `gold` in each row of `logits` (ties count in the gold's favour)."""
    g = logits.gather(-1, gold[:, None])
    return (logits > g).sum(-1) + 1


# --- decoders: prefix cache + answer-side sweep --------------------------------------------------


def _attend(q: Tensor, k: Tensor, v: Tensor, k_pre: Tensor | None, v_pre: Tensor | None,
            pre_valid: Tensor | None, scale: float) -> Tensor:
    """Causal attention of T new positions per row over a shared per-prompt prefix plus themselves.

    q `[G,R,T,H,D]`, k/v `[G,R,T,Hk,D]` (new positions), k_pre/v_pre `[G,P,Hk,D]` (the prompt's
    cached prefix, shared by its R rows), pre_valid `[G,P]`. Returns `[G,R,T,H*D]`.
    """
    G, R, T, H, D = q.shape
    hk = k.shape[-2]
    qg = q.reshape(G, R, T, hk, H // hk, D)
    s_new = _up(torch.einsum("grtked,grskd->grkets", qg, k)) * scale
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    s_new = s_new.masked_fill(causal, float("-inf"))
    P = 0 if k_pre is None else k_pre.shape[1]
    if P:
        s_pre = _up(torch.einsum("grtked,gpkd->grketp", qg, k_pre)) * scale
        s_pre = s_pre.masked_fill(~pre_valid[:, None, None, None, None, :], float("-inf"))
        s_new = torch.cat([s_pre, s_new], dim=-1)
    w = torch.softmax(s_new, dim=-1).to(v.dtype)
    ctx = torch.einsum("grkets,grskd->grtked", w[..., P:], v)
    if P:
        ctx = ctx + torch.einsum("grketp,gpkd->grtked", w[..., :P], v_pre)
    return ctx.reshape(G, R, T, H * D)


def _block(ad: Any, layer: int, h: Tensor, pos: Any, k_pre: Tensor | None, v_pre: Tensor | None,
           pre_valid: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One decoder block on `h [G,R,T,d]`; returns (out, base, act, k, v)."""
    q, k, v = ad.attention_inputs(layer, h, pos)
    ctx = _attend(q, k, v, k_pre, v_pre, pre_valid, ad.attention_scale(layer))
    base = h + ad.attention_output(layer, ctx)
    act = ad.mlp_activation(layer, h, base)
    return base + ad.mlp_output(layer, act), base, act, k, v


@dataclass
class _CleanCache:
    """What the sweep needs from the unscaled run, per layer (lists indexed by layer)."""

    k_pre: list[Tensor]      # [G,P,Hk,D] keys of positions < answer position
    v_pre: list[Tensor]
    pre_valid: Tensor        # [G,P]
    base: list[Tensor]       # [G,d]  h_in + attention at the answer position
    act: list[Tensor]        # [G,N]  neuron activations at the answer position
    after: list[Tensor]      # [G,T-1,d] clean block outputs at the answer-token positions
    final: Tensor            # [G,T,d] final hidden (normed) at answer positions, for P/rank


def _gather_pos(x: Tensor, idx: Tensor) -> Tensor:
    """x `[G,S,...]`, idx `[G,T]` -> `[G,T,...]`."""
    shape = idx.shape + x.shape[2:]
    flat = idx.reshape(idx.shape[0], -1, *([1] * (x.dim() - 2))).expand(*shape)
    return x.gather(1, flat)


@torch.no_grad()
def _clean_run(ad: Any, ids: Tensor, p: Tensor, T: int) -> _CleanCache:
    G, S = ids.shape
    positions = torch.arange(S, device=ids.device).expand(G, S)
    h = ad.embed(ids, positions)[:, None]
    pos = ad.positional(positions, h)
    P = int(p.max())
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


def _head(hf: Tensor, W: Tensor, b: Tensor | None, gold: Tensor, valid: Tensor, chunk: int,
          want_grad: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """log P(gold) per position `[...,T]`, rank of position 0, and d log P / d hf (optional).

    hf `[..., T, d]`, gold/valid broadcastable to `[..., T]`. Rows are processed `chunk // V` at a
    time so that only one chunk of full-vocabulary logits exists at any moment.
    """
    d, V = hf.shape[-1], W.shape[0]
    lead = hf.shape[:-1]
    rows = hf.reshape(-1, d)
    gold_f = gold.expand(lead).reshape(-1)
    n = max(1, chunk // V)
    logp = torch.empty(rows.shape[0], device=hf.device, dtype=_up(rows[:1]).dtype)
    rank = torch.empty(rows.shape[0], device=hf.device, dtype=torch.long)
    grad = torch.empty_like(rows) if want_grad else None
    for s in range(0, rows.shape[0], n):
        r = rows[s : s + n]
        logits = _up(r @ W.T)  # bf16 under autocast: only the normaliser sees its rounding
        if b is not None:
            logits = logits + b.to(logits.dtype)
        g = gold_f[s : s + n]
        lse = torch.logsumexp(logits, dim=-1)
        # the gold logit itself in full precision (one dot product per row)
        gold_logit = (_up(r) * _up(W[g])).sum(-1) + (0 if b is None else _up(b[g]))
        logp[s : s + n] = gold_logit - lse
        if want_grad:
            # W[g] - softmax @ W written as (onehot - softmax) @ W: no cancellation of two
            # near-equal vectors when P is close to 1, which matters once the matmul is bf16.
            e = torch.exp(logits - lse[:, None]).neg_()
            e[torch.arange(e.shape[0], device=e.device), g] += 1
            grad[s : s + n] = _up(e.to(W.dtype) @ W).to(rows.dtype)
        else:  # ranks are only wanted from the clean run; skip the extra vocabulary pass otherwise
            rank[s : s + n] = _first_rank(logits, g)
        del logits
    logp = logp.reshape(lead) * valid
    rank = rank.reshape(lead)[..., 0]
    return logp, rank, (grad.reshape(hf.shape) * valid[..., None] if want_grad else None)


def _decoder_group(model: nn.Module, ad: Any, items: list[PromptItem], cfg: IGConfig) -> list[PromptAttribution]:
    dev = _device(model)
    answers = [_answer(it, cfg) for it in items]
    seqs = [it.prompt_ids + a[:-1] for it, a in zip(items, answers)]
    limit = ad.max_positions_exact()
    if limit is not None and max(len(s) for s in seqs) > limit:
        raise ValueError(f"sequence longer than {limit} positions (sliding window / position table)")
    ids = _pad(seqs).to(dev)
    p = torch.tensor([len(it.prompt_ids) - 1 for it in items], device=dev)
    T = max(len(a) for a in answers)
    gold = _pad(answers).to(dev)
    valid = torch.tensor([[1.0] * len(a) + [0.0] * (T - len(a)) for a in answers], device=dev)
    W, b = ad.unembedding(), ad.unembedding_bias()

    cache = _clean_run(ad, ids, p, T)
    logp0, rank0, _ = _head(cache.final, W, b, gold, valid, _head_chunk(cfg, dev), want_grad=False)
    with _autocast(model, cfg):
        scores = _sweep(ad, cache, p, T, gold, valid, W, b, cfg)
    p_gold = logp0.sum(-1).exp()
    return [PromptAttribution(scores[g], float(p_gold[g]), int(rank0[g])) for g in range(len(items))]


def _sweep(ad: Any, cache: _CleanCache, p: Tensor, T: int, gold: Tensor, valid: Tensor, W: Tensor,
           b: Tensor | None, cfg: IGConfig) -> Tensor:
    """The scaled pass: all layers x steps x prompts at once; returns scores `[G,L,N]` fp32 cpu."""
    G, m, dev = p.shape[0], cfg.steps, p.device
    dtype = cache.act[0].dtype
    a = alphas(m, cfg.rule).to(device=dev, dtype=dtype)
    new_pos = p[:, None] + torch.arange(T, device=dev)
    h: Tensor | None = None
    xs: list[Tensor] = []
    with torch.enable_grad():
        pos = ad.positional(new_pos, cache.base[0])
        for layer in range(ad.n_layers):
            if h is not None:
                h = _block(ad, layer, h, pos, cache.k_pre[layer], cache.v_pre[layer], cache.pre_valid)[0]
            x = (a[None, :, None] * cache.act[layer][:, None, :]).requires_grad_(True)  # [G,m,N]
            inj = (cache.base[layer][:, None, :] + ad.mlp_output(layer, x))[:, :, None, :]
            if T > 1:
                rest = cache.after[layer][:, None].expand(G, m, T - 1, -1).to(inj.dtype)
                inj = torch.cat([inj, rest], dim=2)
            h = inj if h is None else torch.cat([h, inj.to(h.dtype)], dim=1)
            xs.append(x)
        hf = ad.final_norm(h)  # [G, L*m, T, d]
        logp, _, g = _head(hf.detach(), W, b, gold[:, None, :], valid[:, None, :], _head_chunk(cfg, dev), want_grad=True)
        g = g * logp.sum(-1).exp()[..., None, None].to(g.dtype)  # dP/dh = P * dlogP/dh
        grads = torch.autograd.grad(hf, xs, grad_outputs=g.to(hf.dtype))
    acts = torch.stack(cache.act, dim=1).float()  # [G,L,N]
    summed = torch.stack([gr.float().sum(1) for gr in grads], dim=1)
    return (acts * summed / m).cpu()


# --- masked LMs: plain batched route --------------------------------------------------------------


def _mask_positions(items: list[PromptItem], mask_id: int) -> list[list[int]]:
    out = []
    for it in items:
        pos = [i for i, t in enumerate(it.prompt_ids) if t == mask_id]
        if len(pos) != len(it.answer_ids):
            raise ValueError(f"prompt has {len(pos)} mask tokens for {len(it.answer_ids)} answer tokens")
        out.append(pos)
    return out


def _masked_logp(model: nn.Module, ids: Tensor, attn: Tensor, mpos: Tensor, gold: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Sum over masks of log P(gold) `[B]`, and the rank of the first mask's gold `[B]`."""
    logits = model(input_ids=ids, attention_mask=attn, token_type_ids=torch.zeros_like(ids)).logits
    sel = logits.gather(1, mpos[..., None].expand(-1, -1, logits.shape[-1])).float()  # [B,K,V]
    logp = torch.log_softmax(sel, dim=-1).gather(-1, gold[..., None])[..., 0]
    return (logp * valid).sum(-1), _first_rank(sel[:, 0], gold[:, 0])


def _masked_group(model: nn.Module, ad: Any, items: list[PromptItem], cfg: IGConfig) -> list[PromptAttribution]:
    mask_id = cfg.mask_token_id if cfg.mask_token_id is not None else ad.mask_token_id
    if mask_id is None:
        raise ValueError("masked LM: set IGConfig.mask_token_id (or adapter.mask_token_id)")
    dev, G, m, L = _device(model), len(items), cfg.steps, ad.n_layers
    pos_lists = _mask_positions(items, mask_id)
    if cfg.answer == "first":
        pos_lists = [pl[:1] for pl in pos_lists]
    answers = [_answer(it, cfg) for it in items]
    K = max(len(a) for a in answers)
    ids = _pad([it.prompt_ids for it in items]).to(dev)
    attn = _pad([[1] * len(it.prompt_ids) for it in items]).to(dev)
    mpos = _pad(pos_lists).to(dev)  # padding points at position 0, masked out by `valid`
    gold = _pad(answers).to(dev)
    valid = torch.tensor([[1.0] * len(a) + [0.0] * (K - len(a)) for a in answers], device=dev)
    scaled_at = mpos[:, 0]

    acts: list[Tensor] = []
    hooks = [ad.ffn_out(l).register_forward_pre_hook(lambda _m, args: acts.append(args[0][torch.arange(G), scaled_at].detach()))
             for l in range(L)]
    try:
        with torch.no_grad():
            logp0, rank0 = _masked_logp(model, ids, attn, mpos, gold, valid)
    finally:
        for hk in hooks:
            hk.remove()

    a = alphas(m, cfg.rule).to(device=dev, dtype=acts[0].dtype)
    rep = lambda t: t.repeat(m, *([1] * (t.dim() - 1)))  # row = step * G + g
    rows = torch.arange(m * G, device=dev)
    scores = []
    for layer in range(L):
        x = (a[:, None, None] * acts[layer][None]).reshape(m * G, -1).requires_grad_(True)

        def put(_m: nn.Module, args: tuple, x: Tensor = x) -> tuple:
            inp = args[0].clone()
            inp[rows, rep(scaled_at)] = x.to(inp.dtype)
            return (inp,)

        hk = ad.ffn_out(layer).register_forward_pre_hook(put)
        try:
            with torch.enable_grad(), _autocast(model, cfg):
                logp, _ = _masked_logp(model, rep(ids), rep(attn), rep(mpos), rep(gold), rep(valid))
                (grad,) = torch.autograd.grad(logp.exp().sum(), x)
        finally:
            hk.remove()
        scores.append((acts[layer].float() * grad.float().reshape(m, G, -1).sum(0) / m).cpu())
    S = torch.stack(scores, dim=1)
    p_gold = logp0.exp()
    return [PromptAttribution(S[g], float(p_gold[g]), int(rank0[g])) for g in range(G)]
