"""Measuring facts on a model: their prompts encoded once, scored, summarised and compared.

What edits, probes and audits measure reduces to `atlas.model.scoring.score` over sets of encoded
prompts. An edit is judged per relation (`RelationPlan`): on the prompts of the facts of every
relation of the run, before and after, with

* accuracy: greedy decoding gives the gold answer, counted on the prompts right before;
* candidate accuracy: the gold's first token beats the first token of every other object of the
  relation (top-1 among the relation's answers; it does not count a template that the model
  would rather continue with " the");
* mean gold NLL (-log P(gold) per prompt) and perplexity (exp of the mean NLL per gold token);

pooled over the relations that were not edited, and fluency: the perplexity of a general English
text bundled with the package (`atlas/data/general_text.txt`, written for the project).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from atlas.db.neurons import Fact
from atlas.jobs import metrics as m
from atlas.model.encode import PromptItem
from atlas.model.loading import LoadedModel
from atlas.model.scoring import Scored, encode, score, text_nll

GENERAL_TEXT = Path(__file__).parents[1] / "data" / "general_text.txt"


@dataclass
class EvalSet:
    """Prompts of some facts, encoded, with the answer each is scored against and the fact it asks
    about (`owners`: what an audit names when a prompt moves)."""

    name: str
    items: list[PromptItem] = field(default_factory=list)
    candidates: list[torch.Tensor | None] = field(default_factory=list)
    owners: list[Fact] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        name: str,
        lm: LoadedModel,
        facts: Sequence[Fact],
        answer: str | None = None,
        candidates: torch.Tensor | None = None,
    ) -> EvalSet:
        out = cls(name)
        for f in facts:
            for text in f.prompts:
                item = encode(lm.tokenizer, text, answer if answer is not None else f.object, lm.adapter.is_masked_lm)
                if not isinstance(item, str):
                    out.items.append(item)
                    out.candidates.append(candidates)
                    out.owners.append(f)
        return out

    def measure(self, lm: LoadedModel) -> list[Scored]:
        batch = 32 if next(lm.model.parameters()).device.type == "cpu" else 256
        return score(lm.model, lm.adapter, self.items, batch_size=batch, candidates=self.candidates or None)


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
    return {s.name: s.measure(lm) for s in sets}


def fact_p(lm: LoadedModel, facts: Sequence[Fact]) -> list[float | None]:
    """Mean P(gold) over each fact's prompts (None for a fact none of whose prompts encodes)."""
    out: list[float | None] = []
    for f in facts:
        items = EvalSet.of(f.id, lm, [f]).items
        out.append(sum(s.p_gold for s in score(lm.model, lm.adapter, items)) / len(items) if items else None)
    return out


# --- relations -----------------------------------------------------------------------------------


def object_candidates(lm: LoadedModel, facts: Sequence[Fact]) -> torch.Tensor:
    """First answer tokens of the distinct objects of `facts` (one relation's answer vocabulary)."""
    firsts = set()
    for f in facts:
        for text in f.prompts[:1]:
            item = encode(lm.tokenizer, text, f.object, lm.adapter.is_masked_lm)
            if not isinstance(item, str):
                firsts.add(item.answer_ids[0])
    return torch.tensor(sorted(firsts), dtype=torch.long)


@dataclass
class RelationPlan:
    """What an edit is judged on: per relation, the prompts of a sample of its facts (every fact of
    `edited` up to `edited_facts`, up to `other_facts` of each other relation), with candidates."""

    edited: str
    sets: list[EvalSet]

    @classmethod
    def of(
        cls,
        lm: LoadedModel,
        facts: dict[str, Fact],
        edited: str,
        edited_facts: int = 50,
        other_facts: int = 10,
        seed: str = "eval",
    ) -> RelationPlan:
        by_rel: dict[str, list[Fact]] = {}
        for f in facts.values():
            by_rel.setdefault(f.relation_id, []).append(f)
        sets = []
        for rel in sorted(by_rel):
            chosen = sample(by_rel[rel], edited_facts if rel == edited else other_facts, f"{seed}:{rel}")
            sets.append(EvalSet.of(rel, lm, chosen, candidates=object_candidates(lm, by_rel[rel])))
        return cls(edited, [s for s in sets if s.items])

    def measure(self, lm: LoadedModel) -> dict[str, Any]:
        """Per relation scores, plus the fluency text's NLL (left-to-right models only)."""
        out: dict[str, Any] = {"relations": measure(lm, self.sets)}
        out["fluency"] = None if lm.adapter.is_masked_lm else text_nll(lm.model, lm.tokenizer, GENERAL_TEXT.read_text())
        return out


def _side(scored: list[Scored]) -> dict[str, float]:
    tokens = [lp for s in scored for lp in s.logprobs]
    return {"nll": sum(s.nll for s in scored) / len(scored), "ppl": math.exp(-sum(tokens) / len(tokens))}


def relation_change(before: list[Scored], after: list[Scored]) -> dict[str, Any]:
    """One relation before -> after: right answers kept (greedy and among candidates), NLL, perplexity."""
    right = [i for i, s in enumerate(before) if s.greedy]
    cand = [i for i, s in enumerate(before) if s.candidate_top1]
    b, a = _side(before), _side(after)
    return {
        "n_prompts": len(before),
        "right_before": len(right),
        "right_after": sum(after[i].greedy for i in right),
        "cand_right_before": len(cand),
        "cand_right_after": sum(bool(after[i].candidate_top1) for i in cand),
        "nll_before": b["nll"],
        "nll_after": a["nll"],
        "dnll": a["nll"] - b["nll"],
        "ppl_before": b["ppl"],
        "ppl_after": a["ppl"],
        "ppl_change": a["ppl"] / b["ppl"] - 1,
    }


def _pool(changes: Sequence[dict[str, Any]], before: Sequence[list[Scored]], after: Sequence[list[Scored]]) -> dict:
    out = {
        k: sum(c[k] for c in changes)
        for k in ("n_prompts", "right_before", "right_after", "cand_right_before", "cand_right_after")
    }
    b, a = _side([s for x in before for s in x]), _side([s for x in after for s in x])
    out.update(
        {
            "nll_before": b["nll"],
            "nll_after": a["nll"],
            "dnll": a["nll"] - b["nll"],
            "ppl_before": b["ppl"],
            "ppl_after": a["ppl"],
            "ppl_change": a["ppl"] / b["ppl"] - 1,
        }
    )
    return out


def judge(plan: RelationPlan, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The edited relation, every other relation and their pool, and fluency, before -> after,
    with the headline ratios: accuracy kept (right after / right before) on each side."""
    rb, ra = before["relations"], after["relations"]
    per = {rel: relation_change(rb[rel], ra[rel]) for rel in rb}
    others = [rel for rel in rb if rel != plan.edited]
    out: dict[str, Any] = {"edited": per.get(plan.edited), "others": {r: per[r] for r in others}}
    out["others_pooled"] = (
        _pool([per[r] for r in others], [rb[r] for r in others], [ra[r] for r in others]) if others else None
    )
    fb, fa = before["fluency"], after["fluency"]
    out["fluency"] = (
        None
        if fb is None
        else {
            "ppl_before": math.exp(fb[0] / fb[1]),
            "ppl_after": math.exp(fa[0] / fa[1]),
            "ppl_change": math.exp((fa[0] - fb[0]) / fb[1]) - 1,
        }
    )
    out["headline"] = headline(out)
    return out


def _kept(c: dict[str, Any] | None, prefix: str = "") -> float | None:
    if not c or not c[f"{prefix}right_before"]:
        return None
    return c[f"{prefix}right_after"] / c[f"{prefix}right_before"]


def headline(judged: dict[str, Any]) -> dict[str, float | None]:
    """The figures the targets are stated in (None where a side has nothing to measure)."""
    e, o = judged["edited"], judged["others_pooled"]
    return {
        "edited_accuracy_kept": _kept(e),
        "edited_cand_accuracy_kept": _kept(e, "cand_"),
        "edited_ppl_change": e["ppl_change"] if e else None,
        "others_accuracy_kept": _kept(o),
        "others_cand_accuracy_kept": _kept(o, "cand_"),
        "others_ppl_change": o["ppl_change"] if o else None,
        "others_dnll": o["dnll"] if o else None,
        "fluency_ppl_change": judged["fluency"]["ppl_change"] if judged["fluency"] else None,
    }
