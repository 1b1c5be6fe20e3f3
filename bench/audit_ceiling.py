"""How far a first-order interference audit can go (issue 11), on the real SmolLM2.

For every edit of a run, every fact's measured change of P(gold) (the edit's slots alone written on
the base weights, as `atlas audit` measures) against two predictions:
- `edit-impact`, the audit's predictor: the stored prompt-level IG scores (at most 50 per prompt) on
  the changed slots, times each slot's own-direction factor;
- the full first-order change, the ceiling of any first-order predictor: the model's true
  activations a and gradients g of log P(gold) at every position of every prompt, on every changed
  layer, P x sum_l sum_pos a_pos . (dV_l^T g_pos). It needs per prompt what the atlas does not store
  (activations and gradients of every position, ~2,100 values per layer and position);
- the same first-order change over the answer positions alone (what an index could keep per prompt).
Reported per edit and pooled: Spearman's rho over every fact of the run, and ROC AUC of |dP| / P
for "disturbed" (|dP| / P >= 10%) over the facts outside the edit's target, as `atlas audit` does.

    python bench/audit_ceiling.py --db duckdb:///lab.duckdb --run lab --make-edits
(an atlas indexed first, e.g. `atlas index --model smollm2 --dataset kn-paper --limit-per-relation 4
--precision bf16 --run lab`; Llama-family models, whose value slots are columns of the FFN output.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atlas.db.edits import edit_row, model_edits  # noqa: E402
from atlas.db.neurons import run_facts  # noqa: E402
from atlas.db.queries import run_query  # noqa: E402
from atlas.db.runs import resolve_run  # noqa: E402
from atlas.db.store import Store  # noqa: E402
from atlas.jobs.erase import erase_relation  # noqa: E402
from atlas.jobs.evaluate import EvalSet, fact_p  # noqa: E402
from atlas.jobs.metrics import roc_auc, spearman  # noqa: E402
from atlas.jobs.specs import EraseSpec  # noqa: E402
from atlas.jobs.weights import resolve_model, slots_of, slots_written  # noqa: E402
from atlas.model.hooks import hooks  # noqa: E402

QUICK = dict(eval_facts=4, other_facts=1, control=False)


def make_edits(store: Store, lm, run: str, lsq: list[str], zero: list[str]) -> None:
    """Default (lsq) erasures of `lsq`, the paper's erase (20 frequent neurons zeroed) of `zero`."""
    for rel in lsq:
        print("erase lsq", rel, erase_relation(store, lm, run, rel, EraseSpec(**QUICK)).id, flush=True)
    for rel in zero:
        spec = EraseSpec(select="frequent", top=20, form="zero", **QUICK)
        print("erase zero", rel, erase_relation(store, lm, run, rel, spec).id, flush=True)


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--make-edits", action="store_true", help="make the edits below first")
    ap.add_argument("--lsq", default="P36,P19,P103,P1412")
    ap.add_argument("--zero", default="P47,P364,P937")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results.jsonl"))
    args = ap.parse_args()
    store = Store(args.db)
    lm = resolve_model(store, None, args.run)
    if args.make_edits:
        make_edits(store, lm, args.run, args.lsq.split(","), args.zero.split(","))
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
    items = {f: EvalSet.of(f, lm, [facts[f]]).items for f in fl}
    pooled: dict[str, list] = {"edit-impact": [], "first-order": [], "first-order, answer positions": []}
    rows = []
    for e in edits:
        t0 = time.perf_counter()
        impact = run_query(store, "edit-impact", {"edit_id": e.id, "limit": 100_000})
        cols = impact.columns
        rec = {r[cols.index("fact_id")]: r[cols.index("predicted_dp")] for r in impact.rows}
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
        full = [first_order(lm, items[f], dV) for f in fl]
        preds = {
            "edit-impact": [float(rec.get(f) or 0.0) for f in fl],
            "first-order": [float(np.mean(every)) for every, _ in full],
            "first-order, answer positions": [float(np.mean(answer)) for _, answer in full],
        }
        row = {"edit": e.id, "kind": kind, "target": target, "slots": len(e.slots), "facts": len(fl)}
        for name, pred in preds.items():
            rho, auc, n_dist = scores(pred, meas, base, tgt)
            row[name] = {"spearman": rho, "auc10": auc}
            row["disturbed_others"] = n_dist
            pooled[name] += list(zip(pred, meas, base, tgt))
        row["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
    summary = {
        name: dict(zip(("spearman", "auc10", "disturbed"), scores(*map(list, zip(*r))))) for name, r in pooled.items()
    }
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
