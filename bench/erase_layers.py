"""Which layers the default `lsq` erase edits, and what that decides (issue 11).

The default erase edits the `--layers` layers with most of the relation's stored attribution above
the floor (`relation-layers`). This measures the same erase (the run's facts of the relation as
keys, the product's preservation, strength and weight: `atlas.jobs.erase.EraseMaker`) on other
layer sets given by hand, e.g. the chosen ones against the same with the last layer in:

    python bench/erase_layers.py --db duckdb:///a.duckdb --run k4 --relation P19 --layer-sets 28,27,22 28,29,22

Measured before and after each layer set (the change written, measured, then restored): the run's
own facts of the relation, and `--held` facts of it that are not in the run (the first ones by id,
skipping `--skip`): top-1 accuracy, perplexity of the gold answers, mean P(gold). One JSON line
per layer set, and a summary line in bench/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atlas.db.datasets import read_kn_paper  # noqa: E402
from atlas.db.neurons import Fact, read_workset  # noqa: E402
from atlas.db.store import Store  # noqa: E402
from atlas.jobs.erase import EraseMaker, preserved, select_layers  # noqa: E402
from atlas.jobs.evaluate import EvalSet, measure, summary  # noqa: E402
from atlas.jobs.specs import EraseSpec  # noqa: E402
from atlas.jobs.weights import resolve_model, slots_written  # noqa: E402
from atlas.options import ModelChoice  # noqa: E402
from bench.results import append_result  # noqa: E402


def held_facts(relation: str, run_facts: dict[str, Fact], skip: int, n: int) -> list[Fact]:
    """`n` kn-paper facts of `relation` outside the run, in id order after the first `skip`."""
    out = [
        Fact(f.id, f.relation_id, f.subject, f.object, [p.text for p in f.prompts if p.causal])
        for f in sorted(read_kn_paper([relation]).facts, key=lambda f: f.id)
        if f.id not in run_facts
    ]
    return out[skip : skip + n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--relation", required=True)
    ap.add_argument("--layer-sets", nargs="+", required=True, help="comma-separated layers, one set per argument")
    ap.add_argument("--held", type=int, default=20, help="held-out facts of the relation measured")
    ap.add_argument(
        "--skip", type=int, default=196, help="held-out facts skipped first, by id (196: those of BENCHMARKS.md)"
    )
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    start = time.perf_counter()
    store, spec, rel = Store(args.db), EraseSpec(), args.relation
    with store.begin() as conn:  # read, then compute with no transaction open
        ws = read_workset(store, args.run, lambda run, facts, neurons: rel, conn=conn)
        chosen = select_layers(store, conn, ws, rel, spec)
        keep = preserved(store, conn, ws, rel, spec)
    lm = resolve_model(store, ModelChoice(None, args.device), ws.run)
    made = EraseMaker.of(lm, ws, rel, spec, chosen, keep)
    own = [f for f in ws.facts.values() if f.relation_id == rel]
    sets = [EvalSet.of("own", lm, own), EvalSet.of("held", lm, held_facts(rel, ws.facts, args.skip, args.held))]

    def measured() -> dict:
        return {k: summary(v) for k, v in measure(lm, sets).items()}

    before = measured()
    print(json.dumps({"chosen_by_default": made.targets, "before": before}), flush=True)
    rows = []
    for text in args.layer_sets:
        t0 = time.perf_counter()
        layers = [int(x) for x in text.split(",")]
        with slots_written(lm, made.form.slots(layers)):
            after = measured()
        change = {k: after[k]["perplexity"] / before[k]["perplexity"] - 1 for k in after}
        row = {"layers": layers, "after": after, "ppl_change": change, "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    append_result(
        "erase_layers",
        {"run": args.run, "relation": rel, "held": args.held, "skip": args.skip, "layer_sets": args.layer_sets},
        time.perf_counter() - start,
        len(rows),
        n_preserved_facts=len(keep),
        before=before,
        rows=rows,
        command="python bench/erase_layers.py " + " ".join(sys.argv[1:]),
    )


if __name__ == "__main__":
    main()
