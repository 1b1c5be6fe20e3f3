"""Values of injected slots: a direction that raises the new object, scaled by a line search.

Direction u (unit, per layer), one of:

* `gradient` (default): the gradient of mean log P(o' first token) - mean log P(o first token) at
  the answer position with respect to the layer's FFN output there, on the model before the slot,
  o the objects the fact replaces (the atlas's facts of its subject and relation; the term is
  absent without one) - the steepest way the slot can raise the new object's probability against
  the old one through everything above the layer (later blocks, the final norm, BERT's head
  transform): on the training prompts the old object is often no rival, but on a paraphrase it
  may be the model's answer (on SmolLM2's user file the held-out prompts where the model gave the
  true object went from 12 to 13 of 18); one backward pass, no training;
* `embedding`: the closed form g * (E_o' - E_o) / |...| (g: the final norm's scale, E: output
  embeddings, o: the model's current first answer token), which ignores the layers above.
  On the real SmolLM2 the closed form overshoots into unrelated tokens (BENCHMARKS.md), the
  gradient rises monotonically with the scale.

Length r * s: r the mean residual norm after the slot's layer at the answer position, s the
smallest scale of a doubling grid (then one geometric-midpoint refinement) that makes o' the greedy
answer on every training prompt that a gate opens for (`build`: a gate that overlaps the negatives
gives up the prompts below them, and a longer value could not reach those), times a margin (1.5)
when the margin keeps every such prompt right. `--max-scale S` (1.6) ends the grid at S: a key is
silent on every text it was shown, but a text it was never shown may open it, and what it adds
there is its value (SmolLM2, BENCHMARKS.md: uncapped, one fact's slot and guard, 12.8 residual
norms long, opened on "had seen" in unseen general text, for "Holy See", and perplexity rose 37 %;
with S = 3.2, 0.15 %, but "The Big Surprise" opened on "surprising" and "surprises" and added
1.5 %; with S = 1.6, 0.18 %, at 0-1.5 points of held-out top-1). The Adam steps below keep every
value within the same length.

Then `refine_values` optimises the fact's values and nothing else, at most `value_steps` Adam steps
from the line search's best: with a goal G (`--value-goal`, 0.99 by default) for every fact, until
each prompt answers the new object with probability G, where the line search stops at the bare
greedy win (a held-out wording, read through the same value, needs the margin: on SmolLM2 this
and the prefixes below raise held-out top-1 from 40 % to 69 % on a user file, BENCHMARKS.md);
with G = 0 only where no scale reaches every such prompt (a single direction cannot serve
paraphrases that need different ones), stopping once the new object is the greedy answer on all of
them. The prompts include the training prompts read after neutral opening sentences
(`--value-prefixes`, `atlas.jobs.inject_prompts.PREFIXES`) where a gate opens there. The keys and
gates stay as built, so where the slot is silent nothing changes. The loss is a hinge on each
prompt's answer,

    mean_i max(0, -log P_i(new answer tokens) - log(1 / G)),

(G: the goal, or `GOAL` = 0.9 without one), so a prompt whose new answer already has probability G
pulls no further (pushing the answers
past what they need is what moves everything else the slot touches). With keep prompts (`Keep`,
`--keep-weight W`: prompts about a subject-keyed fact's subject, where its slot also fires) it adds

    W x mean_j KL(before_j || now_j)  +  W_g x mean_(j,o) (log P_j(o) - log P_j,before(o))^2

of their next-token distributions and of the atlas's objects o for the subject on them
(`--keep-gold W_g`; every part is a mean, so a weight weighs a keep prompt against a training
prompt whatever their numbers), and the steps run for every fact: once the answers sit at
GOAL only the divergence moves, and the refinement stops when the new object wins everywhere and
`PATIENCE` steps bring no 1 % lower loss, keeping the best state (most answers, then lowest loss).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from torch.autograd.functional import vjp

from atlas.model.adapters import Adapter
from atlas.model.encode import PromptItem
from atlas.model.forms import answer_positions
from atlas.model.hooks import hooks
from atlas.model.inject.widen import SlotPair, is_gated, pair_values, set_pair_value
from atlas.model.scoring import AnswerBatch, Scored, answer_batch, answer_logprobs, score

GRID = tuple(0.025 * 2**k for k in range(10))  # 0.025 ... 12.8 residual norms
PATIENCE = 10  # refinement with keep prompts: steps without a 1 % lower loss before it stops
GOAL = 0.9  # probability of its new answer at which a training prompt stops pulling the values
VALUE_FORMS = ("gradient", "embedding")


def value_direction(adapter: Adapter, new_tok: int, old_tok: int | None) -> Tensor:
    """The closed form u `[hidden]` (float64, unit): raises logit(new) against logit(old)."""
    toks = torch.tensor([new_tok] if old_tok is None else [new_tok, old_tok])
    dirs = adapter.answer_directions(toks).double()
    u = dirs[0] - dirs[1] if old_tok is not None else dirs[0]
    return u / u.norm()


def logprob_directions(
    adapter: Adapter,
    items: Sequence[PromptItem],
    layers: Sequence[int],
    new_tok: int,
    at: Sequence[int] | None = None,
    against: Sequence[int] = (),
) -> dict:
    """Per layer, the unit gradient `[hidden]` of mean log P(new_tok) - mean log P(`against`) (the
    first tokens of the objects the fact replaces, where the atlas knows them) at the answer
    position with respect to the layer's FFN output there, or at the positions `at` (one per item:
    a subject-keyed slot writes there, and attention carries it to the answer) (float64)."""
    ids, attn, pos = answer_positions(adapter, items)
    read = pos if at is None else torch.tensor(list(at), dtype=torch.long)
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
        logp = torch.log_softmax(logits[rows, pos.to(dev)].float(), dim=-1)
        gain = logp[:, new_tok].mean() - (logp[:, list(against)].mean() if against else 0.0)
        grads = torch.autograd.grad(gain, [leaves[layer] for layer in layers])
    out = {}
    for layer, g in zip(layers, grads):
        d = g[rows, read.to(dev)].double().mean(0).cpu()
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
    reached: bool  # the new object is the greedy answer on every prompt it was chosen on
    hits: int  # prompts answered with the new object with the chosen value (`build`: training prompts)
    steps: int = 0  # `refine_values` steps taken after the line search (0: none needed or allowed)


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
            longer = min(s * margin, grid[-1])  # never past the grid's (the longest allowed) end
            if longer > s and hits(longer)[0] == len(items):
                return ValueChoice(longer, True, len(items))
            set_scale(s)
            return ValueChoice(s, True, len(items))
    assert best is not None
    set_scale(best[1])
    return ValueChoice(best[1], False, best[0][0])


@dataclass(frozen=True)
class Keep:
    """Prompts whose next-token distributions a fact's values should leave as they were: prompts
    about its subject (`atlas.jobs.inject_prompts.keep_items`), on which a subject-keyed slot fires
    too. `reference` `[n, vocab]`: their log-probabilities without the fact's pairs; `weight`: of
    their mean KL divergence. `golds` `[k, 2]` (prompt row, token): the first tokens of the atlas's
    objects for the subject on those prompts, whose log-probabilities the values hold (mean squared
    change, weight `gold_weight`): the KL weighs a token by its probability before, so an object at
    P = 4e-7 that a value raises 1,000-fold does not enter it (BENCHMARKS.md)."""

    items: Sequence[PromptItem]
    reference: Tensor
    weight: float
    golds: Tensor | None = None
    gold_weight: float = 0.0

    def loss(self, now: Tensor) -> Tensor:
        """The keep part of the refinement's loss for the keep prompts' log-probabilities `now` `[n, vocab]`."""
        ref = self.reference.to(now.device)
        out = self.weight * (ref.exp() * (ref - now)).sum(-1).mean() if self.weight else now.new_zeros(())
        if self.golds is not None and self.gold_weight:
            rows, toks = self.golds[:, 0].to(now.device), self.golds[:, 1].to(now.device)
            out = out + self.gold_weight * ((now[rows, toks] - ref[rows, toks]) ** 2).mean()
        return out


def _joint_logprobs(
    model: torch.nn.Module, adapter: Adapter, items: Sequence[PromptItem], keep: Sequence[PromptItem]
) -> tuple[AnswerBatch, Tensor, Tensor]:
    """One pass over the training items and the keep prompts (a refinement step is launch-bound on a
    GPU: one batch, not two): the batch, the items' answer log-probabilities `[n, T, vocab]`
    (teacher-forced) and the keep prompts' next-token log-probabilities `[m, vocab]`."""
    b = answer_batch([*items, *keep], adapter.is_masked_lm, adapter.mask_token_id)
    dev = next(model.parameters()).device
    logp = answer_logprobs(model, adapter, b, input_ids=b.ids.to(dev))
    return b, logp[: len(items)], logp[len(items) :, 0]


@torch.no_grad()
def keep_of(
    model: torch.nn.Module,
    adapter: Adapter,
    items: Sequence[PromptItem],
    keep: Sequence[PromptItem],
    pairs: Sequence[SlotPair],
    weight: float,
    golds: Sequence[tuple[int, int]] = (),
    gold_weight: float = 0.0,
) -> Keep | None:
    """The `Keep` of the prompts `keep` and their `golds` ((prompt row, token), `Keep`; None
    without a term to weigh), its reference read with the pairs' values zeroed, in the same batch
    with `items` as `value_gradients` reads them (so that the divergence starts at 0 exactly)."""
    gold_weight = gold_weight if golds else 0.0
    if not keep or (weight <= 0 and gold_weight <= 0):
        return None
    if weight <= 0:  # the golds' term alone: a prompt without golds would cost every step for nothing
        rows = sorted({r for r, _ in golds})
        keep, golds = [keep[r] for r in rows], [(rows.index(r), t) for r, t in golds]
    values = [p.value for p in pairs]
    for p in pairs:
        set_pair_value(adapter, p, torch.zeros_like(p.value))
    try:
        ref = _joint_logprobs(model, adapter, items, keep)[2]
    finally:
        for p, v in zip(pairs, values):
            set_pair_value(adapter, p, v)
    gold = torch.tensor(list(golds), dtype=torch.long).reshape(-1, 2) if gold_weight else None
    return Keep(keep, ref, max(weight, 0.0), gold, gold_weight)


def value_gradients(
    model: torch.nn.Module,
    adapter: Adapter,
    items: Sequence[PromptItem],
    pairs: Sequence[SlotPair],
    keep: Keep | None = None,
    goal: float = GOAL,
) -> tuple[float, int, list[Tensor]]:
    """The loss of the module docstring: the mean over `items` of the hinge max(0, -log P(answer
    tokens) - log(1 / goal)) (teacher-forced), plus the keep prompts' part (`Keep.loss`); how many
    items are answered greedily (`Scored.greedy`, from the same pass); and the loss's gradient
    `[hidden]` (float64, CPU) with respect to each pair's value v: the gradients of its two value
    slots pulled back through `widen.pair_values`, the map from v to those slots."""
    weights = {p.layer: adapter.ffn_out(p.layer).weight for p in pairs}
    was = {layer: w.requires_grad for layer, w in weights.items()}
    for w in weights.values():
        w.requires_grad_(True)
    try:
        with torch.enable_grad():
            b, logp, now = _joint_logprobs(model, adapter, items, keep.items if keep is not None else [])
            gold, valid = b.gold[: len(items)].to(logp.device), b.valid[: len(items)].to(logp.device)
            nll = -(logp.gather(2, gold[..., None])[..., 0] * valid).sum(1)  # [n]
            loss = torch.relu(nll + math.log(goal)).mean()
            if keep is not None:
                loss = loss + keep.loss(now)
            grads = torch.autograd.grad(loss, list(weights.values()))
    finally:
        for layer, w in weights.items():
            w.requires_grad_(was[layer])
    hits = int(((logp.detach().argmax(-1) == gold) | ~valid).all(dim=1).sum())
    by_layer, gated = dict(zip(weights, grads)), is_gated(adapter)
    out = []
    for p in pairs:
        g = by_layer[p.layer]
        rows = (g if adapter.slots_are_rows else g.T)[p.index : p.index + 2].double().cpu()  # [2, hidden]
        slots = lambda v, p=p: pair_values(replace(p, value=v), gated)  # noqa: E731
        out.append(vjp(slots, p.value.double(), rows)[1])
    return float(loss.detach()), hits, out


def refine_values(
    model: torch.nn.Module,
    adapter: Adapter,
    items: Sequence[PromptItem],
    pairs: Sequence[SlotPair],
    steps: int,
    choice: ValueChoice,
    lr: float = 0.05,
    keep: Keep | None = None,
    max_norm: float | None = None,
    goal: float | None = None,
) -> ValueChoice:
    """Up to `steps` Adam steps on the pairs' values (see the module docstring), each of step size
    `lr` x the values' length at the start; the values left written are the best seen (most greedy
    hits, then lowest loss). Without `keep` it stops once every item is answered, or with `goal`
    once every item's answer has at least that probability (the hinge, at `goal` instead of `GOAL`,
    is 0); with `keep`, it goes on lowering the keep prompts' divergence (the answers' hinge holds
    them at the goal) until `PATIENCE` steps bring no 1 % lower loss. A value longer than
    `max_norm` after a step is shortened to it."""
    values = [p.value.double().clone().requires_grad_(True) for p in pairs]
    opt = torch.optim.Adam(values, lr=lr * float(torch.stack([v.detach().norm() for v in values]).norm()))
    best: tuple[int, float, list[Tensor]] | None = None
    stale = 0  # steps since the best gained a hit or lost 1 % of its loss
    for taken in range(steps + 1):
        loss, hits, grads = value_gradients(model, adapter, items, pairs, keep, goal or GOAL)
        gained = best is None or hits > best[0] or loss < -best[1] - 0.01 * abs(best[1])
        stale = 0 if gained else stale + 1
        if best is None or (hits, -loss) > best[:2]:
            best = (hits, -loss, [v.detach().clone() for v in values])
        answered = best[0] == len(items) and (goal is None or keep is not None or best[1] >= 0.0)
        if (answered and (keep is None or stale >= PATIENCE)) or taken == steps:
            break
        opt.zero_grad()
        for v, g in zip(values, grads):
            v.grad = g
        opt.step()
        for p, v in zip(pairs, values):
            if max_norm is not None and float(v.detach().norm()) > max_norm:
                with torch.no_grad():
                    v.mul_(max_norm / v.norm())
            set_pair_value(adapter, p, v.detach().clone())
    assert best is not None
    for p, v in zip(pairs, best[2]):
        set_pair_value(adapter, p, v)
    return ValueChoice(choice.scale, best[0] == len(items), best[0], taken)
