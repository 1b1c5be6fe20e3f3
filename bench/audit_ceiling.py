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

from atlas.db.audits import AuditRow, stored_rows  # noqa: E402
from atlas.db.edits import TRIAL, edit_row, model_edits  # noqa: E402
from atlas.db.neurons import read_run_atlas, run_facts  # noqa: E402
from atlas.db.runs import resolve_run  # noqa: E402
from atlas.db.store import Store  # noqa: E402
from atlas.errors import EditError  # noqa: E402
from atlas.jobs.audit import AuditSummary, audit_edit, new_object_for, pool  # noqa: E402
from atlas.jobs.erase import erase_relation  # noqa: E402
from atlas.jobs.evaluate import EvalSet  # noqa: E402
from atlas.jobs.metrics import roc_auc, spearman  # noqa: E402
from atlas.jobs.predict import sketch_prediction  # noqa: E402
from atlas.jobs.specs import EraseSpec, UpdateSpec  # noqa: E402
from atlas.jobs.update import update_fact  # noqa: E402
from atlas.jobs.weights import resolve_model, slots_of  # noqa: E402
from atlas.model.hooks import hooks  # noqa: E402
from atlas.options import ModelChoice  # noqa: E402

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


def predictions(store: Store, run_id: int, e, rows: list[AuditRow]) -> dict[str, list[float]]:
    """Each predictor's dP for the edit's audited facts: edit-impact, the sketches at each rank."""
    preds = {"edit-impact": [r.predicted_dp or 0.0 for r in rows]}
    for rank in SKETCH_RANKS:
        sk = sketch_prediction(store, run_id, e, rank=rank)
        if sk is not None:
            preds[f"sketch r={rank}"] = [sk.get(r.fact_id, 0.0) for r in rows]
    return preds


def ceiling(lm, facts, rows: list[AuditRow], e) -> dict[str, list[float]]:
    """The full first-order change of each audited fact (and at its answer positions alone)."""
    dV: dict[int, torch.Tensor] = {}
    for s in slots_of([e]):
        w = lm.adapter.ffn_out(s.layer).weight  # [hidden, neurons] in Llama-family models
        dV.setdefault(s.layer, torch.zeros_like(w))[:, s.neuron] = (s.edited - s.original).to(w.dtype)
    full = [first_order(lm, EvalSet.of(r.fact_id, lm, [facts[r.fact_id]]).items, dV) for r in rows]
    return {
        "first-order": [float(np.mean(every)) for every, _ in full],
        "first-order, answer positions": [float(np.mean(answer)) for _, answer in full],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--make-edits", action="store_true", help="make the edits below first")
    ap.add_argument("--lsq", default="P36,P19,P103,P1412")
    ap.add_argument("--zero", default="P47,P364,P937")
    ap.add_argument("--updates", type=int, default=13, help="trial updates made with --make-edits")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ceiling", action="store_true", help="also the full first-order change (a backward per fact)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results.jsonl"))
    args = ap.parse_args()
    store = Store(args.db)
    lm = resolve_model(store, ModelChoice(None, args.device), args.run)
    if args.make_edits:
        make_edits(store, lm, args.run, args.lsq.split(","), args.zero.split(","), args.updates, args.seed)
    with store.begin() as conn:
        run = resolve_run(conn, args.run)
        facts = run_facts(conn, run.id, store.backend)
        edits = model_edits(conn, store.backend, run.model_id)
    for p in lm.model.parameters():
        p.requires_grad_(False)
    pooled: dict[str, list] = defaultdict(list)
    out_rows = []
    for e in edits:
        t0 = time.perf_counter()
        summary = audit_edit(store, lm, e.id)  # the product's audit: targets, 50 predicted, 50 random facts
        rows = stored_rows(store, e.id)
        meas = [r.p_after - r.p_before for r in rows]
        base = [r.p_before for r in rows]
        tgt = [r.role == "target" for r in rows]
        preds = predictions(store, run.id, e, rows)
        if args.ceiling:
            preds.update(ceiling(lm, facts, rows, e))
        with store.begin() as conn:
            row = edit_row(conn, e.id)
        out = {"edit": e.id, "kind": row.kind, "target": row.target, "slots": len(e.slots), "audit": asdict(summary)}
        for name, pred in preds.items():
            rho, auc, n_dist = scores(pred, meas, base, tgt)
            out[name] = {"spearman": rho, "auc10": auc}
            out["disturbed_others"] = n_dist
            pooled[name] += list(zip(pred, meas, base, tgt))
        out["rows"] = [  # per audited fact, for later analysis: role, P before, measured dP, each prediction
            [r.fact_id, r.role, r.p_before, m, *(p[i] for p in preds.values())]
            for i, (r, m) in enumerate(zip(rows, meas))
        ]
        out["row_columns"] = ["fact", "role", "p_before", "measured_dp", *preds]
        out["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(out), flush=True)
        out_rows.append(out)
    summary = {
        name: dict(zip(("spearman", "auc10", "disturbed"), scores(*map(list, zip(*r))))) for name, r in pooled.items()
    }
    audited = pool(store, [AuditSummary(**r["audit"]) for r in out_rows])
    summary["atlas audit (pooled)"] = {"spearman": audited.spearman, "auc": audited.auc, "facts": audited.n_facts}
    result = {
        "bench": "audit_ceiling",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "run": args.run,
        "edits": out_rows,
        "pooled": summary,
        "command": "python bench/audit_ceiling.py " + " ".join(sys.argv[1:]),
    }
    print(json.dumps(result["pooled"]))
    with open(args.out, "a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
