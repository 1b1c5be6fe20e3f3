"""Values of injected slots: a direction that raises the new object, scaled by a line search.

Direction u (unit, per layer), one of:

* `gradient` (default): the gradient of mean log P(o' first token) at the answer position with
  respect to the layer's FFN output there, on the model before the slot - the steepest way the
  slot can raise the new object's probability through everything above the layer (later blocks,
  the final norm, BERT's head transform); one backward pass, no training;
* `embedding`: the closed form g * (E_o' - E_o) / |...| (g: the final norm's scale, E: output
  embeddings, o: the model's current first answer token), which ignores the layers above.
  On the real SmolLM2 the closed form overshoots into unrelated tokens (BENCHMARKS.md), the
  gradient rises monotonically with the scale.

Length r * s: r the mean residual norm after the slot's layer at the answer position, s the
smallest scale of a doubling grid (then one geometric-midpoint refinement) that makes o' the greedy
answer on every training prompt that a gate opens for (`build`: a gate that overlaps the negatives
gives up the prompts below them, and a longer value could not reach those), times a margin (1.5)
when the margin keeps every such prompt right.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from atlas.model.adapters import Adapter
from atlas.model.encode import PromptItem
from atlas.model.forms import answer_positions
from atlas.model.hooks import hooks
from atlas.model.scoring import Scored, score

GRID = tuple(0.025 * 2**k for k in range(10))  # 0.025 ... 12.8 residual norms
VALUE_FORMS = ("gradient", "embedding")


def value_direction(adapter: Adapter, new_tok: int, old_tok: int | None) -> Tensor:
    """The closed form u `[hidden]` (float64, unit): raises logit(new) against logit(old)."""
    toks = torch.tensor([new_tok] if old_tok is None else [new_tok, old_tok])
    dirs = adapter.answer_directions(toks).double()
    u = dirs[0] - dirs[1] if old_tok is not None else dirs[0]
    return u / u.norm()


def logprob_directions(adapter: Adapter, items: Sequence[PromptItem], layers: Sequence[int], new_tok: int) -> dict:
    """Per layer, the unit gradient `[hidden]` of mean log P(new_tok) at the answer position with
    respect to the layer's FFN output there (float64)."""
    ids, attn, pos = answer_positions(adapter, items)
    dev = next(adapter.model.parameters()).device
    rows, leaves = torch.arange(len(items), device=dev), {}

    def leaf(layer: int):
        def fn(out: Tensor) -> Tensor:
            leaves[layer] = out.detach().requires_grad_(True)
            return leaves[layer]

        return fn

    layers = sorted(set(layers))
    extra = {"token_type_ids": torch.zeros_like(ids).to(dev)} if adapter.is_masked_lm else {}
    with torch.enable_grad(), hooks(adapter, {layer: leaf(layer) for layer in layers}, site="output"):
        logits = adapter.model(input_ids=ids.to(dev), attention_mask=attn.to(dev), **extra).logits
        gain = torch.log_softmax(logits[rows, pos.to(dev)].float(), dim=-1)[:, new_tok].mean()
        grads = torch.autograd.grad(gain, [leaves[layer] for layer in layers])
    out = {}
    for layer, g in zip(layers, grads):
        d = g[rows, pos.to(dev)].double().mean(0).cpu()
        out[layer] = d / d.norm().clamp(min=1e-30)
    return out


def current_answer(scored: Sequence[Scored], new_tok: int) -> int | None:
    """The model's most common first answer token on the prompts, if it is not the new one already."""
    tops = [s.top1 for s in scored if s.top1 != new_tok]
    return max(set(tops), key=tops.count) if tops else None


@torch.no_grad()
def residual_norm(model: torch.nn.Module, adapter: Adapter, items: Sequence[PromptItem], layer: int) -> float:
    """Mean norm of the residual stream after block `layer` at the items' answer positions."""
    ids, attn, pos = answer_positions(adapter, items)
    dev = next(model.parameters()).device
    extra = {"token_type_ids": torch.zeros_like(ids).to(dev)} if adapter.is_masked_lm else {}
    out = model(input_ids=ids.to(dev), attention_mask=attn.to(dev), output_hidden_states=True, **extra)
    hs = out.hidden_states[layer + 1][torch.arange(len(items), device=dev), pos.to(dev)]
    return float(hs.double().norm(dim=-1).mean())


@dataclass(frozen=True)
class ValueChoice:
    scale: float  # the chosen length of v, in units of the residual norm (margin included)
    reached: bool  # some scale made the new object the greedy answer on every training prompt
    hits: int  # training prompts answered with the new object at the chosen scale


def line_search(
    model: torch.nn.Module,
    adapter: Adapter,
    items: Sequence[PromptItem],
    set_scale: Callable[[float], None],
    margin: float = 1.5,
    grid: Sequence[float] = GRID,
) -> ValueChoice:
    """The scale (see the module docstring); if none reaches every item, the best (most hits, then
    highest mean P). `set_scale(s)` writes the slot's value for scale s; the chosen one is written
    when this returns."""

    def hits(s: float) -> tuple[int, float]:
        set_scale(s)
        scored = score(model, adapter, items)
        return sum(x.greedy for x in scored), sum(x.p_gold for x in scored)

    best: tuple[tuple[int, float], float] | None = None
    for k, s in enumerate(grid):
        gain = hits(s)
        if best is None or gain > best[0]:
            best = (gain, s)
        if gain[0] == len(items):
            if k > 0 and hits(mid := (grid[k - 1] * s) ** 0.5)[0] == len(items):
                s = mid
            if margin != 1.0 and hits(s * margin)[0] == len(items):
                return ValueChoice(s * margin, True, len(items))
            set_scale(s)
            return ValueChoice(s, True, len(items))
    assert best is not None
    set_scale(best[1])
    return ValueChoice(best[1], False, best[0][0])
