"""Values of injected slots: the closed-form direction that raises the new object, scaled by a line search.

The residual stream h reaches the logits through the final norm, logit_t = E_t . (g * h / rms(h)),
so adding v to h changes logit(new) - logit(old) by (g * (E_new - E_old)) . v / rms(h). The value
direction is therefore u = g * (E_new - E_old) / |...| (`Adapter.answer_directions`: the output
embedding times the final norm's scale), with `old` the model's current first answer token on the
fact's prompts. Its length is r * s: r the mean residual norm at the slot's layer on those prompts,
s the smallest of a geometric grid that makes the new object the greedy answer on every training
prompt, times a margin (1.5: the later layers and the norm bend a step that only just wins).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from atlas.model.adapters import Adapter
from atlas.model.encode import PromptItem
from atlas.model.scoring import Scored, score

GRID = tuple(0.02 * 2 ** (k / 2) for k in range(17))  # 0.02 ... 5.12, steps of sqrt(2)


def value_direction(adapter: Adapter, new_tok: int, old_tok: int | None) -> Tensor:
    """u `[hidden]` (float64, unit): raises logit(new) against logit(old) most per unit length."""
    toks = torch.tensor([new_tok] if old_tok is None else [new_tok, old_tok])
    dirs = adapter.answer_directions(toks).double()
    u = dirs[0] - dirs[1] if old_tok is not None else dirs[0]
    return u / u.norm()


def current_answer(scored: Sequence[Scored], new_tok: int) -> int | None:
    """The model's most common first answer token on the prompts, if it is not the new one already."""
    tops = [s.top1 for s in scored if s.top1 != new_tok]
    return max(set(tops), key=tops.count) if tops else None


@torch.no_grad()
def residual_norm(model: torch.nn.Module, adapter: Adapter, items: Sequence[PromptItem], layer: int) -> float:
    """Mean norm of the residual stream after block `layer` at the items' answer positions."""
    norms = []
    dev = next(model.parameters()).device
    for it in items:
        ids = torch.tensor([it.prompt_ids], device=dev)
        extra = {"token_type_ids": torch.zeros_like(ids)} if adapter.is_masked_lm else {}
        hs = model(input_ids=ids, output_hidden_states=True, **extra).hidden_states[layer + 1][0]
        pos = list(it.prompt_ids).index(adapter.mask_token_id) if adapter.is_masked_lm else len(it.prompt_ids) - 1
        norms.append(float(hs[pos].norm()))
    return sum(norms) / len(norms)


@dataclass(frozen=True)
class ValueChoice:
    scale: float  # the chosen length of v, in units of the residual norm (margin included)
    reached: bool  # some grid point made the new object the greedy answer on every training prompt
    hits: int  # training prompts answered with the new object at the smallest such point (or the best)


def line_search(
    model: torch.nn.Module,
    adapter: Adapter,
    items: Sequence[PromptItem],
    set_scale: Callable[[float], None],
    margin: float = 1.5,
    grid: Sequence[float] = GRID,
) -> ValueChoice:
    """Smallest grid scale s with every item greedy-correct, times `margin` (see the module
    docstring); if none reaches all, the best (most hits, then highest mean P). `set_scale(s)`
    writes the slot's value for scale s; the chosen one is written when this returns."""
    best: tuple[tuple[int, float], float] | None = None
    for s in grid:
        set_scale(s)
        scored = score(model, adapter, items)
        gain = (sum(x.greedy for x in scored), sum(x.p_gold for x in scored))
        if best is None or gain > best[0]:
            best = (gain, s)
        if gain[0] == len(items):
            set_scale(s * margin)
            return ValueChoice(s * margin, True, gain[0])
    assert best is not None
    set_scale(best[1])
    return ValueChoice(best[1], False, best[0][0])
