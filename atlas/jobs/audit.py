"""Interference audits: predict from SQL which facts an edit disturbs, then measure it.

The prediction is the named query ``edit-interference`` (``queries/edit-interference.sql``): facts
whose knowledge neurons include value slots the edit rewrites, scored by the share of their
attribution mass on those slots. It needs nothing but the atlas and the edit's recorded slots,
so it can run before any weight is touched.

The measurement isolates the edit: P(gold) (mean over a fact's prompts) on the run's base weights
and on the base weights with only this edit's slots written. It covers the edit's targets (the
updated fact, or the erased relation's facts), the predicted facts, and as many random other facts
(predicted score 0). A fact counts as *disturbed* when |p_after - p_before| / p_before reaches
`threshold`; ROC AUC and precision@k (k = number of predicted facts) say how well the predicted
score ranks the disturbed facts above the others, among predicted + random facts.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from atlas.db.audits import AuditRow, stored_rows, write_audit
from atlas.db.edits import TRIAL, edit_row, model_edits
from atlas.db.neurons import Fact, read_run_atlas, run_facts
from atlas.db.queries import run_query
from atlas.db.runs import resolve_run
from atlas.db.store import Store
from atlas.errors import EditError
from atlas.jobs import metrics as m
from atlas.jobs.edits import update_fact
from atlas.jobs.evaluate import fact_p
from atlas.jobs.weights import ModelArg, check_weights, resolve_model, slots_of, slots_written
from atlas.model.loading import LoadedModel
from atlas.model.scoring import single_token_id


@dataclass(frozen=True)
class AuditSummary:
    """How one edit's measured damage compares with its predicted interference."""

    edit_id: int
    n_targets: int
    n_predicted: int
    n_random: int
    n_disturbed: int
    target_change: float | None  # relative change of mean P(gold) over the targets
    auc: float | None
    precision_at_k: float | None
    k: int
    threshold: float


@dataclass(frozen=True)
class SampleSummary:
    """The overall figure over many (trial) edits: pooled and per-edit-mean ranking quality."""

    edits: list[AuditSummary]
    pooled_auc: float | None
    mean_auc: float | None
    mean_precision_at_k: float | None
    n_pairs: int


def disturbed(p_before: float, p_after: float, threshold: float) -> bool:
    """Whether P(gold) moved by at least `threshold` of its value, in either direction."""
    return p_before > 0 and abs(p_after - p_before) / p_before >= threshold


def audit_edit(
    store: Store, lm: ModelArg, edit_id: int, *, limit: int = 50, threshold: float = 0.1, seed: int = 0
) -> AuditSummary:
    """Predict, measure and store the interference of edit `edit_id` (see the module docstring)."""
    predicted = run_query(store, "edit-interference", {"edit_id": edit_id, "limit": limit}, via="native")
    with store.begin() as conn:
        row = edit_row(conn, edit_id)
        run = resolve_run(conn, row.run_id)
        facts = run_facts(conn, run.id, store.backend)
        edit = next(e for e in model_edits(conn, store.backend, run.model_id) if e.id == edit_id)
    lm = resolve_model(store, lm, run)
    check_weights(lm, run)
    cols = predicted.columns
    pred = [
        (r[cols.index("fact_id")], float(r[cols.index("predicted_score")]))
        for r in predicted.rows
        if r[cols.index("fact_id")] in facts
    ]
    targets = (
        [row.target] if row.kind == "update" else sorted(f.id for f in facts.values() if f.relation_id == row.target)
    )
    taken = set(targets) | {f for f, _ in pred}
    pool = sorted(f for f in facts if f not in taken)
    rand = random.Random(f"{seed}:{edit_id}").sample(pool, min(len(pool), max(len(pred), 5)))
    roles = (
        [(f, "target", 0.0) for f in targets]
        + [(f, "predicted", s) for f, s in pred]
        + [(f, "random", 0.0) for f in rand]
    )
    chosen = [facts[f] for f, _, _ in roles]
    before = fact_p(lm, chosen)
    with slots_written(lm, slots_of([edit])):
        after = fact_p(lm, chosen)
    # rounded as the REAL columns store them, so the summary can be recomputed from the table
    kept = [
        AuditRow(f, role, _real(sc), _real(b), _real(a))
        for (f, role, sc), b, a in zip(roles, before, after)
        if b is not None
    ]
    result = summarise(edit_id, [(r.role, r.predicted_score, r.p_before, r.p_after) for r in kept], threshold)
    metrics = json.loads(row.metrics or "{}")
    metrics["audit"] = asdict(result)
    write_audit(store, edit_id, kept, metrics)
    return result


def _real(x: float) -> float:
    return float(np.float32(x))


def summarise(edit_id: int, rows: Sequence[tuple[str, float, float, float]], threshold: float) -> AuditSummary:
    """AuditSummary from (role, predicted_score, p_before, p_after) rows."""
    tb = [b for role, _, b, _ in rows if role == "target"]
    ta = [a for role, _, _, a in rows if role == "target"]
    ranked = [(s, disturbed(b, a, threshold)) for role, s, b, a in rows if role != "target"]
    scores, labels = [s for s, _ in ranked], [y for _, y in ranked]
    k = sum(1 for role, *_ in rows if role == "predicted")
    return AuditSummary(
        edit_id,
        len(tb),
        k,
        len(ranked) - k,
        sum(labels),
        m.relative_change(tb, ta),
        m.roc_auc(scores, labels),
        m.precision_at_k(scores, labels, k),
        k,
        threshold,
    )


def new_object_for(lm: LoadedModel, fact: Fact, facts: dict[str, Fact], rng: random.Random) -> str | None:
    """A plausible counterfactual object: another single-token object of the same relation."""
    cands = sorted({f.object for f in facts.values() if f.relation_id == fact.relation_id and f.object != fact.object})
    rng.shuffle(cands)
    for obj in cands:
        try:
            single_token_id(lm.tokenizer, obj)
            return obj
        except ValueError:
            continue
    return None


def audit_sample(
    store: Store,
    lm: ModelArg,
    run_name: str | int,
    n: int,
    *,
    seed: int = 0,
    limit: int = 50,
    threshold: float = 0.1,
    eval_facts: int = 10,
    on_edit: Callable[[], None] | None = None,
) -> SampleSummary:
    """Make `n` trial update edits on random facts of the run (never applied), audit each, pool."""
    run, facts, neurons = read_run_atlas(store, run_name)
    lm = resolve_model(store, lm, run)
    rng = random.Random(seed)
    order = sorted(f for f in facts if f in neurons)
    rng.shuffle(order)
    summaries: list[AuditSummary] = []
    for fact_id in order:
        if len(summaries) >= n:
            break
        obj = new_object_for(lm, facts[fact_id], facts, rng)
        if obj is None:
            continue
        try:
            edit = update_fact(store, lm, run.name, fact_id, obj, eval_facts=eval_facts, status=TRIAL)
        except EditError:
            continue  # e.g. every neuron of the fact is relation-shared: nothing to edit
        summaries.append(audit_edit(store, lm, edit.id, limit=limit, threshold=threshold, seed=seed))
        if on_edit:
            on_edit()
    return pool(store, summaries, threshold)


def pool(store: Store, summaries: list[AuditSummary], threshold: float) -> SampleSummary:
    pairs = [
        (s, disturbed(b, a, threshold))
        for e in summaries
        for role, s, b, a in stored_rows(store, e.edit_id)
        if role != "target"
    ]
    aucs = [e.auc for e in summaries if e.auc is not None]
    pks = [e.precision_at_k for e in summaries if e.precision_at_k is not None]
    return SampleSummary(
        summaries,
        m.roc_auc([p[0] for p in pairs], [p[1] for p in pairs]) if pairs else None,
        sum(aucs) / len(aucs) if aucs else None,
        sum(pks) / len(pks) if pks else None,
        len(pairs),
    )
