"""How well an interference audit predicts (issue 11), on the real SmolLM2.

For every edit of a run, every fact's measured change of P(gold) (the edit's slots alone written on
the base weights, as `atlas audit` measures) against the predictions:
- `edit-impact`: the stored prompt-level IG scores (at most 50 per prompt) on the changed slots,
  times each slot's own-direction factor;
- the gradient sketches of a run indexed with `--sketch-rank` (`atlas.jobs.predict`), with their
  first 1, 2 or 4 triplets: what the audit predicts from the atlas alone;
- with `--ceiling`, the full first-order change, the ceiling of any first-order predictor: the
  model's true activations a and gradients g of log P(gold) at every position of every prompt, on
  every changed layer, P x sum_l sum_pos a_pos . (dV_l^T g_pos); and the same over the answer
  positions alone.
Reported per edit and pooled: Spearman's rho over every fact of the run, and ROC AUC of |dP| / P
for "disturbed" (|dP| / P >= 10%) over the facts outside the edit's target. Then the product's own
audit (`atlas.jobs.audit.audit_edit`: targets, the 50 facts predicted to move most, 50 random ones),
pooled over the edits as `atlas audit --sample` pools them.

    python bench/audit_ceiling.py --db duckdb:///lab.duckdb --run lab --make-edits --updates 13
(an atlas indexed first, e.g. `atlas index --model smollm2 --dataset kn-paper --limit-per-relation 4
--precision bf16 --sketch-rank 4 --run lab`; Llama-family models, whose value slots are columns of
the FFN output.)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atlas.db.edits import TRIAL, edit_row, model_edits  # noqa: E402
from atlas.db.neurons import read_run_atlas, run_facts  # noqa: E402
from atlas.db.queries import run_query  # noqa: E402
from atlas.db.runs import resolve_run  # noqa: E402
from atlas.db.store import Store  # noqa: E402
from atlas.errors import EditError  # noqa: E402
from atlas.jobs.audit import AuditSummary, audit_edit, new_object_for, pool  # noqa: E402
from atlas.jobs.erase import erase_relation  # noqa: E402
from atlas.jobs.evaluate import EvalSet, fact_p  # noqa: E402
from atlas.jobs.metrics import roc_auc, spearman  # noqa: E402
from atlas.jobs.predict import sketch_prediction  # noqa: E402
from atlas.jobs.specs import EraseSpec, UpdateSpec  # noqa: E402
from atlas.jobs.update import update_fact  # noqa: E402
from atlas.jobs.weights import resolve_model, slots_of, slots_written  # noqa: E402
from atlas.model.hooks import hooks  # noqa: E402

QUICK = dict(eval_facts=4, other_facts=1, control=False)


def make_edits(store: Store, lm, run: str, lsq: list[str], zero: list[str], updates: int, seed: int) -> None:
    """Default (lsq) erasures of `lsq`, the paper's erase (20 frequent neurons zeroed) of `zero`, and
    `updates` trial updates (the default `ls` form) of random facts to another object of their relation."""
    for rel in lsq:
        print("erase lsq", rel, erase_relation(store, lm, run, rel, EraseSpec(**QUICK)).id, flush=True)
    for rel in zero:
        spec = EraseSpec(select="frequent", top=20, form="zero", **QUICK)
        print("erase zero", rel, erase_relation(store, lm, run, rel, spec).id, flush=True)
    _, facts, neurons = read_run_atlas(store, run)
    rng = random.Random(seed)
    order = sorted(f for f in facts if f in neurons)
    rng.shuffle(order)
    made = 0
    for fact_id in order:
        obj = new_object_for(lm, facts[fact_id], facts, rng) if made < updates else None
        if obj is None:
            continue
        try:
            spec = UpdateSpec(other_facts=QUICK["other_facts"])
            e = update_fact(store, lm, run, fact_id, obj, spec, status=TRIAL)
        except EditError as exc:  # e.g. every knowledge neuron of the fact is relation-shared
            print("skip", fact_id, exc, flush=True)
            continue
        made += 1
        print("update", fact_id, "->", obj, e.id, flush=True)


def first_order(lm, items: list, dV: dict[int, torch.Tensor]) -> tuple[list[float], list[float]]:
    """Per prompt: P x sum over changed layers and every position of a . (dV^T g), with a the
    neuron activations and g the gradient of log P(gold) on what the FFN adds to the residual;
    and the same over the answer positions alone (what an index could keep: one position's a and g
    per layer instead of every position's)."""
    out, at_answer = [], []
    for it in items:
        acts: dict[int, torch.Tensor] = {}
        adds: dict[int, torch.Tensor] = {}
        seen = {layer: (lambda a, layer=layer, acts=acts: acts.__setitem__(layer, a.detach())) for layer in dV}
        kept = {layer: (lambda o, layer=layer, adds=adds: _keep_grad(adds, layer, o)) for layer in dV}
        ids = torch.tensor([it.prompt_ids + it.answer_ids[:-1]])
        emb = lm.adapter.model.get_input_embeddings()(ids).detach().requires_grad_(True)
        with torch.enable_grad(), hooks(lm.adapter, seen), hooks(lm.adapter, kept, site="output"):
            lp = torch.log_softmax(lm.model(inputs_embeds=emb).logits[0].float(), -1)
            p0 = len(it.prompt_ids) - 1
            logp = sum(lp[p0 + j, a] for j, a in enumerate(it.answer_ids))
            logp.backward()
        per_pos = sum(((acts[layer][0] @ dV[layer].T) * adds[layer].grad[0]).sum(-1) for layer in dV)  # [S]
        p = float(logp.detach().exp())
        out.append(p * float(per_pos.sum()))
        at_answer.append(p * float(per_pos[p0:].sum()))
    return out, at_answer


def _keep_grad(adds: dict, layer: int, o: torch.Tensor) -> None:
    o.retain_grad()
    adds[layer] = o


def scores(pred: list[float], meas: list[float], base: list[float], target: list[bool]) -> tuple:
    others = [(abs(p) / b, abs(m) / b >= 0.1) for p, m, b, t in zip(pred, meas, base, target) if not t]
    return spearman(pred, meas), roc_auc([o[0] for o in others], [o[1] for o in others]), sum(o[1] for o in others)


SKETCH_RANKS = (1, 2, 4)


def predictions(store: Store, lm, run_id: int, e, fl: list[str], items, dV, ceiling: bool) -> dict[str, list[float]]:
    """Each predictor's dP for every fact of `fl` under edit `e`."""
    impact = run_query(store, "edit-impact", {"edit_id": e.id, "limit": 100_000})
    cols = impact.columns
    rec = {r[cols.index("fact_id")]: r[cols.index("predicted_dp")] for r in impact.rows}
    preds = {"edit-impact": [float(rec.get(f) or 0.0) for f in fl]}
    for r in SKETCH_RANKS:
        sk = sketch_prediction(store, run_id, e, rank=r)
        if sk is not None:
            preds[f"sketch r={r}"] = [sk.get(f, 0.0) for f in fl]
    if ceiling:
        full = [first_order(lm, items[f], dV) for f in fl]
        preds["first-order"] = [float(np.mean(every)) for every, _ in full]
        preds["first-order, answer positions"] = [float(np.mean(answer)) for _, answer in full]
    return preds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--make-edits", action="store_true", help="make the edits below first")
    ap.add_argument("--lsq", default="P36,P19,P103,P1412")
    ap.add_argument("--zero", default="P47,P364,P937")
    ap.add_argument("--updates", type=int, default=13, help="trial updates made with --make-edits")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ceiling", action="store_true", help="also the full first-order change (a backward per fact)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results.jsonl"))
    args = ap.parse_args()
    store = Store(args.db)
    lm = resolve_model(store, None, args.run)
    if args.make_edits:
        make_edits(store, lm, args.run, args.lsq.split(","), args.zero.split(","), args.updates, args.seed)
    with store.begin() as conn:
        run = resolve_run(conn, args.run)
        facts = run_facts(conn, run.id, store.backend)
        edits = model_edits(conn, store.backend, run.model_id)
    for p in lm.model.parameters():
        p.requires_grad_(False)
    fl = sorted(facts)
    base = fact_p(lm, [facts[f] for f in fl])
    keep = [i for i, b in enumerate(base) if b]
    fl, base = [fl[i] for i in keep], [base[i] for i in keep]
    items = {f: EvalSet.of(f, lm, [facts[f]]).items for f in fl} if args.ceiling else {}
    pooled: dict[str, list] = defaultdict(list)
    rows = []
    for e in edits:
        t0 = time.perf_counter()
        with store.begin() as conn:
            row = edit_row(conn, e.id)
        kind, target = row.kind, row.target
        dV: dict[int, torch.Tensor] = {}
        for s in slots_of([e]):
            w = lm.adapter.ffn_out(s.layer).weight  # [hidden, neurons] in Llama-family models
            dV.setdefault(s.layer, torch.zeros_like(w))[:, s.neuron] = (s.edited - s.original).to(w.dtype)
        with slots_written(lm, slots_of([e])):
            after = fact_p(lm, [facts[f] for f in fl])
        meas = [a - b for a, b in zip(after, base)]
        tgt = [(f == target) if kind == "update" else (facts[f].relation_id == target) for f in fl]
        row = {"edit": e.id, "kind": kind, "target": target, "slots": len(e.slots), "facts": len(fl)}
        for name, pred in predictions(store, lm, run.id, e, fl, items, dV, args.ceiling).items():
            rho, auc, n_dist = scores(pred, meas, base, tgt)
            row[name] = {"spearman": rho, "auc10": auc}
            row["disturbed_others"] = n_dist
            pooled[name] += list(zip(pred, meas, base, tgt))
        row["audit"] = asdict(audit_edit(store, lm, e.id))  # the product's audit, stored with the edit
        row["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
    summary = {
        name: dict(zip(("spearman", "auc10", "disturbed"), scores(*map(list, zip(*r))))) for name, r in pooled.items()
    }
    audited = pool(store, [AuditSummary(**{**r["audit"]}) for r in rows])
    summary["atlas audit (pooled)"] = {"spearman": audited.spearman, "auc": audited.auc, "facts": audited.n_facts}
    result = {
        "bench": "audit_ceiling",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "run": args.run,
        "edits": rows,
        "pooled": summary,
        "command": "python bench/audit_ceiling.py " + " ".join(sys.argv[1:]),
    }
    print(json.dumps(result["pooled"]))
    with open(args.out, "a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
