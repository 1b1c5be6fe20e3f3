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

import math
from collections.abc import Sequence

import torch
from torch import nn

from atlas.model.adapters import Adapter
from atlas.model.encode import PromptItem
from indexer.attribution.config import Attributions, IGConfig, PromptAttribution, alphas
from indexer.attribution.decoder import decoder_group
from indexer.attribution.masked import masked_group
from indexer.attribution.tensors import answer, device, frozen, put

DEFAULT = IGConfig()

__all__ = [
    "Attributions",
    "IGConfig",
    "PromptAttribution",
    "PromptItem",
    "alphas",
    "attribute",
    "attribute_stacked",
    "default_batch_size",
]


def default_batch_size(device: str | torch.device) -> int:
    """Prompts per pass before anything is measured.

    CPU: 4. A SmolLM2-sized pass (30 layers x 1536, m = 20) keeps ~0.35 GB of autograd state per
    prompt and larger passes are no faster (2 cores are saturated by 4 x 600 rows).
    GPU: 16, a size every supported model fits; the indexer then measures how many fit
    (`indexer.attribution.memory`): bigger passes are faster there, a pass being bound by the host
    launching kernels until it is large.
    """
    return 4 if torch.device(device).type == "cpu" else 16


def attribute(
    model: nn.Module, adapter: Adapter, items: Sequence[PromptItem], cfg: IGConfig = DEFAULT
) -> list[PromptAttribution]:
    """Attribution scores of every FFN neuron of every layer for each item, in input order.

    Example:
        >>> res = attribute(model, adapter, [PromptItem([5, 7, 9], [11])], IGConfig())  # doctest: +SKIP
        >>> res[0].scores.shape                                                        # doctest: +SKIP
        torch.Size([30, 1536])
    """
    return attribute_stacked(model, adapter, items, cfg).to_prompts() if items else []


def attribute_stacked(
    model: nn.Module, adapter: Adapter, items: Sequence[PromptItem], cfg: IGConfig = DEFAULT
) -> Attributions:
    """`attribute`, with the results stacked on the model's device (see `Attributions`)."""
    if not items:
        raise ValueError("no prompts to attribute")
    for it in items:
        if not it.prompt_ids or not it.answer_ids:
            raise ValueError("every PromptItem needs a non-empty prompt and answer")
    order = sorted(range(len(items)), key=lambda i: (len(answer(items[i], cfg)), len(items[i].prompt_ids)))
    group_fn = masked_group if adapter.is_masked_lm else decoder_group
    done: list[int] = []
    parts: list[Attributions] = []
    with frozen(model):
        for idx in passes(order, [len(answer(it, cfg)) for it in items], cfg.batch_size):
            parts.append(group_fn(model, adapter, [items[i] for i in idx], cfg))
            done += idx
    back = put(torch.tensor(sorted(range(len(done)), key=done.__getitem__)), device(model))  # input order
    return Attributions(*(torch.cat([getattr(p, f) for p in parts])[back] for f in ("scores", "p_gold", "gold_rank")))


# --- shared helpers ----------------------------------------------------------------------------


def passes(order: list[int], answer_len: list[int], batch_size: int) -> list[list[int]]:
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
