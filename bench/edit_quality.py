"""Precise edits on the real SmolLM2: the erase frontier, updates that spare other facts, audits.

Everything runs through the product's own pieces (`atlas.jobs.erase.select_neurons` / `SlotForm`,
`atlas.jobs.evaluate.judge`, `atlas.jobs.update.update_fact`, `atlas.jobs.audit`), on an atlas of
the bundled kn-paper relations (`bench/gpu_smollm2.sh`: run `smollm2-kn100`, 100 facts per
relation, defaults) plus a user's own JSONL file (`bench/data/user_facts.jsonl`: US state capitals
and currencies, indexed here into a run of their own).

Judged on held-out facts: per relation of the run, up to `--known` facts that are NOT in the run and
that the model gets right (greedy, or top-1 among the relation's objects) on at least one prompt,
plus `--other` more of them, all measured once before and after every edit.

1. erase grid: for each erase relation, selection {frequent, specific} x form {zero, damp:0.25,
   project} x k {10, 20, 50, 100}, plus the null-space preservation for some; the control (same
   form, layer-matched random neurons) for every k = 20; and the whole-layer `lsq` form (layers x
   strength, preserved, plus one unpreserved), each with its control (as many random layers);
2. updates: `--updates` facts of the run, each with the paper's rule, `ls` without preservation and
   the default (`ls` with the covariance preservation), trial edits (`--update-forms`);
3. audits: the default updates and the default erasures, audited (the audit's predictor, sketches
   where the run has them, against the measured dP).

Results: one JSON line per measurement in `--out` (and a summary line in bench/results.jsonl).

Example (a GPU machine; see bench/gpu_smollm2.sh):
    python3 bench/edit_quality.py --db atlas.duckdb --run smollm2-kn100 --device cuda --out eq.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atlas.db.datasets import read_jsonl, read_kn_paper  # noqa: E402
from atlas.db.neurons import Fact, Workset, read_run_atlas, read_workset  # noqa: E402
from atlas.db.store import Store  # noqa: E402
from atlas.jobs.audit import audit_edit, new_object_for, pool  # noqa: E402
from atlas.jobs.erase import EraseMaker, erase_relation, preserved, select_layers, select_neurons  # noqa: E402
from atlas.jobs.evaluate import EvalSet, RelationPlan, judge, object_candidates, sample  # noqa: E402
from atlas.jobs.rollback import rollback  # noqa: E402
from atlas.jobs.specs import EraseSpec, UpdateSpec  # noqa: E402
from atlas.jobs.update import update_fact  # noqa: E402
from atlas.jobs.weights import slots_written  # noqa: E402
from atlas.model.loading import load_model  # noqa: E402
from bench.results import append_result  # noqa: E402

PAPER_RELATIONS = ("P19", "P27", "P106", "P937")
UPDATE_FORMS = {  # each update fact is edited (trial) with each (`--update-forms`)
    "paper": UpdateSpec(form="paper"),
    "ls": UpdateSpec(preserve="none"),
    "ls+covariance": UpdateSpec(),  # the default: ls with `auto` preservation
}
AUDITED_FORM = "ls+covariance"  # the updates the audit part audits: the default form's
FORMS = ("zero", "damp:0.25", "project")
KS = (10, 20, 50, 100)


def held_out(
    lm, run_facts: dict[str, Fact], relations: list[str], known: int, other: int, seed: int, extra: list[Fact]
) -> list[EvalSet]:
    """Per relation, facts not in the run: up to `known` the model gets right, `other` more."""
    pool: dict[str, list[Fact]] = {}
    for f in read_kn_paper([r for r in relations if r not in {e.relation_id for e in extra}]).facts:
        if f.id not in run_facts:
            pool.setdefault(f.relation_id, []).append(
                Fact(f.id, f.relation_id, f.subject, f.object, [p.text for p in f.prompts if p.causal])
            )
    for f in extra:
        pool.setdefault(f.relation_id, []).append(f)
    sets = []
    for rel, facts in sorted(pool.items()):
        cands = object_candidates(lm, facts)
        facts = [f for f in sample(facts, 4 * (known + other), f"{seed}:{rel}") if f.prompts]
        probe = EvalSet.of(rel, lm, facts, candidates=cands)
        right = {id(who) for who, s in zip(probe.owners, probe.measure(lm)) if s.greedy or s.candidate_top1}
        chosen = [f for f in facts if id(f) in right][:known] + [f for f in facts if id(f) not in right][:other]
        sets.append(EvalSet.of(rel, lm, chosen, candidates=cands))
    return [s for s in sets if s.items]


def erase_specs(grid: str) -> list[EraseSpec]:
    """The grid, most telling first (a run cut short still has the defaults): the paper's erase and
    the default `lsq`, then the whole-layer variants (strength, preservation weight, layers, the
    null space, none), then neuron forms x selections x k with the null-space variants. `core`: the
    paper's erase, every `lsq` and the specific project/damp at k 20 and 50; `key`: the paper's
    erase, the default `lsq`, its strongest and its null-space form; `layers`: the default `lsq`,
    with w = 1000, and without the last layer; `small`: the paper's erase and the default `lsq`, a
    smoke test of the whole path."""
    paper = EraseSpec(select="frequent", top=20, form="zero", preserve="none")
    lsq = [EraseSpec(form="lsq")] + [
        EraseSpec(form="lsq", **change)
        for change in (
            {"strength": 1.0},
            {"preserve_weight": 10.0},
            {"preserve_weight": 1000.0},
            {"layers": 1},
            {"layers": 5},
            {"last_layer": False},
            {"preserve": "nullspace"},
            {"preserve": "none"},
        )
    ]
    neurons = [
        EraseSpec(select=s, top=k, form=f, preserve="none") for s in ("frequent", "specific") for f in FORMS for k in KS
    ]
    neurons += [
        EraseSpec(select="specific", top=20, form="project", preserve="nullspace"),
        EraseSpec(select="specific", top=50, form="project", preserve="nullspace"),
        EraseSpec(select="frequent", top=20, form="zero", preserve="nullspace"),
    ]
    if grid == "core":
        neurons = [s for s in neurons if s.select == "specific" and s.top in (20, 50) and s.form != "zero"]
    if grid == "key":
        lsq, neurons = [lsq[0], lsq[1], EraseSpec(form="lsq", preserve="nullspace")], []
    if grid == "layers":  # the layer choice: the default (the last layer leads) against attribution alone
        return [lsq[0]] + [EraseSpec(form="lsq", **c) for c in ({"preserve_weight": 1000.0}, {"last_layer": False})]
    if grid == "small":
        lsq, neurons = lsq[:1], []
    return [paper] + lsq + [s for s in neurons if s != paper]


def _config(spec: EraseSpec) -> dict[str, Any]:
    if spec.whole_layers:
        return {
            "select": "layers",
            "form": "lsq",
            "k": spec.layers,
            "strength": spec.strength,
            "preserve": spec.preservation,
            "weight": spec.preserve_weight if spec.preservation == "covariance" else None,
            "last_layer": spec.last_layer,
        }
    return {"select": spec.select, "form": spec.form, "k": spec.top, "preserve": spec.preserve}


def erase_grid(store, lm, run_name: str, plan_sets, before, relations, out, grid: str, control_k: int = 20) -> None:
    for rel in relations:
        ws: Workset = read_workset(store, run_name, lambda *_, rel=rel: rel)
        plan = RelationPlan(rel, plan_sets)
        for spec in erase_specs(grid):
            t0 = time.perf_counter()
            config = {"part": "erase", "relation": rel, **_config(spec)}
            try:
                with store.begin() as conn:
                    chosen = (select_layers if spec.whole_layers else select_neurons)(store, conn, ws, rel, spec)
                    keep = preserved(store, conn, ws, rel, spec)
                made = EraseMaker.of(lm, ws, rel, spec, chosen, keep)
                rows = {"edit": made.edit()}
                if spec.whole_layers or spec.top == control_k:
                    rows["control"] = made.control()
            except Exception as exc:  # noqa: BLE001 - a config that cannot be made is a result too
                _emit(out, {**config, "error": str(exc)})
                continue
            for which, slots in rows.items():
                with slots_written(lm, slots):
                    after = plan.measure(lm)
                judged = judge(plan, before, after)
                targets = made.targets if which == "edit" else made.control_targets
                extra = {"layers": targets} if spec.whole_layers else {"n_neurons": len(targets)}
                _emit(
                    out,
                    {
                        **config,
                        "which": which,
                        **extra,
                        "n_slots": len(slots),
                        "seconds": round(time.perf_counter() - t0, 2),
                        **_compact(judged),
                    },
                )


def _compact(judged: dict[str, Any]) -> dict[str, Any]:
    keep = ("right_before", "right_after", "cand_right_before", "cand_right_after", "dnll", "ppl_change", "n_prompts")
    return {
        "headline": judged["headline"],
        "edited": {k: judged["edited"][k] for k in keep} if judged["edited"] else None,
        "others_pooled": {k: judged["others_pooled"][k] for k in keep},
        "others": {r: {k: c[k] for k in keep} for r, c in judged["others"].items()},
        "fluency": judged["fluency"],
    }


def _emit(out: Path, row: dict[str, Any]) -> None:
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    h = row.get("headline") or {}
    print(
        row.get("part"),
        row.get("relation"),
        row.get("select"),
        row.get("form"),
        row.get("k"),
        row.get("preserve"),
        row.get("which"),
        {k: (round(v, 3) if isinstance(v, float) else v) for k, v in h.items()},
        row.get("error", ""),
        flush=True,
    )


def updates(store, lm, run: str, n: int, out: Path, seed: int, forms: list[str]) -> list[int]:
    """`n` facts with knowledge neurons, each updated (trial) with each of `forms`; returns the edit
    ids of the default form's updates (AUDITED_FORM)."""
    _, facts, neurons = read_run_atlas(store, run)
    rng = random.Random(seed)
    order = sorted(f for f in facts if f in neurons)
    rng.shuffle(order)
    done, ids = 0, []
    for fact_id in order:
        if done >= n:
            break
        obj = new_object_for(lm, facts[fact_id], facts, rng)
        if obj is None:
            continue
        try:
            eds = {
                name: update_fact(store, lm, run, fact_id, obj, spec, status="trial")
                for name, spec in UPDATE_FORMS.items()
                if name in forms
            }
        except Exception as exc:  # noqa: BLE001
            _emit(out, {"part": "update", "fact": fact_id, "error": str(exc)})
            continue
        done += 1
        ids += [eds[AUDITED_FORM].id] if AUDITED_FORM in eds else []
        for form, e in eds.items():
            _emit(
                out,
                {
                    "part": "update",
                    "fact": fact_id,
                    "relation": facts[fact_id].relation_id,
                    "form": form,
                    "edit_id": e.id,
                    "success_rate": e.metrics["success_rate"],
                    "change_rate": e.metrics["change_rate"],
                    "p_new": [e.metrics["p_new_before"], e.metrics["p_new_after"]],
                    "step": e.params.get("step"),
                    "headline": e.metrics["headline"],
                },
            )
    return ids


def audits(store, lm, args, update_ids: list[int], out: Path) -> None:
    """The updates and the default erasure of each relation (applied, audited, rolled back), pooled."""
    summaries = [audit_edit(store, lm, i) for i in update_ids[: args.audits]]
    for rel in [r for r in args.relations.split(",") if r]:
        e = erase_relation(store, lm, args.run, rel, EraseSpec(control=False, other_facts=3))
        summaries.append(audit_edit(store, lm, e.id))
        rollback(store, lm, e.id)
    for s in summaries:
        _emit(
            out,
            {
                "part": "audit",
                "edit_id": s.edit_id,
                "spearman": s.spearman,
                "auc": s.auc,
                "n": s.n_targets + s.n_predicted + s.n_random,
            },
        )
    for name, group in (
        ("updates", summaries[: len(update_ids[: args.audits])]),
        ("erasures", summaries[len(update_ids[: args.audits]) :]),
        ("all", summaries),
    ):
        pooled = pool(store, group)
        _emit(
            out,
            {
                "part": "audit-pooled",
                "edits": name,
                "n_edits": len(group),
                "spearman": pooled.spearman,
                "mean_spearman": pooled.mean_spearman,
                "auc": pooled.auc,
                "n_facts": pooled.n_facts,
            },
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True)
    ap.add_argument("--run", default="smollm2-kn100")
    ap.add_argument("--user-run", default=None, help="a run over bench/data/user_facts.jsonl (also erased)")
    ap.add_argument("--relations", default=",".join(PAPER_RELATIONS + ("P36", "P30")))
    ap.add_argument("--user-relations", default="U1,U2", help="relations of --user-run erased")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--known", type=int, default=20)
    ap.add_argument("--other", type=int, default=10)
    ap.add_argument("--updates", type=int, default=40)
    ap.add_argument("--audits", type=int, default=20)
    ap.add_argument("--parts", default="erase,update,audit")
    ap.add_argument("--update-forms", default=",".join(UPDATE_FORMS), help="update forms tried on each fact")
    grids = ("full", "core", "key", "layers", "small")
    ap.add_argument("--grid", choices=grids, default="full", help="erase configurations")
    ap.add_argument("--eval-relations", default=None, help="judge on these relations only (a smoke test)")
    ap.add_argument("--out", default="edit_quality.jsonl")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out, store, parts = Path(args.out), Store(args.db), args.parts.split(",")
    t_all = time.perf_counter()
    run, run_facts, _ = read_run_atlas(store, args.run)
    lm = load_model("smollm2", device=args.device)
    relations = (
        args.eval_relations.split(",") if args.eval_relations else sorted({f.relation_id for f in run_facts.values()})
    )
    user = read_jsonl(Path(__file__).parent / "data" / "user_facts.jsonl").facts
    indexed = read_run_atlas(store, args.user_run)[1] if args.user_run else {}
    extra = [
        Fact(f.id, f.relation_id, f.subject, f.object, [p.text for p in f.prompts if p.causal])
        for f in user
        if f.id not in indexed and (not args.eval_relations or f.relation_id in relations)
    ]
    if "erase" in parts:  # the held-out facts judge the erase grid (updates and audits measure their own)
        sets = held_out(lm, run_facts, relations, args.known, args.other, args.seed, extra)
        before = RelationPlan("", sets).measure(lm)
        plan = {"part": "plan", "relations": {s.name: len(s.items) for s in sets}}
        _emit(out, {**plan, "seconds": time.perf_counter() - t_all})
        for run_name, rels in [(args.run, args.relations), (args.user_run, args.user_relations)]:
            if run_name:
                erase_grid(store, lm, run_name, sets, before, [r for r in rels.split(",") if r], out, args.grid)
    forms = [f for f in args.update_forms.split(",") if f]
    if unknown := set(forms) - set(UPDATE_FORMS):
        sys.exit(f"--update-forms: unknown {sorted(unknown)}; use {', '.join(UPDATE_FORMS)}")
    audit_ids = updates(store, lm, args.run, args.updates, out, args.seed, forms) if "update" in parts else []
    if "audit" in parts:
        audits(store, lm, args, audit_ids, out)
    wall = time.perf_counter() - t_all
    append_result("edit_quality", vars(args), wall, 1, out=str(out))
    print(f"done in {wall:.0f} s")


if __name__ == "__main__":
    main()
