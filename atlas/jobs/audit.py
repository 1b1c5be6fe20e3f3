"""Interference audits: predict from the atlas which facts an edit disturbs and by how much, then measure.

The predictors read only the atlas and the edit's recorded slots, so they run before any weight is
touched:

* the gradient sketches (the audit's predictor when the run kept them, `atlas index --sketch-rank`):
  each prompt's first-order change of log P(gold) under the edit's slot changes, every position
  included, for any edit form (`atlas.jobs.predict`);
* `edit-impact` (the named query; the audit's predictor for a run without sketches): each fact's
  change of P(gold), to first order, from its stored prompt-level IG scores on the changed slots
  times each slot's factor (the share of its own direction the edit writes away); IG's
  completeness per layer makes minus the score of a zeroed slot an estimate of the change of P(gold);
* `edit-interference` (the earliest one, kept for comparison): the share of a fact's knowledge-neuron
  attribution mass that lies on changed slots.

The measurement isolates the edit: P(gold) (mean over a fact's prompts) on the run's base weights
and on the base weights with only this edit's slots written, for the edit's targets (the updated
fact, or the erased relation's facts), the facts the audit's predictor lists first and as many
random other facts. Reported: Spearman's rho between predicted and measured change of P(gold) over
all of them (per dP predictor), and the ROC AUC of each predictor for "disturbed" (|dP| / P >=
threshold) at 10% and 50%, over the predicted and random facts (targets excluded: they are meant
to move).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from atlas.db.audits import DP_COLUMNS, AuditRow, predictor_of, stored_rows, write_audit
from atlas.db.edits import TRIAL, edit_row, model_edits
from atlas.db.neurons import Fact, read_run_atlas, run_facts
from atlas.db.queries import run_query
from atlas.db.runs import resolve_run
from atlas.db.store import Store
from atlas.errors import EditError
from atlas.jobs import metrics as m
from atlas.jobs.evaluate import fact_p
from atlas.jobs.predict import sketch_prediction
from atlas.jobs.specs import UpdateSpec
from atlas.jobs.update import update_fact
from atlas.jobs.weights import ModelArg, check_weights, resolve_model, slots_of, slots_written
from atlas.model.loading import LoadedModel
from atlas.model.scoring import single_token_id

THRESHOLDS = (0.1, 0.5)


@dataclass(frozen=True)
class AuditSummary:
    """How one edit's measured damage compares with the predictions."""

    edit_id: int
    n_targets: int
    n_predicted: int
    n_random: int
    n_disturbed: int  # at the first threshold, predicted + random facts
    target_change: float | None  # relative change of mean P(gold) over the targets
    spearman: float | None  # the audit's predictor vs measured dP, every audited fact
    auc: dict[str, float | None]  # "sketch@0.1", "impact@0.1", "interference@0.1", ... per threshold
    predictor: str = "impact"  # "sketch" when the run kept gradient sketches, else "impact" (edit-impact)
    spearman_by: dict[str, float | None] = field(default_factory=dict)  # per dP predictor


@dataclass(frozen=True)
class SampleSummary:
    """Many edits pooled: rho and AUCs over all their audited facts, and per-edit means."""

    edits: list[AuditSummary]
    spearman: float | None
    auc: dict[str, float | None]
    mean_spearman: float | None
    n_facts: int


def disturbed(p_before: float, p_after: float, threshold: float) -> bool:
    """Whether P(gold) moved by at least `threshold` of its value, in either direction."""
    return p_before > 0 and abs(p_after - p_before) / p_before >= threshold


def _column(result, name: str) -> dict[str, float]:
    cols = result.columns
    return {r[cols.index("fact_id")]: float(r[cols.index(name)] or 0.0) for r in result.rows}


def audit_edit(store: Store, lm: ModelArg, edit_id: int, *, limit: int = 50, seed: int = 0) -> AuditSummary:
    """Predict, measure and store the interference of edit `edit_id` (see the module docstring)."""
    impact = _column(
        run_query(store, "edit-impact", {"edit_id": edit_id, "limit": 100_000}, via="native"), "predicted_dp"
    )
    share = _column(
        run_query(store, "edit-interference", {"edit_id": edit_id, "limit": 100_000}, via="native"), "predicted_score"
    )
    with store.begin() as conn:
        row = edit_row(conn, edit_id)
        run = resolve_run(conn, row.run_id)
        facts = run_facts(conn, run.id, store.backend)
        edit = next(e for e in model_edits(conn, store.backend, run.model_id) if e.id == edit_id)
    sketched = sketch_prediction(store, run.id, edit)  # None: the run kept no sketches
    lm = resolve_model(store, lm, run)
    check_weights(lm, run)
    roles = _roles(row, facts, impact if sketched is None else sketched, limit, seed)
    chosen = [facts[f] for f, _ in roles]
    before = fact_p(lm, chosen)
    with slots_written(lm, slots_of([edit])):
        after = fact_p(lm, chosen)
    # rounded as the REAL columns store them, so the summary can be recomputed from the table
    kept = [
        AuditRow(
            f,
            role,
            _real(share.get(f, 0.0)),
            _real(b),
            _real(a),
            _real(impact.get(f, 0.0)),
            None if sketched is None else _real(sketched.get(f, 0.0)),
        )
        for (f, role), b, a in zip(roles, before, after)
        if b is not None
    ]
    result = summarise(edit_id, kept)
    metrics = json.loads(row.metrics or "{}")
    metrics["audit"] = asdict(result)
    write_audit(store, edit_id, kept, metrics)
    return result


def _roles(row, facts: dict[str, Fact], predicted: dict[str, float], limit: int, seed: int) -> list[tuple[str, str]]:
    """(fact, role): the edit's targets, the facts predicted to move most, as many random ones."""
    targets = (
        [row.target] if row.kind == "update" else sorted(f.id for f in facts.values() if f.relation_id == row.target)
    )
    ranked = sorted(
        (f for f in predicted if f in facts and f not in set(targets)), key=lambda f: (-abs(predicted[f]), f)
    )
    top = ranked[:limit]
    taken = set(targets) | set(top)
    pool = sorted(f for f in facts if f not in taken)
    rand = random.Random(f"{seed}:{row.id}").sample(pool, min(len(pool), max(len(top), 5)))
    return [(f, "target") for f in targets] + [(f, "predicted") for f in top] + [(f, "random") for f in rand]


def _real(x: float) -> float:
    return float(np.float32(x))


def dp_of(r: AuditRow, name: str) -> float | None:
    """The change of P(gold) predictor `name` (a key of `DP_COLUMNS`) gave row r (sketch: None when
    the run kept none)."""
    value = getattr(r, DP_COLUMNS[name])
    return 0.0 if value is None and name == "impact" else value


def predictor(rows: Sequence[AuditRow]) -> str:
    return predictor_of(r.predicted_sketch_dp for r in rows)


def dp_predictors(rows: Sequence[AuditRow]) -> list[str]:
    """The dP predictors these rows carry: edit-impact always, the sketches on a sketched run."""
    return ["sketch", "impact"] if predictor(rows) == "sketch" else ["impact"]


def rho_of(rows: Sequence[AuditRow], name: str) -> float | None:
    return m.spearman([dp_of(r, name) for r in rows], [r.p_after - r.p_before for r in rows])


def aucs(rows: Sequence[AuditRow]) -> dict[str, float | None]:
    ranked = [r for r in rows if r.role != "target"]
    out: dict[str, float | None] = {}
    for t in THRESHOLDS:
        labels = [disturbed(r.p_before, r.p_after, t) for r in ranked]
        for name in dp_predictors(ranked):
            dps = [dp_of(r, name) for r in ranked]
            out[f"{name}@{t}"] = m.roc_auc([abs(dp) / r.p_before for dp, r in zip(dps, ranked)], labels)
        out[f"interference@{t}"] = m.roc_auc([r.predicted_score for r in ranked], labels)
    return out


def summarise(edit_id: int, rows: Sequence[AuditRow]) -> AuditSummary:
    """AuditSummary from an edit's audit rows."""
    tb = [r.p_before for r in rows if r.role == "target"]
    ta = [r.p_after for r in rows if r.role == "target"]
    k = sum(1 for r in rows if r.role == "predicted")
    n_random = sum(1 for r in rows if r.role == "random")
    hit = sum(disturbed(r.p_before, r.p_after, THRESHOLDS[0]) for r in rows if r.role != "target")
    rhos = {n: rho_of(rows, n) for n in dp_predictors(rows)}
    main = predictor(rows)
    return AuditSummary(
        edit_id, len(tb), k, n_random, hit, m.relative_change(tb, ta), rhos[main], aucs(rows), main, rhos
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
    spec: UpdateSpec | None = None,
    on_edit: Callable[[], None] | None = None,
) -> SampleSummary:
    """Make `n` trial update edits on random facts of the run (never applied), audit each, pool."""
    run, facts, neurons = read_run_atlas(store, run_name)
    lm = resolve_model(store, lm, run)
    spec = spec or UpdateSpec(other_facts=1)
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
            edit = update_fact(store, lm, run.name, fact_id, obj, spec, status=TRIAL)
        except EditError:
            continue  # e.g. every neuron of the fact is relation-shared: nothing to edit
        summaries.append(audit_edit(store, lm, edit.id, limit=limit, seed=seed))
        if on_edit:
            on_edit()
    return pool(store, summaries)


def pool(store: Store, summaries: list[AuditSummary]) -> SampleSummary:
    """Every audited fact of `summaries`, pooled (from the stored rows)."""
    rows = [r for e in summaries for r in stored_rows(store, e.edit_id)]
    rhos = [e.spearman for e in summaries if e.spearman is not None]
    rho = rho_of(rows, predictor(rows)) if rows else None
    return SampleSummary(summaries, rho, aucs(rows), sum(rhos) / len(rhos) if rhos else None, len(rows))
