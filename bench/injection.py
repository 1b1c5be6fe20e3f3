"""Knowledge injection on the real SmolLM2 (CPU): counterfactual facts stacked, against the paper's
knowledge-neuron update rule on the same facts.

Facts: per relation of the run, `--in-run` facts of the run (those the update rule can also edit:
they have knowledge neurons) and `--extra` facts that the atlas holds but the run does not, each
given a counterfactual object: another single-token object of the same relation
(`atlas.jobs.audit.new_object_for`). They are written to a JSONL file in the user fact format and
read back with `atlas.jobs.inject.facts_from_file`, so the defaults are those a user's own file
gets; the last 2 causal prompts of each fact are held out (`--heldout`).

1. `inject_facts` with the default spec (or `--layers`): every fact in one injection, built one
   after the other on the model holding the earlier ones; the stored audit is the measurement
   (efficacy, held-out generalisation, the run's other facts: mean |dP/P|, right answers kept,
   slot firing; fluency), all facts active at once; and the held-out generalisation over the
   held-out prompts on which the model gave the fact's TRUE object before ("heldout_known": the
   paraphrases it reads as the relation at all; greedy over every token of the object, and per
   template: the stored audit's `generalisation_where_known` judges by the first token); and the
   run's other facts measured over all of them ("whole_run", `whole_run_plan`: the audit samples
   them; with Dai et al.'s mean |dP| / mean P, and `other_subjects`: the mean |dP/P| without the
   injected subjects). Then rolled back; the sha256 must come back.
2. The update rule (`atlas edit update --form paper`) on the in-run facts, applied one after the
   other, then the same measurement (`atlas.jobs.inject_audit`) on the same prompts, then rolled
   back (`--kn-forms paper,ls` also runs the default `ls` form).

`--relations U1,U2` takes the facts of those relations of the atlas instead of the run's (a user
file's: its relations are declared in the written JSONL); `--spec field=value,...` sets InjectSpec
fields (e.g. `hard_negatives=200`), the rest keep their defaults.

Example (this repo's CPU box; an atlas of P36/P27/P30, see BENCHMARKS.md):
    PYTHONPATH=. python bench/injection.py --db duckdb:////tmp/inj/bench.duckdb --run smol-inj
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atlas.db.datasets import bundled_relations  # noqa: E402
from atlas.db.facts import list_facts, show_fact  # noqa: E402
from atlas.db.neurons import Fact, read_run_atlas  # noqa: E402
from atlas.db.store import Store  # noqa: E402
from atlas.errors import AtlasError  # noqa: E402
from atlas.jobs import inject_audit as audit  # noqa: E402
from atlas.jobs.audit import new_object_for  # noqa: E402
from atlas.jobs.evaluate import EvalSet  # noqa: E402
from atlas.jobs.inject import facts_from_file, inject_facts
from atlas.jobs.inject_prompts import encode_fact  # noqa: E402
from atlas.jobs.inject_weights import as_of_injection, rollback_injection  # noqa: E402
from atlas.jobs.rollback import rollback  # noqa: E402
from atlas.jobs.specs import InjectSpec, UpdateSpec  # noqa: E402
from atlas.jobs.update import update_fact  # noqa: E402
from atlas.jobs.weights import current_weights  # noqa: E402
from atlas.model.loading import load_model, weights_sha256  # noqa: E402
from atlas.model.scoring import encode, score  # noqa: E402
from bench.results import append_result  # noqa: E402


def choose_facts(
    store: Store,
    lm,
    run: str,
    in_run: int,
    extra: int,
    seed: int,
    relations: list[str] | None = None,
    subjects: str | None = None,
) -> tuple[list[dict], list[str], dict[str, str]]:
    """JSONL rows of counterfactual facts, the ids of those that are in the run, and each one's
    true object (`relations`: those relations of the atlas instead of the run's, e.g. a user file's;
    `subjects`, 'A|B': only the drawn facts of those subjects, the same facts and new objects, e.g.
    to trace one slot)."""
    _, facts, neurons = read_run_atlas(store, run)
    rng = random.Random(seed)
    rows, ids, truth = [], [], {}
    for rel in relations or sorted({f.relation_id for f in facts.values()}):
        everything = {
            f.id: Fact(f.id, f.relation_id, f.subject, f.object) for f in list_facts(store, relation=rel, limit=None)
        }
        mine = [f for f in facts.values() if f.relation_id == rel and f.id in neurons]
        outside = sorted(set(everything) - set(facts))
        rng.shuffle(outside)
        picked = mine[:in_run] + [everything[i] for i in outside[: 4 * extra]]
        n_extra = 0
        for f in picked:
            inside = f.id in facts
            if not inside and n_extra == extra:
                continue
            new = new_object_for(lm, f, everything, rng)
            prompts = [p.text for p in show_fact(store, f.id).prompts if p.causal]
            if new is None or len(prompts) < 3:
                continue
            rows.append({"id": f"cf-{f.id}", "relation": rel, "subject": f.subject, "object": new, "prompts": prompts})
            ids += [f"cf-{f.id}"] if inside else []
            truth[f"cf-{f.id}"] = f.object
            n_extra += not inside
    if subjects:
        wanted = set(subjects.split("|"))
        rows = [r for r in rows if r["subject"] in wanted]
        kept = {r["id"] for r in rows}
        ids = [i for i in ids if i in kept]
    return rows, ids, truth


def heldout_pairs(lm, rows: list[dict], truth: dict[str, str], heldout: int) -> list[tuple]:
    """Every held-out prompt of the facts (the split `encode_fact` makes), encoded with the new
    object and with the true one (where both can be), and its template (the text, subject -> [X])."""
    out = []
    for f in facts_from_file(_write(rows)):
        _, held, texts = encode_fact(lm, f, heldout)
        for item, text in zip(held, texts[len(texts) - len(held) :]):
            true = encode(lm.tokenizer, text, truth[f.id], lm.adapter.is_masked_lm)
            if not isinstance(true, str):
                out.append((item, true, text.replace(f.subject, "[X]")))
    return out


CONTINUATION_TOKENS = 8


@torch.no_grad()
def names_in_continuation(lm, items: list) -> list[bool]:
    """Per item: does the model's greedy continuation of its prompt (`CONTINUATION_TOKENS` tokens)
    name its answer? A template whose next word is a function word ("The seat of government of
    Texas is" -> " the city of Austin") is judged by what the model goes on to say, not by top-1."""
    dev = next(lm.model.parameters()).device
    out = []
    for it in items:
        ids = torch.tensor([list(it.prompt_ids)], device=dev)
        for _ in range(CONTINUATION_TOKENS):
            nxt = lm.model(input_ids=ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
        said = lm.tokenizer.decode(ids[0, len(it.prompt_ids) :].tolist())
        out.append(lm.tokenizer.decode(list(it.answer_ids)).strip() in said)
    return out


def known_before(lm, rows: list[dict], truth: dict[str, str], heldout: int) -> tuple[list, tuple[list, list]]:
    """The held-out pairs (`heldout_pairs`) and, per pair, how the model as it is now scores the
    TRUE object (`Scored`) and whether its continuation names it: what `known_generalisation`
    compares with after the change."""
    pairs = heldout_pairs(lm, rows, truth, heldout)
    trues = [true for _, true, _ in pairs]
    return pairs, (score(lm.model, lm.adapter, trues), names_in_continuation(lm, trues))


def known_generalisation(pairs: list[tuple], before: tuple[list, list], lm) -> dict:
    """Held-out generalisation (new object greedy, on `lm` as it is now) over the held-out prompts
    on which the model gave the TRUE object greedily before (a paraphrase it reads as the relation
    at all: one it never completes with the true object cannot be expected to show the new one),
    and per held-out template: prompts, new object greedy now, true object greedy before, and the
    median P(true object) before (a template whose answer the model does not give even for the true
    fact, "[X]'s state government sits in" -> " the", is read apart from the others); for each,
    whether the greedy continuation names the new object now and the true one before
    (`names_in_continuation`); and the share where P(new object) now exceeds P(true object) now."""
    news = [new for new, _, _ in pairs]
    new_now = score(lm.model, lm.adapter, news)
    hits = [s.greedy for s in new_now]
    true_now = score(lm.model, lm.adapter, [true for _, true, _ in pairs])
    said = names_in_continuation(lm, news)
    before, said_before = before
    knew = [s.greedy for s in before]
    n = sum(knew)
    by_template: dict[str, list] = {}
    for (_, _, template), hit, was, now, then in zip(pairs, hits, before, said, said_before):
        by_template.setdefault(template, []).append((hit, was.greedy, was.p_gold, now, then))
    return {
        # CounterFact's paraphrase success (Meng et al. 2022): P(new object) > P(true object)
        "heldout_new_over_true": sum(a.p_gold > b.p_gold for a, b in zip(new_now, true_now)) / len(pairs)
        if pairs
        else None,
        "heldout_in_continuation": sum(said) / len(pairs) if pairs else None,
        "true_in_continuation_before": sum(said_before) / len(pairs) if pairs else None,
        "heldout_in_continuation_where_true_was": sum(a and b for a, b in zip(said, said_before)) / sum(said_before)
        if any(said_before)
        else None,
        "heldout_true_known": n,
        "heldout_prompts": len(pairs),
        "generalisation_where_known": sum(h and k for h, k in zip(hits, knew)) / n if n else None,
        "generalisation_where_unknown": sum(h and not k for h, k in zip(hits, knew)) / (len(pairs) - n)
        if len(pairs) > n
        else None,
        "by_template": {
            t: {
                "prompts": len(v),
                "new_greedy": sum(h for h, *_ in v),
                "true_greedy_before": sum(k for _, k, *_ in v),
                "median_p_true_before": round(statistics.median(p for _, _, p, *_ in v), 5),
                "new_in_continuation": sum(c for *_, c, _ in v),
                "true_in_continuation_before": sum(c for *_, c in v),
            }
            for t, v in sorted(by_template.items())
        },
    }


def kn_rule(
    store: Store, lm, run: str, rows: list[dict], ids: list[str], truth: dict[str, str], spec: InjectSpec, form: str
) -> dict:
    """The update rule on the in-run facts, applied one after another, judged like the injection."""
    facts = [f for f in facts_from_file(_write(rows)) if f.id in ids]
    pairs, before_true = known_before(lm, [r for r in rows if r["id"] in ids], truth, spec.heldout)
    plan = whole_run_plan(store, lm, run, facts, spec.heldout, truth)
    before = audit.measure(lm, plan)
    done, failed = [], 0
    for f in facts:
        try:
            done.append(
                update_fact(store, lm, run, f.id.removeprefix("cf-"), f.object, UpdateSpec(form=form, other_facts=1))
            )
        except AtlasError as exc:
            failed += 1
            print(f"  update {f.id}: {exc}", file=sys.stderr)
    with current_weights(store, lm, run):
        after = audit.measure(lm, plan)
        known = known_generalisation(pairs, before_true, lm)
    for e in reversed(done):
        rollback(store, lm, e.id)
    out = audit.judge(plan, before, after, [0] * len(facts))
    out["updated"], out["failed"], out["heldout_known"] = len(done), failed, known
    return out


def whole_run_plan(store: Store, lm, run: str, facts: list, heldout: int, truth: dict[str, str]) -> audit.AuditPlan:
    """The audit plan of `facts` over EVERY other fact of the run (the stored audit samples
    `audit_facts` of them, and measures the injected subjects' other facts apart): the issue's
    "across all other facts of the run" (`inject_audit.untouched`: not those that a fact's TRUE
    object `truth` restates), the same prompts for the injection and the update rule."""
    encoded = [encode_fact(lm, f, heldout) for f in facts]
    _, run_facts, _ = read_run_atlas(store, run)
    replaced = {(f.subject, f.relation_id): [truth[f.id]] for f in facts}
    others = EvalSet.of("others", lm, audit.untouched(run_facts.values(), replaced))
    return audit.AuditPlan([e[0] for e in encoded], [e[1] for e in encoded], others)


def other_subjects(owners: list[Fact], subjects: set[str], before: dict, after: dict) -> float | None:
    """The issue's mean |dP/P| over the other facts' prompts whose subject is not an injected one:
    what is left without the injected subjects' facts of other relations, where a subject-keyed
    slot fires by design."""
    kept = [(b, a) for who, b, a in zip(owners, before["others"], after["others"]) if who.subject not in subjects]
    return audit.mean_abs_rel_dp([b for b, _ in kept], [a for _, a in kept])


def _write(rows: list[dict]) -> Path:
    """The facts as a user's JSONL file; relations that are not bundled (a user file's) declared."""
    path = Path(tempfile.mkdtemp()) / "counterfactuals.jsonl"
    bundled = bundled_relations()
    rels = sorted({r["relation"] for r in rows} - set(bundled))
    heads = [{"relation": rel, "label": rel, "type": "N-1"} for rel in rels]
    path.write_text("".join(json.dumps(r) + "\n" for r in heads + rows))
    return path


def subset(a: dict[str, Any], positions: list[int]) -> dict[str, float | None]:
    """Efficacy and held-out generalisation pooled over the prompts of some facts."""
    fs = [a["facts"][i] for i in positions]
    tr = sum(f["n_train"] for f in fs)
    ho = sum(f["n_heldout"] for f in fs)
    return {
        "efficacy": sum(f["efficacy"] * f["n_train"] for f in fs) / tr if tr else None,
        "generalisation": sum((f["generalisation"] or 0) * f["n_heldout"] for f in fs) / ho if ho else None,
    }


def inject_and_audit(
    store: Store, lm, run: str, rows: list[dict], ids: list[str], truth: dict[str, str], spec: InjectSpec, base: str
) -> dict:
    """Inject every fact at once, read the stored audit (and the held-out generalisation where the
    model knew the true object), roll back and check the sha256."""
    pairs, before_true = known_before(lm, rows, truth, spec.heldout)
    facts = facts_from_file(_write(rows))
    whole = whole_run_plan(store, lm, run, facts, spec.heldout, truth)
    whole_before = audit.measure(lm, whole)
    t0 = time.time()
    rec = inject_facts(store, lm, run, facts, spec)
    wall = time.time() - t0
    with as_of_injection(store, lm, rec.id) as (now, _, _):
        known = known_generalisation(pairs, before_true, now)
        whole_after = audit.measure(now, whole)
    verdict = audit.judge(whole, whole_before, whole_after, [0] * len(facts))
    rolled = rollback_injection(store, lm, rec.id)
    with current_weights(store, lm, run) as sha:
        restored = sha == base == rec.sha256_before
    a = {k: v for k, v in rec.audit.items() if k != "facts"}
    in_run_pos = [f.position for f in rec.facts if f.fact_id in ids]
    result = {"n_facts": len(rows), "layers": rec.layers, "audit": a, "in_run": subset(rec.audit, in_run_pos)}
    result["heldout_known"] = known
    result["whole_run"] = {k: v for k, v in verdict.items() if k.startswith("others")}
    result["whole_run"]["others_mean_abs_rel_dp_other_subjects"] = other_subjects(
        whole.others.owners, {f.subject for f in facts}, whole_before, whole_after
    )
    result |= {"rollback_restores_sha256": restored and rolled.status == "rolled_back", "inject_wall_s": round(wall, 1)}
    result["gates_separable"] = sum(g["separable"] for f in rec.facts for g in f.info["gates"])
    result["value_reached"] = sum(bool(f.info["value"]["reached"]) for f in rec.facts)
    shares = [g["share"] for f in rec.facts for g in f.info.get("guards", []) if g["index"] is not None]
    mean = round(sum(shares) / len(shares), 3) if shares else None
    result["guards"] = {"built": len(shares), "share_mean": mean, "share_below_0.9": sum(s < 0.9 for s in shares)}
    return result


def spec_from(fields: str, layers: str | None = None) -> InjectSpec:
    """The defaults with `fields` ("name=value,...": InjectSpec fields, each read as its default's
    type, a flag as 0 or 1) and `layers` ("L,L,...") set."""
    spec = InjectSpec(layers=tuple(int(x) for x in layers.split(",")) if layers else None)
    pairs = dict(kv.split("=") for kv in fields.split(",") if kv)

    def read(name: str, text: str) -> object:
        old = getattr(spec, name)
        return text.lower() in ("1", "true") if isinstance(old, bool) else type(old)(text)

    return replace(spec, **{k: read(k, v) for k, v in pairs.items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--in-run", type=int, default=3, help="facts of the run per relation (also KN-updated)")
    ap.add_argument("--extra", type=int, default=8, help="facts outside the run per relation")
    ap.add_argument("--layers", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-kn", action="store_true")
    ap.add_argument("--skip-inject", action="store_true", help="only the update rule (same facts)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--kn-forms", default="paper", help="update forms compared, e.g. paper,ls")
    ap.add_argument("--relations", default=None, help="facts of these relations of the atlas (e.g. U1,U2)")
    ap.add_argument("--spec", default="", help="InjectSpec fields other than the defaults, e.g. gate_low=0.5")
    ap.add_argument("--subjects", default=None, help="only the drawn facts of these subjects ('|'-separated)")
    args = ap.parse_args()
    store = Store(args.db)
    lm = load_model("smollm2", device=args.device)
    base = weights_sha256(lm.model)
    rels = args.relations.split(",") if args.relations else None
    rows, ids, truth = choose_facts(store, lm, args.run, args.in_run, args.extra, args.seed, rels, args.subjects)
    spec = spec_from(args.spec, args.layers)
    t0 = time.time()
    result = {"n_facts": len(rows)}
    if not args.skip_inject:
        result = inject_and_audit(store, lm, args.run, rows, ids, truth, spec, base)
    wall = time.time() - t0
    if not args.skip_kn:
        for form in args.kn_forms.split(","):
            kn = kn_rule(store, lm, args.run, rows, ids, truth, spec, form)
            result[f"kn_{form}"] = {k: v for k, v in kn.items() if k != "facts"}
    print(json.dumps(result, indent=1))
    append_result("injection", vars(args), wall, len(rows), result=result)


if __name__ == "__main__":
    main()
