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
is recomputed and all layers, steps and prompts of a batch share the pass. The vocabulary head
(`dP/dh = P * (W[y] - softmax @ W)`) sweeps slices of the vocabulary with an online softmax, so
the full logits of every row never exist and each slice of the head matrix is read once per pass.
Masked LMs take a plain batched route (every position attends to the mask, so nothing can be
cached).

This module imports only torch; it reaches the model solely through the adapter passed in.
"""

from __future__ import annotations

import contextlib
import copy
import math
import weakref
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
    `default_batch_size`). `dtype`, when set and different from the model's (torch.bfloat16 on a
    GPU or an AMX/AVX-512-BF16 CPU), runs the SCALED pass of decoders on a copy of the weights in
    that dtype (made once per model and weight version, see `_low_precision`), while the clean run
    (activations, `p_gold`, `gold_rank`) stays in the model's own precision and scores multiply
    the full-precision activations; softmaxes and sums are always at least fp32. Masked LMs run
    the scaled pass under autocast instead. `head_chunk` bounds the full-vocabulary logits held
    at once (elements; default 2**28 on a GPU, where each slice is a few kernel launches that
    the host must issue, 2**23 on a CPU, where cache-sized slices are faster); `mask_token_id` is needed for masked LMs when the adapter does not carry one.
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


@dataclass
class Attributions:
    """The attributions of a list of prompts, stacked and left on the model's device: scores
    `[n, n_layers, n_neurons]` fp32, p_gold `[n]`, gold_rank `[n]` (1-based), in input order.

    Kept on the device so that a caller that needs only a few numbers per prompt (the indexer
    stores ~50 of 46,080 scores) selects them there: nothing then waits for the GPU between
    passes, and only the selection crosses to the host."""

    scores: Tensor
    p_gold: Tensor
    gold_rank: Tensor

    def to_prompts(self) -> list[PromptAttribution]:
        scores, p, r = self.scores.cpu(), self.p_gold.tolist(), self.gold_rank.tolist()
        return [PromptAttribution(scores[i], p[i], int(r[i])) for i in range(len(p))]


def default_batch_size(device: str | torch.device, adapter: Any = None, steps: int = 20,
                       dtype: torch.dtype | None = None) -> int:
    """Prompts per pass.

    CPU: 4. A SmolLM2-sized pass (30 layers x 1536, m = 20) keeps ~0.35 GB of autograd state per
    prompt and larger passes are no faster (2 cores are saturated by 4 x 600 rows).
    GPU: as many as half the free memory holds, at most 512. A pass is bound by the host launching
    kernels until it is large (an H100 was busy a third of the time at 128 SmolLM2 prompts per
    pass), so bigger is faster as long as it fits. Per prompt, a decoder's scaled pass keeps about
    steps x n_layers^2 / 2 re-run rows x (6 hidden + 5 neuron) values: 0.19 GiB in bf16 for
    SmolLM2 at m = 20, where 0.13 GiB was measured - an upper estimate. 16 when the adapter (the
    model's shape) is not given, or for masked LMs, whose passes re-run whole sequences.
    """
    dev = torch.device(device)
    if dev.type == "cpu":
        return 4
    if adapter is None or adapter.is_masked_lm or dev.type != "cuda":
        return 16
    width = 2 if dtype in (torch.bfloat16, torch.float16) else 4
    per_prompt = steps * adapter.n_layers**2 / 2 * (6 * adapter.hidden_size + 5 * adapter.n_neurons) * width
    free, _ = torch.cuda.mem_get_info(dev)
    return int(max(1, min(512, 0.5 * free // per_prompt)))


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
    return attribute_stacked(model, adapter, items, cfg).to_prompts() if items else []


def attribute_stacked(model: nn.Module, adapter: Any, items: Sequence[PromptItem], cfg: IGConfig = IGConfig()) -> Attributions:
    """`attribute`, with the results stacked on the model's device (see `Attributions`)."""
    if not items:
        raise ValueError("no prompts to attribute")
    for it in items:
        if not it.prompt_ids or not it.answer_ids:
            raise ValueError("every PromptItem needs a non-empty prompt and answer")
    order = sorted(range(len(items)), key=lambda i: (len(_answer(items[i], cfg)), len(items[i].prompt_ids)))
    group_fn = _masked_group if adapter.is_masked_lm else _decoder_group
    done: list[int] = []
    parts: list[Attributions] = []
    with _frozen(model):
        for idx in _passes(order, [len(_answer(it, cfg)) for it in items], cfg.batch_size):
            parts.append(group_fn(model, adapter, [items[i] for i in idx], cfg))
            done += idx
    back = _put(torch.tensor(sorted(range(len(done)), key=done.__getitem__)), _device(model))  # input order
    return Attributions(*(torch.cat([getattr(p, f) for p in parts])[back] for f in ("scores", "p_gold", "gold_rank")))


# --- shared helpers ----------------------------------------------------------------------------


def _passes(order: list[int], answer_len: list[int], batch_size: int) -> list[list[int]]:
    """Split `order` (sorted by answer length) into passes.

    A pass holds `batch_size` prompts of one-token answers but only `batch_size // T` of T-token
    answers: every answer token is one more re-run position in each of a prompt's rows, so memory
    grows with T. Within one answer length the passes are equal rather than full ones plus a
    remainder (130 prompts at 128/pass run as 65 + 65: a pass of 2 costs nearly a full one).
    """
    out: list[list[int]] = []
    start = 0
    while start < len(order):
        T = answer_len[order[start]]
        stop = start
        while stop < len(order) and answer_len[order[stop]] == T:
            stop += 1
        run = order[start:stop]
        n = math.ceil(len(run) / max(1, batch_size // T))
        bounds = [round(k * len(run) / n) for k in range(n + 1)]
        out += [run[a:b] for a, b in zip(bounds, bounds[1:])]
        start = stop
    return out


def _answer(item: PromptItem, cfg: IGConfig) -> list[int]:
    return list(item.answer_ids[:1] if cfg.answer == "first" else item.answer_ids)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _put(t: Tensor, dev: torch.device) -> Tensor:
    """A host tensor moved to `dev` without waiting for the work queued there: a plain copy to a
    GPU waits for the whole queue, which would leave the GPU idle at the start of every pass."""
    if dev.type != "cuda":
        return t.to(dev)
    return t.pin_memory().to(dev, non_blocking=True)


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


_LOW: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, torch.dtype, Any]]" = weakref.WeakKeyDictionary()


def _low_precision(ad: Any, dtype: torch.dtype | None) -> Any:
    """An adapter over a copy of `ad.model` in `dtype`, for the scaled pass (`ad` itself when no
    copy is needed). The copy is kept per model and remade when any weight changes: an in-place
    edit bumps the parameter's version counter, a move to another device or a reload changes its
    storage. Autocast would instead re-cast every weight at every call, which on a CPU costs more
    than the bf16 matmuls save."""
    model = ad.model
    if dtype is None or dtype == next(model.parameters()).dtype:
        return ad
    versions = tuple((p._version, p.data_ptr()) for p in model.parameters())
    hit = _LOW.get(model)
    if hit is None or hit[0] != versions or hit[1] != dtype:
        low = copy.deepcopy(model).to(dtype).eval().requires_grad_(False)
        low_ad = type(ad)(low)
        low_ad.mask_token_id = ad.mask_token_id
        _LOW[model] = hit = (versions, dtype, low_ad)
    return hit[2]


def _autocast(model: nn.Module, cfg: IGConfig) -> contextlib.AbstractContextManager:
    dev = _device(model)
    if cfg.dtype is None or cfg.dtype == next(model.parameters()).dtype:
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=cfg.dtype)


def _head_chunk(cfg: IGConfig, dev: torch.device) -> int:
    if cfg.head_chunk is not None:
        return cfg.head_chunk
    return 1 << 23 if dev.type == "cpu" else 1 << 28


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

    def to(self, dtype: torch.dtype | None) -> "_CleanCache":
        """The cache cast for a scaled pass in `dtype` (itself when no cast is needed)."""
        if dtype is None or dtype == self.act[0].dtype:
            return self
        cast = lambda ts: [t.to(dtype) for t in ts]
        return _CleanCache(cast(self.k_pre), cast(self.v_pre), self.pre_valid, cast(self.base),
                           cast(self.act), cast(self.after), self.final.to(dtype))


def _gather_pos(x: Tensor, idx: Tensor) -> Tensor:
    """x `[G,S,...]`, idx `[G,T]` -> `[G,T,...]`."""
    shape = idx.shape + x.shape[2:]
    flat = idx.reshape(idx.shape[0], -1, *([1] * (x.dim() - 2))).expand(*shape)
    return x.gather(1, flat)


@torch.no_grad()
def _clean_run(ad: Any, ids: Tensor, p: Tensor, P: int, T: int) -> _CleanCache:
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


def _head(hf: Tensor, W: Tensor, b: Tensor | None, gold: Tensor, valid: Tensor, chunk: int,
          want_grad: bool) -> tuple[Tensor, Tensor, Tensor | None]:
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
    fp = _up(r[:1]).dtype
    z_g = (_up(r) * _up(W[g])).sum(-1) + (0 if b is None else _up(b[g]))  # [R]
    m = z_g.clone()                                   # running max, seeded by the gold logit
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
        if not want_grad:                             # ranks are only wanted from the clean run
            above += (z > z_g[:, None]).sum(-1)
        # the running max, made representable in z's dtype so that `z - m` below is the m used
        m_new = torch.maximum(m, _up(z.amax(-1))).to(z.dtype)
        p = z.sub_(m_new[:, None]).exp_()             # exp(z - m_new), in place
        m_new = _up(m_new)
        rescale = torch.exp(m - m_new)
        s_other = s_other * rescale + p.sum(-1, dtype=fp)
        if want_grad:
            acc = acc * rescale[:, None] + _up(torch.mm(p, Wc))
        m = m_new
        del z, p
    S = s_other + torch.exp(z_g - m)
    logp = (z_g - m - torch.log(S)).reshape(lead) * valid
    rank = (above + 1).reshape(lead)[..., 0]
    if not want_grad:
        return logp, rank, None
    grad = (s_other / S)[:, None] * _up(W[g]) - acc / S[:, None]
    return logp, rank, grad.to(r.dtype).reshape(hf.shape) * valid[..., None]


def _decoder_group(model: nn.Module, ad: Any, items: list[PromptItem], cfg: IGConfig) -> Attributions:
    dev = _device(model)
    answers = [_answer(it, cfg) for it in items]
    seqs = [it.prompt_ids + a[:-1] for it, a in zip(items, answers)]
    limit = ad.max_positions_exact()
    if limit is not None and max(len(s) for s in seqs) > limit:
        raise ValueError(f"sequence longer than {limit} positions (sliding window / position table)")
    ids = _put(_pad(seqs), dev)
    p_host = [len(it.prompt_ids) - 1 for it in items]
    p = _put(torch.tensor(p_host), dev)
    T = max(len(a) for a in answers)
    gold = _put(_pad(answers), dev)
    valid = _put(torch.tensor([[1.0] * len(a) + [0.0] * (T - len(a)) for a in answers]), dev)
    W, b = ad.unembedding(), ad.unembedding_bias()

    cache = _clean_run(ad, ids, p, max(p_host), T)
    logp0, rank0, _ = _head(cache.final, W, b, gold, valid, _head_chunk(cfg, dev), want_grad=False)
    low = _low_precision(ad, cfg.dtype)
    grad_sums = _sweep(low, cache.to(cfg.dtype), p, T, gold, valid, cfg)
    acts = torch.stack(cache.act, dim=1).float()  # [G,L,N], the clean run's own precision
    return Attributions(acts * grad_sums / cfg.steps, logp0.sum(-1).exp(), rank0)


def _sweep(ad: Any, cache: _CleanCache, p: Tensor, T: int, gold: Tensor, valid: Tensor, cfg: IGConfig) -> Tensor:
    """The scaled pass: all layers x steps x prompts at once; returns the gradients of P(gold)
    summed over the steps, `[G,L,N]` fp32."""
    G, m, dev = p.shape[0], cfg.steps, p.device
    W, b = ad.unembedding(), ad.unembedding_bias()
    dtype = cache.act[0].dtype
    a = _put(alphas(m, cfg.rule), dev).to(_up(cache.act[0][:1]).dtype)
    new_pos = p[:, None] + torch.arange(T, device=dev)
    h: Tensor | None = None
    xs: list[Tensor] = []
    with torch.enable_grad():
        pos = ad.positional(new_pos, cache.base[0])
        for layer in range(ad.n_layers):
            if h is not None:
                h = _block(ad, layer, h, pos, cache.k_pre[layer], cache.v_pre[layer], cache.pre_valid)[0]
            x = (a[None, :, None] * cache.act[layer][:, None, :]).to(dtype).requires_grad_(True)  # [G,m,N]
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
    return torch.stack([gr.float().sum(1) for gr in grads], dim=1)


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


def _masked_group(model: nn.Module, ad: Any, items: list[PromptItem], cfg: IGConfig) -> Attributions:
    mask_id = cfg.mask_token_id if cfg.mask_token_id is not None else ad.mask_token_id
    if mask_id is None:
        raise ValueError("masked LM: set IGConfig.mask_token_id (or adapter.mask_token_id)")
    dev, G, m, L = _device(model), len(items), cfg.steps, ad.n_layers
    pos_lists = _mask_positions(items, mask_id)
    if cfg.answer == "first":
        pos_lists = [pl[:1] for pl in pos_lists]
    answers = [_answer(it, cfg) for it in items]
    K = max(len(a) for a in answers)
    ids = _put(_pad([it.prompt_ids for it in items]), dev)
    attn = _put(_pad([[1] * len(it.prompt_ids) for it in items]), dev)
    mpos = _put(_pad(pos_lists), dev)  # padding points at position 0, masked out by `valid`
    gold = _put(_pad(answers), dev)
    valid = _put(torch.tensor([[1.0] * len(a) + [0.0] * (K - len(a)) for a in answers]), dev)
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

    a = _put(alphas(m, cfg.rule), dev).to(acts[0].dtype)
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
        scores.append(acts[layer].float() * grad.float().reshape(m, G, -1).sum(0) / m)
    return Attributions(torch.stack(scores, dim=1), logp0.exp(), rank0)
