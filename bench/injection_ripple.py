"""What injected facts do to their subjects' other facts in the run (real SmolLM2, CPU).

A slot keyed at the subject's last token opens on every prompt that names the subject, so an
injected "Beijing is the capital of Nigeria" also reaches "Beijing is a twin city of [Y]". This
injects the facts (`--fact S|R|O`, repeated: one injection; the relations' bundled templates) once
per `--specs` entry (InjectSpec fields, ';' between entries; '' is the defaults) and prints, per
other fact of the run about an injected subject, the mean P(gold) over its prompts before and
after, beside the injection's held-out top-1; each injection is rolled back before the next.
Injecting a fact with and without others shows what stacking adds.

Example (the atlas of BENCHMARKS.md's injection sections, the fact behind seed 7's mean |dP/P|):
    PYTHONPATH=. python bench/injection_ripple.py --db duckdb:////tmp/x/a.duckdb --run smollm2-kn100 \\
        --fact "Beijing|P1376|Nigeria" --specs ";keep_weight=1"
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atlas.db.neurons import read_run_atlas  # noqa: E402
from atlas.db.store import Store  # noqa: E402
from atlas.jobs.evaluate import fact_p  # noqa: E402
from atlas.jobs.inject import fact_from_option, inject_facts  # noqa: E402
from atlas.jobs.inject_weights import as_of_injection, rollback_injection  # noqa: E402
from atlas.model.loading import load_model  # noqa: E402
from bench.injection import choose_facts, spec_from  # noqa: E402
from bench.results import append_result  # noqa: E402


def chosen(store: Store, lm, run: str, choose: str | None) -> list:
    """The counterfactuals `choose_facts` makes for a seed (`--choose SEED:POSITIONS`), at those positions."""
    if not choose:
        return []
    seed, spans = choose.split(":")
    rows, _, _ = choose_facts(store, lm, run, 1, 3, int(seed))
    at = []
    for span in spans.split(","):
        lo, _, hi = span.partition("-")
        at += range(int(lo), int(hi or lo) + 1)
    return [fact_from_option(f"{rows[i]['subject']}|{rows[i]['relation']}|{rows[i]['object']}") for i in at]


def _how_built(info: dict) -> dict:
    """What decided a fact's slot: its gates, its value's scale and refinement steps, the residual norm."""
    return {k: info.get(k) for k in ("gates", "value", "residual_norm", "slots")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--fact", action="append", default=[], help="SUBJECT|RELATION|OBJECT (repeat for more)")
    ap.add_argument(
        "--choose",
        default=None,
        help="SEED:POSITIONS, e.g. 7:13,78-99: those of bench/injection.py's counterfactuals for that seed "
        "(--in-run 1 --extra 3), in its order, after the --fact ones",
    )
    ap.add_argument("--specs", default="", help="';'-separated InjectSpec field lists, e.g. ';keep_weight=1'")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    store, lm = Store(args.db), load_model("smollm2", device=args.device)
    facts = [fact_from_option(text) for text in args.fact] + chosen(store, lm, args.run, args.choose)
    if not facts:
        ap.error("give --fact or --choose")
    injected, subjects = {(f.subject, f.relation_id) for f in facts}, {f.subject for f in facts}
    _, run_facts, _ = read_run_atlas(store, args.run)
    mine = [f for f in run_facts.values() if f.subject in subjects and (f.subject, f.relation_id) not in injected]
    names, about = [f.name for f in mine], {f.subject for f in mine}
    before = dict(zip(names, fact_p(lm, mine)))
    t0, result = time.time(), {"fact": [f"{f.subject}|{f.relation_id}|{f.object}" for f in facts], "before": before}
    for fields in args.specs.split(";"):
        rec = inject_facts(store, lm, args.run, facts, spec_from(fields))
        with as_of_injection(store, lm, rec.id) as (now, _, _):
            after = dict(zip(names, fact_p(now, mine)))
        rollback_injection(store, lm, rec.id)
        result[fields or "defaults"] = {
            "built": {f"{f.subject}|{f.relation_id}": _how_built(f.info) for f in rec.facts if f.subject in about},
            "efficacy": rec.audit.get("efficacy"),
            "generalisation": rec.audit.get("generalisation"),
            "after": after,
            "rel_change": {k: round((after[k] - before[k]) / before[k], 3) for k in names if before[k]},
        }
    print(json.dumps(result, indent=1))
    append_result("injection_ripple", vars(args), time.time() - t0, len(args.specs.split(";")), result=result)


if __name__ == "__main__":
    main()
