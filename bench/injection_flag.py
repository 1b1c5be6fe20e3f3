"""Offline test of a two-slot injection design on the real SmolLM2 (CPU, no database, no slot built).

A subject-keyed slot (the default of `atlas inject`) fires wherever the subject is read, so its
value moves the model's other answers about that subject. The design tested here splits it in two:

1. a FLAG slot, keyed on the subject at its last token in layer L1 (as now), whose value is not the
   new object but a flag phi = beta * r * d (d a fixed random unit direction, or the subject's own
   mean residual direction; r the mean residual norm there), meant to change little by itself;
2. an ANSWER slot in a later layer L2, keyed at the answer position on what attention carried
   there: the flag AND the relation's wording, so that it opens for the fact's paraphrases but not
   for other questions about the same subject (those are its negatives, flagged).

Before building anything this measures, per beta and L2, what decides the design:

- the flag's own cost: on the other facts about each target subject (other relations, flagged at
  the subject), the share of top-1 answers unchanged and of right answers kept, and the mean KL;
- the answer key (the job's Fisher discriminant and gate, `atlas.model.inject.keys`), fitted on the
  flagged training prompts against: a shared pool of other facts' prompts and the target
  relation's own pool (every position, unflagged), the general text, one template of every other
  relation and ten generic prompts about the subject (flagged, every position): the shares of
  training prompts saturated, held-out paraphrases opened, the same subject's unseen prompts
  opened (any position), other facts' prompts opened (any position) and unseen text positions.

beta = 0 is the plain answer-position key with the same-subject negatives.

    PYTHONPATH=. python bench/injection_flag.py --targets 24 --betas 0,0.5,1,2 --read-layers 16,20,24
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atlas.db.datasets import Fact, causal_prefix, make_prompt, read_kn_paper  # noqa: E402
from atlas.jobs.evaluate import GENERAL_TEXT  # noqa: E402
from atlas.jobs.inject_audit import NEGATIVE_TEXT_CHARS  # noqa: E402
from atlas.jobs.inject_prompts import KEEP_TEMPLATES  # noqa: E402
from atlas.model.encode import PromptItem, subject_position  # noqa: E402
from atlas.model.hooks import hooks  # noqa: E402
from atlas.model.inject.keys import Negatives, answer_inputs, discriminant, gate, text_inputs  # noqa: E402
from atlas.model.loading import load_model  # noqa: E402


def causal(f: Fact) -> list[str]:
    return [p.text for p in f.prompts if p.causal]


def pick(args) -> dict:
    """Targets (facts whose subject has facts in other relations), their same-subject facts, each
    target relation's own pool, a shared pool, evaluation facts and one template per relation."""
    facts = read_kn_paper().facts
    by_subject: dict[str, list[Fact]] = {}
    by_rel: dict[str, list[Fact]] = {}
    for f in facts:
        by_subject.setdefault(f.subject, []).append(f)
        by_rel.setdefault(f.relation_id, []).append(f)
    rng = random.Random(args.seed)
    cands = [
        f
        for f in facts
        if len(causal(f)) >= args.heldout + 2 and any(g.relation_id != f.relation_id for g in by_subject[f.subject])
    ]
    rng.shuffle(cands)
    targets, seen = [], set()
    for f in cands:
        if f.subject not in seen and len(targets) < args.targets:
            targets.append(f)
            seen.add(f.subject)
    busy = {g.id for f in targets for g in by_subject[f.subject]}
    own = {}
    for rel in {f.relation_id for f in targets}:
        pool = [g for g in by_rel[rel] if g.id not in busy]
        rng.shuffle(pool)
        own[rel] = pool[: args.relation_facts]
        busy |= {g.id for g in own[rel]}
    rest = [f for f in facts if f.id not in busy]
    rng.shuffle(rest)
    templates = {
        rel: min(p.template for g in fs for p in g.prompts if p.causal)
        for rel, fs in by_rel.items()
        if any(p.causal for g in fs for p in g.prompts)
    }
    return {
        "targets": targets,
        "same": {f.id: [g for g in by_subject[f.subject] if g.relation_id != f.relation_id] for f in targets},
        "own": own,
        "shared": rest[: args.shared_facts],
        "evals": rest[args.shared_facts : args.shared_facts + args.eval_facts],
        "templates": templates,
    }


class Reader:
    """Forward passes of single prompts, optionally with a flag added to layer L1's FFN output at
    the subject's last token; returns the FFN inputs of the read layers at every position and the
    next-token log-probabilities at the last position."""

    def __init__(self, lm, flag_layer: int, read_layers: list[int]):
        self.lm, self.flag_layer, self.read_layers = lm, flag_layer, read_layers

    def item(self, text: str) -> PromptItem:
        return PromptItem(self.lm.tokenizer(causal_prefix(text), add_special_tokens=False).input_ids, [0])

    @torch.no_grad()
    def __call__(self, text: str, subject: str, phi: torch.Tensor | None) -> tuple[dict, torch.Tensor, int | None]:
        it = self.item(text)
        pos = subject_position(self.lm.tokenizer, it, text, subject)
        got: dict[int, torch.Tensor] = {}
        handles = [
            self.lm.adapter.ffn_in(layer).register_forward_pre_hook(
                lambda _m, a, layer=layer: got.__setitem__(layer, a[0][0].double())
            )
            for layer in self.read_layers
        ]

        def add(out: torch.Tensor) -> torch.Tensor:
            out = out.clone()
            out[0, pos] += phi.to(out.dtype)
            return out

        fns = {self.flag_layer: add} if phi is not None and pos is not None else {}
        try:
            with hooks(self.lm.adapter, fns, site="output"):
                out = self.lm.model(input_ids=torch.tensor([it.prompt_ids]), output_hidden_states=True)
        finally:
            for h in handles:
                h.remove()
        resid = out.hidden_states[self.flag_layer + 1][0, pos].double() if pos is not None else None
        return got, torch.log_softmax(out.logits[0, -1].double(), -1), resid


def answer_token(tok, obj: str) -> int:
    return tok(" " + obj, add_special_tokens=False).input_ids[0]


@dataclass
class Pools:
    """The unflagged FFN inputs read once, per read layer: the shared negatives (other facts'
    prompts and the general text's start), each target relation's own pool, the evaluation
    prompts (every position, `owner`: the prompt of each row) and the unseen text."""

    base: dict[int, Negatives]
    own: dict[str, dict[int, torch.Tensor]]
    eval_x: dict[int, torch.Tensor]
    owner: torch.Tensor
    unseen: dict[int, torch.Tensor]

    @classmethod
    def read(cls, lm, rd: Reader, p: dict) -> Pools:
        layers, tok, text = rd.read_layers, lm.tokenizer, GENERAL_TEXT.read_text()

        def every(items: list[PromptItem]) -> dict:
            return answer_inputs(lm.model, lm.adapter, items, layers, every_position=True)

        def text_ids(part: str) -> list[int]:
            return tok(part, add_special_tokens=False).input_ids

        shared = every([rd.item(t) for f in p["shared"] for t in causal(f)])
        start = text_inputs(lm.model, lm.adapter, text_ids(text[:NEGATIVE_TEXT_CHARS]), layers)
        evals = [rd.item(t) for f in p["evals"] for t in causal(f)]
        return cls(
            {layer: Negatives.of(shared[layer], start[layer]) for layer in layers},
            {rel: every([rd.item(t) for f in fs for t in causal(f)]) for rel, fs in p["own"].items()},
            every(evals),
            torch.cat([torch.full((len(it.prompt_ids),), k) for k, it in enumerate(evals)]),
            text_inputs(lm.model, lm.adapter, text_ids(text[NEGATIVE_TEXT_CHARS:]), layers),
        )


@dataclass
class Tally:
    """What one (beta, read layer) measured over the targets."""

    train_sat: list[bool] = field(default_factory=list)
    held_open: list[bool] = field(default_factory=list)
    held_sat: list[bool] = field(default_factory=list)
    same_open: list[bool] = field(default_factory=list)
    eval_open: torch.Tensor | None = None  # `[eval rows]`: any target's gate opens there
    text_open: torch.Tensor | None = None  # `[unseen text positions]`

    def key(self, pools: Pools, layer: int, rel: str, train: list, held: list, keeps: list, same: list) -> None:
        """Fit the answer key on the flagged training prompts (answer position) against the pools
        and the flagged keep prompts (every position), and count where its gate opens."""
        pos = torch.stack([x[layer][-1] for x, _, _ in train])
        neg = (pools.base[layer] + Negatives.of(pools.own[rel][layer])).plus(torch.cat([x[layer] for x, _, _ in keeps]))
        w = discriminant(pos, neg, 0.05, 1.0, 0, 3)
        g = gate(pos @ w, neg.scores(w), 0.25, 0.9)
        hx = torch.stack([x[layer][-1] for x, _, _ in held])
        self.train_sat += (pos @ w >= g.saturation).tolist()
        self.held_open += (hx @ w > g.threshold).tolist()
        self.held_sat += (hx @ w >= g.saturation).tolist()
        self.same_open += [bool((x[layer] @ w > g.threshold).any()) for x, _, _ in same]
        ev, tx = pools.eval_x[layer] @ w > g.threshold, pools.unseen[layer] @ w > g.threshold
        self.eval_open = ev if self.eval_open is None else self.eval_open | ev
        self.text_open = tx if self.text_open is None else self.text_open | tx

    def row(self, pools: Pools) -> dict:
        n_eval = int(pools.owner.max()) + 1
        opened = torch.zeros(n_eval, dtype=torch.bool).index_put_((pools.owner,), self.eval_open, accumulate=True)
        return {
            "train_saturated": _mean(self.train_sat),
            "heldout_open": _mean(self.held_open),
            "heldout_saturated": _mean(self.held_sat),
            "same_subject_open": _mean(self.same_open),
            "others_open": float(opened.float().mean()),
            "unseen_text_open": float(self.text_open.float().mean()),
        }


@dataclass
class FlagCost:
    """What the flag alone changes on the other facts about the target subjects."""

    top1_same: list[bool] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    right_kept: list[bool] = field(default_factory=list)

    def add(self, tok, same: list, plain: list, flagged: list) -> None:
        for (g, _), (_, lp0, _), (_, lp1, _) in zip(same, plain, flagged):
            gold = answer_token(tok, g.object)
            self.top1_same.append(bool(lp0.argmax() == lp1.argmax()))
            self.kl.append(float((lp0.exp() * (lp0 - lp1)).sum()))
            if int(lp0.argmax()) == gold:
                self.right_kept.append(int(lp1.argmax()) == gold)

    def row(self) -> dict:
        return {
            "flag_same_top1_unchanged": _mean(self.top1_same),
            "flag_same_right_kept": f"{sum(self.right_kept)}/{len(self.right_kept)}",
            "flag_same_mean_kl": _mean(self.kl),
        }


def _mean(xs: list) -> float | None:
    return sum(xs) / len(xs) if xs else None


def measure_target(args, lm, rd: Reader, pools: Pools, p: dict, f: Fact, gen, tallies: dict, costs: dict) -> None:
    """One target: its flag (direction and length), then per beta the flagged reads, the flag's
    cost and, per read layer, its answer key."""
    texts = causal(f)
    k = len(texts) - args.heldout
    others = [t for rel, t in sorted(p["templates"].items()) if rel != f.relation_id]
    keep_texts = [make_prompt(t, f.subject).text for t in (*KEEP_TEMPLATES, *others)]
    same = [(g, t) for g in p["same"][f.id] for t in causal(g) if t not in set(keep_texts)]
    resid = [r for _, _, r in (rd(t, f.subject, None) for t in texts[:k]) if r is not None]
    if not resid:
        return
    d = torch.randn(lm.adapter.hidden_size, generator=gen, dtype=torch.float64)
    if args.flag == "subject":
        d = torch.stack(resid).mean(0)
    d, r = d / d.norm(), float(torch.stack(resid).norm(dim=-1).mean())
    same_plain = [rd(t, f.subject, None) for _, t in same]
    for b in costs:
        phi = (b * r * d) if b > 0 else None
        train, held = [rd(t, f.subject, phi) for t in texts[:k]], [rd(t, f.subject, phi) for t in texts[k:]]
        keeps, same_now = [rd(t, f.subject, phi) for t in keep_texts], [rd(t, f.subject, phi) for _, t in same]
        costs[b].add(lm.tokenizer, same, same_plain, same_now)
        for layer in rd.read_layers:
            tallies[(b, layer)].key(pools, layer, f.relation_id, train, held, keeps, same_now)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", type=int, default=24)
    ap.add_argument("--heldout", type=int, default=2)
    ap.add_argument("--relation-facts", type=int, default=40)
    ap.add_argument("--shared-facts", type=int, default=150)
    ap.add_argument("--eval-facts", type=int, default=150)
    ap.add_argument("--flag-layer", type=int, default=10)
    ap.add_argument("--read-layers", default="16,20,24")
    ap.add_argument("--betas", default="0,0.5,1,2")
    ap.add_argument("--flag", default="random", choices=("random", "subject"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    t0 = time.time()
    lm = load_model("smollm2")
    read_layers = [int(x) for x in args.read_layers.split(",")]
    betas = [float(x) for x in args.betas.split(",")]
    p = pick(args)
    rd = Reader(lm, args.flag_layer, read_layers)
    pools = Pools.read(lm, rd, p)
    print(f"negatives read in {time.time() - t0:.0f} s; {len(p['targets'])} targets", flush=True)
    tallies = {(b, layer): Tally() for b in betas for layer in read_layers}
    costs = {b: FlagCost() for b in betas}
    gen = torch.Generator().manual_seed(args.seed)
    for n, f in enumerate(p["targets"]):
        measure_target(args, lm, rd, pools, p, f, gen, tallies, costs)
        print(f"target {n + 1}/{len(p['targets'])} {f.id} ({time.time() - t0:.0f} s)", flush=True)
    rows = [
        {"beta": b, "flag": args.flag, "read_layer": layer, **tallies[(b, layer)].row(pools), **costs[b].row()}
        for b in betas
        for layer in read_layers
    ]
    for row in rows:
        print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "a") as fh:
            for row in rows:
                fh.write(json.dumps({"args": vars(args), "wall_s": time.time() - t0, **row}) + "\n")


if __name__ == "__main__":
    main()
