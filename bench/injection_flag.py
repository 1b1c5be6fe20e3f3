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

    def every(facts: list[Fact]) -> dict:
        items = [rd.item(t) for f in facts for t in causal(f)]
        return answer_inputs(lm.model, lm.adapter, items, read_layers, every_position=True)

    text = GENERAL_TEXT.read_text()
    tok = lm.tokenizer
    base = {
        layer: Negatives.of(s, t)
        for (layer, s), t in zip(
            every(p["shared"]).items(),
            text_inputs(
                lm.model, lm.adapter, tok(text[:NEGATIVE_TEXT_CHARS], add_special_tokens=False).input_ids, read_layers
            ).values(),
        )
    }
    own = {rel: every(fs) for rel, fs in p["own"].items()}
    eval_items = [rd.item(t) for f in p["evals"] for t in causal(f)]
    eval_x = answer_inputs(lm.model, lm.adapter, eval_items, read_layers, every_position=True)
    owner = torch.cat([torch.full((len(it.prompt_ids),), k) for k, it in enumerate(eval_items)])
    unseen = text_inputs(
        lm.model, lm.adapter, tok(text[NEGATIVE_TEXT_CHARS:], add_special_tokens=False).input_ids, read_layers
    )
    print(f"negatives read in {time.time() - t0:.0f} s; {len(p['targets'])} targets", flush=True)
    stats = {
        (b, layer): {"train_sat": [], "held_open": [], "held_sat": [], "same_open": []}
        for b in betas
        for layer in read_layers
    }
    cost = {b: {"top1_same": [], "right_kept": [], "right_before": 0, "kl": []} for b in betas}
    eval_open = {
        (b, layer): torch.zeros(eval_x[layer].shape[0], dtype=torch.bool) for b in betas for layer in read_layers
    }
    text_open = {
        (b, layer): torch.zeros(unseen[layer].shape[0], dtype=torch.bool) for b in betas for layer in read_layers
    }
    gen = torch.Generator().manual_seed(args.seed)
    for n, f in enumerate(p["targets"]):
        texts = causal(f)
        k = len(texts) - args.heldout
        others = [t for rel, t in sorted(p["templates"].items()) if rel != f.relation_id]
        keep_texts = [make_prompt(t, f.subject).text for t in (*KEEP_TEMPLATES, *others)]
        kept_set = set(keep_texts)
        same = [(g, t) for g in p["same"][f.id] for t in causal(g) if t not in kept_set]
        plain = [rd(t, f.subject, None) for t in texts[:k]]
        resid = [r for _, _, r in plain if r is not None]
        if not resid:
            continue
        r = float(torch.stack(resid).norm(dim=-1).mean())
        d = torch.randn(lm.adapter.hidden_size, generator=gen, dtype=torch.float64)
        if args.flag == "subject":
            d = torch.stack(resid).mean(0)
        d = d / d.norm()
        same_plain = [rd(t, f.subject, None) for _, t in same]
        for b in betas:
            phi = (b * r * d) if b > 0 else None
            train = [rd(t, f.subject, phi) for t in texts[:k]]
            held = [rd(t, f.subject, phi) for t in texts[k:]]
            keeps = [rd(t, f.subject, phi) for t in keep_texts]
            same_now = [rd(t, f.subject, phi) for _, t in same]
            for (g, _t), (_, lp0, _r0), (_, lp1, _r1) in zip(same, same_plain, same_now):
                gold = answer_token(tok, g.object)
                cost[b]["top1_same"].append(bool(lp0.argmax() == lp1.argmax()))
                cost[b]["kl"].append(float((lp0.exp() * (lp0 - lp1)).sum()))
                if int(lp0.argmax()) == gold:
                    cost[b]["right_before"] += 1
                    cost[b]["right_kept"].append(int(lp1.argmax()) == gold)
            for layer in read_layers:
                pos = torch.stack([x[layer][-1] for x, _, _ in train])
                neg = (base[layer] + Negatives.of(own[f.relation_id][layer])).plus(
                    torch.cat([x[layer] for x, _, _ in keeps])
                )
                w = discriminant(pos, neg, 0.05, 1.0, 0, 3)
                g = gate(pos @ w, neg.scores(w), 0.25, 0.9)
                s = stats[(b, layer)]
                s["train_sat"] += (pos @ w >= g.saturation).tolist()
                hx = torch.stack([x[layer][-1] for x, _, _ in held])
                s["held_open"] += (hx @ w > g.threshold).tolist()
                s["held_sat"] += (hx @ w >= g.saturation).tolist()
                s["same_open"] += [bool((x[layer] @ w > g.threshold).any()) for x, _, _ in same_now]
                eval_open[(b, layer)] |= eval_x[layer] @ w > g.threshold
                text_open[(b, layer)] |= unseen[layer] @ w > g.threshold
        print(f"target {n + 1}/{len(p['targets'])} {f.id} ({time.time() - t0:.0f} s)", flush=True)
    n_eval = int(owner.max()) + 1
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    rows = []
    for b in betas:
        c = cost[b]
        for layer in read_layers:
            s = stats[(b, layer)]
            opened = torch.zeros(n_eval, dtype=torch.bool).index_put_((owner,), eval_open[(b, layer)], accumulate=True)
            rows.append(
                {
                    "beta": b,
                    "flag": args.flag,
                    "read_layer": layer,
                    "train_saturated": mean(s["train_sat"]),
                    "heldout_open": mean(s["held_open"]),
                    "heldout_saturated": mean(s["held_sat"]),
                    "same_subject_open": mean(s["same_open"]),
                    "others_open": float(opened.float().mean()),
                    "unseen_text_open": float(text_open[(b, layer)].float().mean()),
                    "flag_same_top1_unchanged": mean(c["top1_same"]),
                    "flag_same_right_kept": f"{sum(c['right_kept'])}/{c['right_before']}",
                    "flag_same_mean_kl": mean(c["kl"]),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        with open(args.out, "a") as fh:
            for row in rows:
                fh.write(json.dumps({"args": vars(args), "wall_s": time.time() - t0, **row}) + "\n")


if __name__ == "__main__":
    main()
