"""Offline comparison of injection keys and gates on the real SmolLM2 (CPU, no database).

What the gate of an injected slot opens for decides three of issue 12's figures before any value
is written: the training prompts it saturates (efficacy), the held-out paraphrases it opens for
(generalisation) and the other facts' prompts and text it stays shut on (specificity, fluency).
This measures those three shares for key variants from the FFN inputs of one layer, without
building slots, so that a variant is compared in minutes on the CPU:

- targets: per relation `--facts` facts of the bundled kn-paper set, the last `--heldout` causal
  prompts of each held out (as `atlas inject` does);
- negatives, as the job assembles them (`atlas.jobs.inject`): a shared pool of prompts of other
  facts of every relation, each target relation's own pool (its templates with other subjects),
  the general text's start and the other targets' answer positions; every position;
- evaluation: prompts of facts that are neither targets nor negatives (answer positions) and the
  general text after the negatives' part (every position), on which no key was fitted.

A slot "opens" where its score passes the gate's threshold and saturates where it passes the
saturation; the shares are over prompts (held-out, evaluation) and over positions (text: any of
the slots open). Variants are `name:field=value,...` over `Variant`'s fields.

Example (BENCHMARKS.md "Knowledge injection"):
    PYTHONPATH=. python bench/injection_keys.py --relations 12 --facts 4 --layers 6,10,14,18,24 \\
        --cache /tmp/keys.pt --variant default --variant "subj:position=subject"
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atlas.db.datasets import Fact, causal_prefix, read_kn_paper  # noqa: E402
from atlas.jobs.evaluate import GENERAL_TEXT  # noqa: E402
from atlas.jobs.inject_audit import NEGATIVE_TEXT_CHARS  # noqa: E402
from atlas.jobs.inject_prompts import key_positions  # noqa: E402
from atlas.jobs.specs import InjectSpec  # noqa: E402
from atlas.model.encode import PromptItem  # noqa: E402
from atlas.model.inject.keys import Negatives, answer_inputs, discriminant, gate, text_inputs  # noqa: E402
from atlas.model.loading import load_model  # noqa: E402


@dataclass(frozen=True)
class Variant:
    """One way of building keys and gates (the InjectSpec fields of the same names)."""

    name: str = "default"
    position: str = "answer"  # or "subject": the key reads the subject's last token
    ridge: float = 0.05
    pos_scatter: float = 1.0
    hard_negatives: int = 0
    hard_rounds: int = 3
    gate_low: float = 0.25
    gate_high: float = 0.9

    @classmethod
    def parse(cls, text: str) -> Variant:
        name, _, rest = text.partition(":")
        kinds = {f.name: f.type for f in fields(cls)}
        values = {}
        for part in filter(None, rest.split(",")):
            key, _, value = part.partition("=")
            values[key] = {"int": int, "float": float}.get(kinds[key], str)(value)
        return cls(name, **values)


def items_of(tok, texts: list[str]) -> list[PromptItem]:
    return [PromptItem(tok(causal_prefix(t), add_special_tokens=False).input_ids, [0]) for t in texts]


def causal_texts(f: Fact) -> list[str]:
    return [p.text for p in f.prompts if p.causal]


def pick(args) -> tuple[list[Fact], dict[str, list[Fact]], list[Fact], list[Fact]]:
    """Targets, each target relation's pool facts, shared-pool facts and evaluation facts."""
    facts = [f for f in read_kn_paper().facts if len(causal_texts(f)) >= args.heldout + 2]
    rng = random.Random(args.seed)
    by_rel: dict[str, list[Fact]] = {}
    for f in facts:
        by_rel.setdefault(f.relation_id, []).append(f)
    rels = sorted(by_rel)
    rng.shuffle(rels)
    rels = sorted(rels[: args.relations])
    targets, own, rest = [], {}, []
    for rel, fs in sorted(by_rel.items()):
        fs = fs[:]
        rng.shuffle(fs)
        if rel in rels:
            targets += fs[: args.facts]
            own[rel] = fs[args.facts : args.facts + args.relation_facts]
            rest += fs[args.facts + args.relation_facts :]
        else:
            rest += fs
    rng.shuffle(rest)
    shared, evals = rest[: args.shared_facts], rest[args.shared_facts : args.shared_facts + args.eval_facts]
    return targets, own, shared, evals


def read_inputs(args, lm, layers: list[int]) -> dict:
    """Every FFN input the variants need, at `layers` (one forward pass per batch for all)."""
    tok = lm.tokenizer
    targets, own, shared, evals = pick(args)

    def grab(items: list[PromptItem], every: bool = False, at: list[int] | None = None) -> dict:
        return answer_inputs(lm.model, lm.adapter, items, layers, every_position=every, at=at)

    text = GENERAL_TEXT.read_text()
    seen_ids = list(tok(text[:NEGATIVE_TEXT_CHARS], add_special_tokens=False).input_ids)
    unseen_ids = list(tok(text[NEGATIVE_TEXT_CHARS:], add_special_tokens=False).input_ids)
    eval_items = items_of(tok, [t for f in evals for t in causal_texts(f)])
    got = {
        "shared": grab(items_of(tok, [t for f in shared for t in causal_texts(f)]), every=True),
        "text": text_inputs(lm.model, lm.adapter, seen_ids, layers),
        "unseen": text_inputs(lm.model, lm.adapter, unseen_ids, layers),
        "eval": grab(eval_items, every=True),
        "eval_owner": torch.cat([torch.full((len(it.prompt_ids),), k) for k, it in enumerate(eval_items)]),
        "pool_every": {
            r: grab(items_of(tok, [t for f in fs for t in causal_texts(f)]), every=True) for r, fs in own.items()
        },
        "targets": [],
    }
    for f in targets:
        texts = causal_texts(f)
        keep = len(texts) - args.heldout
        items = items_of(tok, texts)
        got["targets"].append(
            {
                "fact": f,
                "answer": grab(items),
                "subject": grab(items, at=key_positions(lm, f, items, texts, InjectSpec(key_position="subject"))),
                "every": grab(items_of(tok, texts[:keep]), every=True),
                "keep": keep,
            }
        )
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--relations", type=int, default=12)
    ap.add_argument("--facts", type=int, default=4, help="targets per relation")
    ap.add_argument("--heldout", type=int, default=2)
    ap.add_argument("--relation-facts", type=int, default=40, help="facts of each target relation's own pool")
    ap.add_argument("--shared-facts", type=int, default=150)
    ap.add_argument("--eval-facts", type=int, default=150)
    ap.add_argument("--layers", default="24", help="comma-separated layers to read (and compare)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default="", help="a .pt file: read the inputs from it, or write them there")
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    variants = [Variant.parse(v) for v in args.variant or ["default"]]
    layers = [int(x) for x in args.layers.split(",")]
    t0 = time.time()
    if args.cache and Path(args.cache).exists():
        got = torch.load(args.cache, weights_only=False)
    else:
        got = read_inputs(args, load_model("smollm2"), layers)
        if args.cache:
            torch.save(got, args.cache)
    print(f"inputs ready in {time.time() - t0:.0f} s: {len(got['targets'])} targets", flush=True)
    results = []
    for layer in layers:
        for v in variants:
            results.append({"layer": layer, **evaluate(v, got, layer)})
            print(json.dumps(results[-1]), flush=True)
    if args.out:
        with open(args.out, "a") as fh:
            for r in results:
                fh.write(json.dumps({"args": vars(args), **r}) + "\n")


def evaluate(v: Variant, got: dict, layer: int) -> dict:
    """Shares of training prompts saturated, held-out prompts opened, evaluation prompts opened at
    any position, unseen text positions opened (any slot)."""
    site = v.position
    base = Negatives.of(got["shared"][layer], got["text"][layer])
    targets = got["targets"]
    pos_all = [t[site][layer] for t in targets]
    train_sat = train_n = held_open = held_sat = held_n = 0
    eval_x, owner, unseen = got["eval"][layer], got["eval_owner"], got["unseen"][layer]
    eval_open = torch.zeros(eval_x.shape[0], dtype=torch.bool)
    text_open = torch.zeros(unseen.shape[0], dtype=torch.bool)
    for i, t in enumerate(targets):
        f, keep = t["fact"], t["keep"]
        pos, held = pos_all[i][:keep], pos_all[i][keep:]
        neg = base + Negatives.of(got["pool_every"][f.relation_id][layer])
        if site == "answer":
            neg = neg.plus(torch.cat([pos_all[j][: targets[j]["keep"]] for j in range(len(targets)) if j != i]))
        else:  # every position of the other targets' training prompts
            neg = neg.plus(torch.cat([targets[j]["every"][layer] for j in range(len(targets)) if j != i]))
        w = discriminant(pos, neg, v.ridge, v.pos_scatter, v.hard_negatives, v.hard_rounds)
        g = gate(pos @ w, neg.scores(w), v.gate_low, v.gate_high)
        train_sat += int((pos @ w >= g.saturation).sum())
        train_n += pos.shape[0]
        held_open += int((held @ w > g.threshold).sum())
        held_sat += int((held @ w >= g.saturation).sum())
        held_n += held.shape[0]
        eval_open |= eval_x @ w > g.threshold
        text_open |= unseen @ w > g.threshold
    n_eval = int(owner.max()) + 1
    prompts_open = torch.zeros(n_eval, dtype=torch.bool).index_put_((owner,), eval_open, accumulate=True)
    return {
        **asdict(v),
        "train_saturated": train_sat / train_n,
        "heldout_open": held_open / held_n,
        "heldout_saturated": held_sat / held_n,
        "others_open": float(prompts_open.float().mean()),
        "unseen_text_open": float(text_open.float().mean()),
    }


if __name__ == "__main__":
    main()
