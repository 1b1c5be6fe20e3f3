"""One fact's slot pairs on a widened model: keys and gates per layer, then the value's line search.

The model must already be widened (`widen.widened`) with room at `first_index`; the pairs are
written in place, so the facts of one injection are built one after the other, each on the model
that already holds the earlier ones (stacking is measured, not assumed). The formulas are in
`atlas.model.inject`'s docstring.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor

from atlas.model.adapters import Adapter
from atlas.model.encode import PromptItem
from atlas.model.inject.guards import GuardInfo, guard_pair
from atlas.model.inject.keys import Gate, Negatives, answer_inputs, discriminant, gate
from atlas.model.inject.values import (
    GRID,
    ValueChoice,
    current_answer,
    keep_of,
    line_search,
    logprob_directions,
    refine_values,
    residual_norm,
    value_direction,
)
from atlas.model.inject.widen import SlotPair, set_pair_value, write_pair
from atlas.model.scoring import score


@dataclass(frozen=True)
class BuildParams:
    """The method's constants. Their defaults and flags are defined once, on
    `atlas.jobs.specs.InjectSpec` (same field names), which fills this by name."""

    ridge: float
    pos_scatter: float
    hard_negatives: int
    hard_rounds: int
    gate_low: float
    gate_high: float
    gate_overlap: str  # "silent" or "open" (`keys.gate`)
    sharpness: float
    margin: float
    max_scale: float  # the value's greatest length in residual norms (0: none; `values.GRID` tops at 12.8)
    value: str  # "gradient" or "embedding" (`values` says why gradient is the default)
    value_steps: int  # `values.refine_values` steps where the line search reaches not every prompt
    keep_weight: float  # weight of the keep prompts' KL divergence in `refine_values` (0: none)
    keep_gold: float  # weight of the change of the atlas's objects' log P on the keep prompts (0: none)
    value_goal: float  # `refine_values` for every fact, until each prompt's answer has this probability (0: off)

    @classmethod
    def of(cls, spec: object) -> BuildParams:
        """The fields of `spec` (an InjectSpec) that the method reads."""
        return cls(**{f.name: getattr(spec, f.name) for f in fields(cls)})


@dataclass
class FactSlots:
    """What building one fact gave: its pairs (one per layer) and how they were chosen."""

    pairs: list[SlotPair]
    new_tok: int
    old_tok: int | None
    gates: list[Gate] = field(default_factory=list)
    value: ValueChoice | None = None
    residual: float = 0.0
    guards: list[tuple[GuardInfo, SlotPair | None]] = field(default_factory=list)  # per pair: its guard


def build_fact(
    model: torch.nn.Module,
    adapter: Adapter,
    train: Sequence[PromptItem],
    negatives: dict[int, Negatives],
    layers: Sequence[int],
    first_index: int,
    params: BuildParams,
    key_at: Sequence[int] | None = None,
    keep: Sequence[PromptItem] = (),
    against: Sequence[int] = (),
    guard_inputs: dict[int, tuple[Tensor, Tensor]] | None = None,
    extra: tuple[Sequence[PromptItem], Sequence[int] | None] = ((), None),
    keep_golds: Sequence[tuple[int, int]] = (),
) -> FactSlots:
    """Pairs for the fact whose training prompts `train` are encoded with its NEW object as answer;
    `negatives[layer]` are the hard negatives' FFN inputs; `key_at`: where the keys read each
    training prompt (None: its answer position; else the subject's last token); `keep`: prompts
    whose next-token distributions the values should leave alone, and `keep_golds` (row in `keep`,
    token) the atlas's objects whose log-probabilities they hold there (`values.Keep`); `against`: the
    first tokens of the objects the fact replaces (the atlas's facts of its subject and relation),
    which its values push down; `guard_inputs[layer]`: FFN inputs (every position) of other names'
    prompts that the fact's pairs get guards against (`guards`), at the indices after its own
    pairs, and of prompts where no guard may open (the injection's training prompts); `extra`: more
    prompts of the fact (the training prompts in other contexts) and where the keys read them, on
    which the value is fitted too where a gate opens. Written into the model."""
    new_tok = train[0].answer_ids[0]
    against = [t for t in against if t != new_tok]
    old_tok = against[0] if against else current_answer(score(model, adapter, train), new_tok)
    fit, fit_at = [*train, *extra[0]], None if key_at is None else [*key_at, *(extra[1] or [])]
    units = value_directions(adapter, fit, layers, new_tok, old_tok, params.value, fit_at, against)
    pos = answer_inputs(model, adapter, train, layers, at=key_at)
    negatives = _with_continuations(model, adapter, train, layers, negatives)
    out = FactSlots([], new_tok, old_tok, residual=residual_norm(model, adapter, train, max(layers)))
    for i, layer in enumerate(layers):
        hard = (params.hard_negatives, params.hard_rounds)
        w = discriminant(pos[layer], negatives[layer], params.ridge, params.pos_scatter, *hard)
        g = gate(pos[layer] @ w, negatives[layer].scores(w), params.gate_low, params.gate_high, params.gate_overlap)
        pair = SlotPair(layer, first_index + 2 * i, w, g.threshold, g.slope, torch.zeros_like(w), params.sharpness)
        write_pair(adapter, pair)
        out.pairs.append(pair)
        out.gates.append(g)

    def set_scale(s: float) -> None:
        for p in out.pairs:
            set_pair_value(adapter, p, units[p.layer] * (out.residual * s / len(out.pairs)))

    # the scale is searched on the training prompts that some gate opens for: where a gate gave up
    # prompts below the negatives, a longer value would only push harder wherever else it opens
    reach = _opened(out.pairs, pos, train) or list(train)
    reach += _opened(out.pairs, answer_inputs(model, adapter, extra[0], layers, at=extra[1]), extra[0])
    out.value = _fit_value(model, adapter, out, reach, set_scale, (keep, keep_golds), params)
    # hits: of the training prompts (the fit also counted their prefixed readings)
    out.value = replace(out.value, hits=sum(s.greedy for s in score(model, adapter, train)))
    if guard_inputs:
        _add_guards(adapter, out, pos, negatives, guard_inputs, first_index + 2 * len(layers), params)
    return out


def _fit_value(
    model: torch.nn.Module,
    adapter: Adapter,
    out: FactSlots,
    reach: Sequence[PromptItem],
    set_scale: Callable[[float], None],
    keep: tuple[Sequence[PromptItem], Sequence[tuple[int, int]]],
    params: BuildParams,
) -> ValueChoice:
    """The value of `out`'s pairs on the prompts `reach`: the line search (within `--max-scale`),
    then the Adam steps where the search fell short, or for every fact with a goal or keep prompts
    (`values`; `keep`: the prompts and their golds)."""
    grid = [s for s in GRID if not params.max_scale or s <= params.max_scale] or [params.max_scale]
    choice = line_search(model, adapter, reach, set_scale, params.margin, grid)
    kept = keep_of(model, adapter, reach, keep[0], out.pairs, params.keep_weight, keep[1], params.keep_gold)
    if params.value_steps and (not choice.reached or kept is not None or params.value_goal):
        longest = out.residual * params.max_scale / len(out.pairs) if params.max_scale else None
        goal = params.value_goal or None
        choice = refine_values(
            model, adapter, reach, out.pairs, params.value_steps, choice, keep=kept, max_norm=longest, goal=goal
        )
    return choice


def _opened(pairs: Sequence[SlotPair], xs: dict[int, Tensor], items: Sequence[PromptItem]) -> list[PromptItem]:
    """The items (FFN inputs `xs[layer]` `[n, hidden]` where the keys read them) some pair's gate opens for."""
    opens = torch.zeros(len(items), dtype=torch.bool)
    for p in pairs:
        opens |= xs[p.layer] @ p.key > p.threshold
    return [it for it, o in zip(items, opens.tolist()) if o]


def _add_guards(
    adapter: Adapter,
    out: FactSlots,
    pos: dict[int, Tensor],
    negatives: dict[int, Negatives],
    guard_inputs: dict[int, tuple[Tensor, Tensor]],
    index: int,
    params: BuildParams,
) -> None:
    """A guard for each of the fact's final pairs that opens on a namesake (`guards`), written at
    `index`, `index + 2`, ... with minus the pair's value times the share `guards` fits, shut on the
    fact's reading points."""
    for main in [p for p in out.pairs if p.layer in guard_inputs]:
        names, shut = guard_inputs[main.layer]
        guard, info = guard_pair(
            main,
            torch.cat([pos[main.layer], shut.to(pos[main.layer])]),
            names,
            negatives[main.layer],
            index,
            params.ridge,
            params.pos_scatter,
            params.gate_low,
            params.gate_high,
        )
        out.guards.append((info, guard))
        if guard is not None:
            write_pair(adapter, guard)
            out.pairs.append(guard)
            index += 2


def _with_continuations(
    model: torch.nn.Module, adapter: Adapter, train: Sequence[PromptItem], layers: Sequence[int], negatives: dict
) -> dict[int, Negatives]:
    """Add to the negatives the positions where a decoder spells the rest of a multi-token object:
    a slot that fired there would push the first token again instead of letting the word finish."""
    if adapter.is_masked_lm:
        return negatives
    cont = [
        PromptItem(list(it.prompt_ids) + list(it.answer_ids[:k]), list(it.answer_ids[k:]))
        for it in train
        for k in range(1, len(it.answer_ids))
    ]
    if not cont:
        return negatives
    xs = answer_inputs(model, adapter, cont, layers)
    return {layer: negatives[layer].plus(xs[layer]) for layer in layers}


def value_directions(
    adapter: Adapter,
    items: Sequence[PromptItem],
    layers: Sequence[int],
    new_tok: int,
    old_tok: int | None,
    form: str,
    at: Sequence[int] | None = None,
    against: Sequence[int] = (),
) -> dict[int, Tensor]:
    """Unit value directions per layer (`values`): the log-probability gradient, against the
    replaced objects' tokens `against` (at the positions `at` where the slot is keyed elsewhere
    than the answer), or the closed form g * (E_new - E_old)
    where the final norm maps the residual stream to the logits elementwise (decoders, answer
    position; BERT's post-norm blocks and head transform always take the gradient)."""
    if form == "embedding" and at is None and adapter.final_norm_scale() is not None:
        u = value_direction(adapter, new_tok, old_tok)
        return {layer: u for layer in layers}
    return logprob_directions(adapter, items, layers, new_tok, at, against)
