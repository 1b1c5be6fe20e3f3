"""Measuring facts on a model: their prompts encoded once, scored with teacher forcing, summarised.

What the edits, the probe and the audit measure reduces to `score` over sets of encoded prompts
(`atlas.model.scoring`): joint P(gold), per-token log-probabilities, greedy exact match.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from atlas.db.neurons import Fact
from atlas.jobs import metrics as m
from atlas.model.encode import PromptItem
from atlas.model.loading import LoadedModel
from atlas.model.scoring import Scored, encode, score


@dataclass
class EvalSet:
    """Prompts of some facts, encoded, with the answer each is scored against."""

    name: str
    items: list[PromptItem] = field(default_factory=list)

    @classmethod
    def of(cls, name: str, lm: LoadedModel, facts: Sequence[Fact], answer: str | None = None) -> EvalSet:
        out = cls(name)
        for f in facts:
            for text in f.prompts:
                item = encode(lm.tokenizer, text, answer if answer is not None else f.object)
                if not isinstance(item, str):
                    out.items.append(item)
        return out


def summary(scored: Sequence[Scored]) -> dict[str, float | None]:
    """Prompt count, greedy accuracy, perplexity of the gold tokens and mean P(gold)."""
    if not scored:
        return {"n_prompts": 0, "accuracy": None, "perplexity": None, "p_gold": None}
    return {
        "n_prompts": len(scored),
        "accuracy": sum(s.greedy for s in scored) / len(scored),
        "perplexity": m.perplexity([lp for s in scored for lp in s.logprobs]),
        "p_gold": sum(s.p_gold for s in scored) / len(scored),
    }


def sample(facts: Sequence[Fact], k: int, seed: str) -> list[Fact]:
    """At most `k` of `facts`, the same ones for the same seed."""
    facts = sorted(facts, key=lambda f: f.id)
    return random.Random(seed).sample(facts, k) if len(facts) > k else list(facts)


def measure(lm: LoadedModel, sets: Sequence[EvalSet]) -> dict[str, list[Scored]]:
    return {s.name: score(lm.model, lm.adapter, s.items) for s in sets}


def fact_p(lm: LoadedModel, facts: Sequence[Fact]) -> list[float | None]:
    """Mean P(gold) over each fact's prompts (None for a fact none of whose prompts encodes)."""
    out: list[float | None] = []
    for f in facts:
        items = EvalSet.of(f.id, lm, [f]).items
        out.append(sum(s.p_gold for s in score(lm.model, lm.adapter, items)) / len(items) if items else None)
    return out
