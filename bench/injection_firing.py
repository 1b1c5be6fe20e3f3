"""Where an injection's slot pairs open on general text they were never shown (real SmolLM2, CPU).

The fluency figure of `bench/injection.py` says how much the bundled general text's perplexity
rose; this says why. It injects the same counterfactual facts (`choose_facts`, same arguments),
runs the whole general text through the injected model and, per slot pair (a fact's pair or its
guard), lists the tokens where it is open: the pair's two activations differ, times its value's
length (the norm it adds to the residual stream there). Text after the first
`NEGATIVE_TEXT_CHARS` characters was never a negative of any key. With `--about SUBJECT`
(repeatable) it also reads every prompt of the run's other facts about SUBJECT and lists, per
prompt, the pairs open there and the norm each adds: which facts' slots reach a prompt whose
answer moved. With `--namesakes-of SUBJECT` (repeatable) it reads the prompts of that injected
subject's namesakes (any fact of the database, `injection_namesakes.sql`: those its guard is built
on are outside the run) and gives, per prompt, the largest norm that the subject's pairs (its slot
and its guard) add together at one position, beside the slot's alone: what a guard leaves where it
cancels. Then it rolls the injection back.

Example (the atlas of BENCHMARKS.md's injection sections; seed 7 with the values uncapped):
    PYTHONPATH=. python bench/injection_firing.py --db duckdb:////tmp/s7/a.duckdb --run smollm2-kn100 \\
        --in-run 1 --extra 3 --seed 7 --spec max_scale=0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atlas.db.neurons import read_run_atlas  # noqa: E402
from atlas.db.sqlfile import sql_text  # noqa: E402
from atlas.db.store import Store  # noqa: E402
from atlas.jobs.evaluate import GENERAL_TEXT  # noqa: E402
from atlas.jobs.inject import facts_from_file, inject_facts  # noqa: E402
from atlas.jobs.inject_audit import NEGATIVE_TEXT_CHARS  # noqa: E402
from atlas.jobs.inject_pools import last_word  # noqa: E402
from atlas.jobs.inject_weights import as_of_injection, rollback_injection  # noqa: E402
from atlas.model.hooks import hooks  # noqa: E402
from atlas.model.loading import load_model  # noqa: E402
from bench.injection import _write, choose_facts, spec_from  # noqa: E402
from bench.results import append_result  # noqa: E402

CHUNK = 512  # tokens per forward pass (SmolLM2 reads 8,192)
OPEN = 1e-3  # residual-norm units below which a pair counts as shut


@torch.no_grad()
def neuron_acts(lm, layers: set[int], ids: list[int]) -> dict[int, torch.Tensor]:
    """One forward pass over `ids`: each layer's neuron activations `[pos, n_neurons]`."""
    seen: dict[int, torch.Tensor] = {}
    fns = {layer: (lambda acts, layer=layer: seen.__setitem__(layer, acts[0].clone())) for layer in layers}
    with hooks(lm.adapter, fns):
        lm.model(input_ids=torch.tensor([ids], device=next(lm.model.parameters()).device))
    return seen


@torch.no_grad()
def openings(lm, pairs: dict[tuple[int, int], str], ids: list[int], unseen_from: int) -> dict[str, dict]:
    """Per pair ("owner L<layer>.<index>"): positions where it opens, how many are in unseen text,
    the summed norm it adds there, and the first few places (the text up to the token)."""
    out: dict[str, dict] = {}
    for start in range(0, len(ids), CHUNK):
        seen = neuron_acts(lm, {layer for layer, _ in pairs}, ids[start : start + CHUNK])
        for (layer, index), owner in pairs.items():
            length = float(lm.adapter.ffn_out(layer).weight[:, index].norm())
            added = (seen[layer][:, index] - seen[layer][:, index + 1]).abs() * length
            for p in torch.nonzero(added > OPEN).flatten().tolist():
                at = start + p
                row = out.setdefault(f"{owner} L{layer}.{index}", {"open": 0, "unseen": 0, "norm": 0.0, "where": []})
                row["open"] += 1
                row["unseen"] += at >= unseen_from
                row["norm"] = round(row["norm"] + float(added[p]), 2)
                if len(row["where"]) < 4:
                    row["where"].append(lm.tokenizer.decode(ids[max(0, at - 4) : at + 1]))
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["norm"]))


def prompt_ids(lm, text: str) -> list[int]:
    """The token ids of a prompt up to its `[Y]`, as the model reads it before the answer."""
    return list(lm.tokenizer(text.split("[Y]")[0].rstrip(), add_special_tokens=False).input_ids)


def prompt_openings(lm, pairs: dict[tuple[int, int], str], store: Store, run: str, about: list[str], rec) -> dict:
    """Per prompt of the run's facts about the `about` subjects (not the injected ones): the pairs
    open anywhere before its answer and the norm each adds there (`openings`)."""
    injected = {(f.subject, f.relation_id) for f in rec.facts}
    _, facts, _ = read_run_atlas(store, run)
    out = {}
    for f in sorted(facts.values(), key=lambda f: f.id):
        if f.subject not in about or (f.subject, f.relation_id) in injected:
            continue
        for text in f.prompts:
            ids = prompt_ids(lm, text)
            found = openings(lm, pairs, ids, len(ids))
            out[f"{f.relation_id} {text} -> {f.object}"] = {k: v["norm"] for k, v in found.items()}
    return out


@torch.no_grad()
def net_added(lm, pairs: list[tuple[int, int]], ids: list[int]) -> tuple[float, float]:
    """The largest norm, over the positions of `ids`, of what the `pairs` (layer, index) add to the
    residual stream together, and of what the first of them (a fact's slot) adds alone."""
    seen = neuron_acts(lm, {layer for layer, _ in pairs}, ids)
    added = [
        (seen[layer][:, index] - seen[layer][:, index + 1])[:, None] * lm.adapter.ffn_out(layer).weight[:, index]
        for layer, index in pairs
    ]  # each `[pos, hidden]`
    return float(sum(added).norm(dim=1).max()), float(added[0].norm(dim=1).max())


def namesake_openings(lm, store: Store, rec, subjects: list[str]) -> dict:
    """Per injected subject of `subjects`: per prompt of its namesakes, what its pairs add together
    and what its slot adds alone (`net_added`), rounded, and the largest of each."""
    out = {}
    for f in rec.facts:
        if f.subject not in subjects:
            continue
        pairs = [tuple(lp) for lp in f.info["slots"]]
        params = {"subject": f.subject, "word": last_word(f.subject), "causal": True, "limit": 1000}
        with store.begin() as conn:
            rows = list(conn.execute(sql_text("injection_namesakes", store.backend), params))
        prompts = {}
        for r in rows:
            ids = prompt_ids(lm, r.text)
            both, alone = net_added(lm, pairs, ids)
            prompts[r.text.replace("[X]", r.subject)] = [round(both, 2), round(alone, 2)]
        out[f.subject] = {
            "largest_together": max((v[0] for v in prompts.values()), default=None),
            "largest_slot_alone": max((v[1] for v in prompts.values()), default=None),
            "prompts": prompts,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--in-run", type=int, default=1)
    ap.add_argument("--extra", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--relations", default=None)
    ap.add_argument("--subjects", default=None, help="only the drawn facts of these subjects ('|'-separated)")
    ap.add_argument("--layers", default=None)
    ap.add_argument("--spec", default="", help="InjectSpec fields other than the defaults, e.g. max_scale=0")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--about", action="append", default=[], help="a subject whose other facts' prompts are read too")
    ap.add_argument("--namesakes-of", action="append", default=[], help="an injected subject whose namesakes are read")
    args = ap.parse_args()
    store = Store(args.db)
    lm = load_model("smollm2", device=args.device)
    rels = args.relations.split(",") if args.relations else None
    rows, _, _ = choose_facts(store, lm, args.run, args.in_run, args.extra, args.seed, rels, args.subjects)
    spec = spec_from(args.spec, args.layers)
    t0 = time.time()
    rec = inject_facts(store, lm, args.run, facts_from_file(_write(rows)), spec)
    pairs = {(layer, index): f.subject for f in rec.facts for layer, index in f.info["slots"]}
    text = GENERAL_TEXT.read_text()
    ids = list(lm.tokenizer(" " + text, add_special_tokens=False).input_ids)
    unseen_from = len(lm.tokenizer(" " + text[:NEGATIVE_TEXT_CHARS], add_special_tokens=False).input_ids)
    with as_of_injection(store, lm, rec.id) as (now, _, _):
        found = openings(now, pairs, ids, unseen_from)
        about = prompt_openings(now, pairs, store, args.run, args.about, rec) if args.about else {}
        names = namesake_openings(now, store, rec, args.namesakes_of)
    rollback_injection(store, lm, rec.id)
    result = {
        "n_facts": len(rows),
        "fluency_ppl_change": rec.audit.get("fluency_ppl_change"),
        "fluency_unseen_ppl_change": rec.audit.get("fluency_unseen_ppl_change"),
        "text_tokens": len(ids),
        "pairs_open_in_unseen_text": sum(1 for r in found.values() if r["unseen"]),
        "pairs": dict(list(found.items())[:10]),
        "about": about,
        "namesakes": names,
    }
    print(json.dumps(result, indent=1))
    append_result("injection_firing", vars(args), time.time() - t0, len(rows), result=result)


if __name__ == "__main__":
    main()
