"""What an injection is judged on, measured before and after on the same working copy.

* efficacy: the new object is the greedy answer on the fact's training prompts (the prompts the
  slot was built on), per fact and pooled over prompts;
* generalisation: the same on its held-out prompts (templates the slot never saw), and the share
  of them on which a slot opens (`heldout_firing`): a key that stays shut there, or a value too
  weak where it opens, are two different failures; and the same over the held-out prompts whose
  first answer token was the object the fact replaces before (`generalisation_where_known`, of
  `heldout_known` prompts): a paraphrase that the model does not complete with the old object
  ("[X]'s state government sits in" -> " the") is one it may not read as the relation at all;
* specificity, over every other fact of the run (up to `audit_facts`; `untouched`: facts sharing an
  injected subject and relation, or restating one that an injected fact replaces, left out): the
  mean |dP/P| of P(gold), the share of right (greedy) answers kept, and the slot firing rate - the
  share of those prompts on which any injected pair is above its threshold
  (clamp(a (w . x - b), 0, 1) > 0 at any position of the prompt); and by name, the facts whose
  right answers were lost and the `MOVED_MOST` prompts moved most (a mean |dP/P| is often one
  prompt's rise from P = 1e-7);
* the same for the atlas's facts about an injected subject in other relations (`same_subject`):
  a slot keyed on the subject (`--key-position subject`) fires on all of them, and its value may
  move their answers too;
* fluency: perplexity of the bundled general text (left-to-right models), the whole text and the
  part after the first `NEGATIVE_TEXT_CHARS` characters (never used as negatives);
* stacking: every figure is measured with all the injection's facts (and earlier injections) in
  the model at once; each fact's efficacy right after its own slot was built is kept beside it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from atlas.db.neurons import Fact
from atlas.jobs.evaluate import GENERAL_TEXT, EvalSet
from atlas.model.encode import PromptItem
from atlas.model.inject import SlotPair
from atlas.model.inject.keys import answer_inputs, text_chunk
from atlas.model.loading import LoadedModel
from atlas.model.scoring import Scored, score, text_nll

NEGATIVE_TEXT_CHARS = 2000  # the start of the general text serves as negatives; fluency is also shown without it


def untouched(facts: Iterable[Fact], replaced: dict[tuple[str, str], list[str]]) -> list[Fact]:
    """The facts an injection should leave as they were, given what it replaces ((subject,
    relation) -> the old objects): not one of the replaced pairs, and not a restatement of one (the
    same subject and old object in another relation: 'P36 Indiana -> Indianapolis' restates a
    user's 'U1 Indiana -> Indianapolis', which an injection of U1 Indiana is meant to change)."""
    restated = {(s, o) for (s, _), objects in replaced.items() for o in objects}
    return [f for f in facts if (f.subject, f.relation_id) not in replaced and (f.subject, f.object) not in restated]


@dataclass
class AuditPlan:
    """Encoded prompts: each injected fact's training and held-out prompts (answer = new object),
    and the other facts of the run (answer = gold)."""

    train: list[list[PromptItem]]
    heldout: list[list[PromptItem]]
    others: EvalSet
    same_subject: EvalSet = field(default_factory=lambda: EvalSet("same_subject"))
    # per held-out prompt, in `heldout`'s order: the first tokens of the objects its fact replaces
    replaced_tokens: list[tuple[int, ...]] = field(default_factory=list)


def measure(lm: LoadedModel, plan: AuditPlan, pairs: Sequence[SlotPair] = ()) -> dict[str, Any]:
    """Scores of every prompt of the plan on the model as it is, the fluency NLLs, and (with
    `pairs`) the share of the other facts' prompts on which a pair fires."""
    flat_train = [it for items in plan.train for it in items]
    flat_held = [it for items in plan.heldout for it in items]
    out: dict[str, Any] = {
        "train": score(lm.model, lm.adapter, flat_train) if flat_train else [],
        "heldout": score(lm.model, lm.adapter, flat_held) if flat_held else [],
        "others": plan.others.measure(lm) if plan.others.items else [],
        "same_subject": plan.same_subject.measure(lm) if plan.same_subject.items else [],
        "fluency": None,
    }
    if not lm.adapter.is_masked_lm:
        text = GENERAL_TEXT.read_text()
        chunk = text_chunk(lm.adapter)  # fewer tokens where the model's positions end sooner (GPT-2)
        out["fluency"] = (
            text_nll(lm.model, lm.tokenizer, text, chunk),
            text_nll(lm.model, lm.tokenizer, text[NEGATIVE_TEXT_CHARS:], chunk),
        )
    out["firing"] = firing(lm, plan.others.items, pairs) if pairs else None
    out["heldout_firing"] = firing(lm, flat_held, pairs) if pairs else None
    out["same_subject_firing"] = firing(lm, plan.same_subject.items, pairs) if pairs else None
    return out


@torch.no_grad()
def firing(lm: LoadedModel, items: Sequence[PromptItem], pairs: Sequence[SlotPair]) -> list[bool]:
    """Per item: does any pair's clamp exceed 0 at any of its positions, where its guard (a pair
    that `cancels` it) stays shut? (A slot open before the answer position reaches it through
    attention: a subject-keyed slot opens at the subject.)"""
    if not items:
        return []
    layers = sorted({p.layer for p in pairs})
    xs = answer_inputs(lm.model, lm.adapter, items, layers, every_position=True)
    owner = torch.cat([torch.full((len(it.prompt_ids),), k) for k, it in enumerate(items)])
    fired = torch.zeros(len(owner), dtype=torch.bool)
    guard = {id(p.cancels): p for p in pairs if p.cancels is not None}

    def opens(p: SlotPair) -> torch.Tensor:
        return (xs[p.layer] @ p.key.double()) > p.threshold

    for p in pairs:
        if p.cancels is None:
            fired |= opens(p) & ~opens(guard[id(p)]) if id(p) in guard else opens(p)
    per_item = torch.zeros(len(items), dtype=torch.long).index_add_(0, owner, fired.long())
    return (per_item > 0).tolist()


def _split(scored: list[Scored], groups: Sequence[Sequence[Any]]) -> list[list[Scored]]:
    out, at = [], 0
    for g in groups:
        out.append(scored[at : at + len(g)])
        at += len(g)
    return out


def _rate(xs: Sequence[bool]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _ppl(nll: tuple[float, int]) -> float:
    return math.exp(nll[0] / nll[1])


def mean_abs_rel_dp(before: Sequence[Scored], after: Sequence[Scored]) -> float | None:
    """The mean |dP/P| of P(gold) over the prompts with P(gold) > 0 before (None: there are none)."""
    rel = [abs(a.p_gold - b.p_gold) / b.p_gold for b, a in zip(before, after) if b.p_gold > 0]
    return sum(rel) / len(rel) if rel else None


MOVED_MOST = 5  # prompts named per group of the audit, most moved first


def lost_answers(owners: Sequence[Fact], before: Sequence[Scored], after: Sequence[Scored]) -> dict[str, int]:
    """The facts whose right (greedy) answers a change lost, with how many of their prompts each."""
    lost: dict[str, int] = {}
    for who, b, a in zip(owners, before, after):
        if b.greedy and not a.greedy:
            lost[who.name] = lost.get(who.name, 0) + 1
    return lost


def moved_most(
    owners: Sequence[Fact], before: Sequence[Scored], after: Sequence[Scored], k: int = MOVED_MOST
) -> list[dict[str, Any]]:
    """The `k` prompts with the largest |dP/P| of P(gold), with their facts: what decides a mean
    |dP/P|, where one prompt whose P(gold) rises from 1e-4 to 0.1 adds as much as a thousand that
    fall by 100 %."""
    moved = [
        (abs(a.p_gold - b.p_gold) / b.p_gold, who, b.p_gold, a.p_gold)
        for who, b, a in zip(owners, before, after)
        if b.p_gold > 0
    ]
    return [
        {"fact": who.name, "rel_dp": _sig(r), "p_before": _sig(pb), "p_after": _sig(pa)}
        for r, who, pb, pa in sorted(moved, key=lambda m: m[0], reverse=True)[:k]
    ]


def _sig(x: float) -> float:
    """`x` to 4 significant digits: a P(gold) of 4e-7 is the point, not 0."""
    return float(f"{x:.4g}")


def _specificity(
    name: str, before: list[Scored], after: list[Scored], fired: list[bool] | None, owners: Sequence[Fact]
) -> dict:
    """A group of facts the injection should leave alone: its prompts' mean |dP/P| of P(gold) (and
    Dai et al.'s form, mean |dP| / mean P: a ratio of means, which one prompt whose P(gold) rises
    from 1e-7 cannot decide alone), the right (greedy) answers kept, and the share of its prompts
    on which a slot fires; and which facts those figures come from (`owners`, the fact of each
    prompt): the right answers lost and the prompts moved most."""
    total, moved = sum(b.p_gold for b in before), sum(abs(a.p_gold - b.p_gold) for b, a in zip(before, after))
    right = [a.greedy for b, a in zip(before, after) if b.greedy]
    return {
        f"{name}_prompts": len(after),
        f"{name}_mean_abs_rel_dp": mean_abs_rel_dp(before, after),
        f"{name}_change_of_means": moved / total if total else None,
        f"{name}_right_before": len(right),
        f"{name}_right_kept": sum(right),
        f"{name}_kept": _rate(right),
        f"{name}_firing_rate": _rate(fired or []),
        f"{name}_lost": lost_answers(owners, before, after),
        f"{name}_moved_most": moved_most(owners, before, after),
    }


def _where_known(plan: AuditPlan, before: Sequence[Scored], after: Sequence[Scored]) -> dict[str, Any]:
    """Held-out generalisation over the prompts the model answered with a replaced object before
    (its first token the top-1), and how many there were (None without replaced objects)."""
    if not any(plan.replaced_tokens):
        return {"heldout_known": None, "generalisation_where_known": None}
    known = [b.top1 in olds for b, olds in zip(before, plan.replaced_tokens)]
    return {
        "heldout_known": sum(known),
        "generalisation_where_known": _rate([a.greedy for a, k in zip(after, known) if k]),
    }


def judge(plan: AuditPlan, before: dict[str, Any], after: dict[str, Any], built_hits: Sequence[int]) -> dict:
    """The stored audit: per fact and pooled (see the module docstring)."""
    train_b, train_a = _split(before["train"], plan.train), _split(after["train"], plan.train)
    held_a = _split(after["heldout"], plan.heldout)
    held_fired = _split(after["heldout_firing"] or [], plan.heldout)
    per_fact = [
        {
            "efficacy": _rate([s.greedy for s in ta]),
            "efficacy_before": _rate([s.greedy for s in tb]),
            "efficacy_when_built": built_hits[i] / len(ta) if ta else None,
            "generalisation": _rate([s.greedy for s in ha]),
            "heldout_firing": _rate(hf),
            "n_train": len(ta),
            "n_heldout": len(ha),
        }
        for i, (tb, ta, ha, hf) in enumerate(zip(train_b, train_a, held_a, held_fired))
    ]
    out: dict[str, Any] = {
        "efficacy": _rate([s.greedy for s in after["train"]]),
        "efficacy_facts": _rate([f["efficacy"] == 1.0 for f in per_fact if f["efficacy"] is not None]),
        "generalisation": _rate([s.greedy for s in after["heldout"]]),
        "generalisation_before": _rate([s.greedy for s in before["heldout"]]),
        "heldout_firing_rate": _rate(after["heldout_firing"] or []),
        **_where_known(plan, before["heldout"], after["heldout"]),
        "n_train_prompts": len(after["train"]),
        "n_heldout_prompts": len(after["heldout"]),
        **_specificity("others", before["others"], after["others"], after["firing"], plan.others.owners),
        **_specificity(
            "same_subject",
            before["same_subject"],
            after["same_subject"],
            after["same_subject_firing"],
            plan.same_subject.owners,
        ),
        "facts": per_fact,
    }
    if before["fluency"] and after["fluency"]:
        out["fluency_ppl_before"], out["fluency_ppl_after"] = _ppl(before["fluency"][0]), _ppl(after["fluency"][0])
        out["fluency_ppl_change"] = out["fluency_ppl_after"] / out["fluency_ppl_before"] - 1
        held_b, held_after = _ppl(before["fluency"][1]), _ppl(after["fluency"][1])
        out["fluency_unseen_ppl_change"] = held_after / held_b - 1
    return out
