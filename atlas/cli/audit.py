"""``atlas audit``: predict an edit's collateral damage from SQL, then measure it."""

from __future__ import annotations

import click

from atlas.cli.common import db_option, model_option, open_store
from atlas.cli.progress import progress_bar


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _aucs(auc: dict) -> str:
    return ", ".join(f"{k} {_fmt(v)}" for k, v in auc.items())


def _line(s) -> str:
    return (
        f"edit {s.edit_id}: targets {s.n_targets} (P(gold) {_fmt(s.target_change, '+.1%')}), "
        f"predicted {s.n_predicted}, random {s.n_random}, disturbed {s.n_disturbed}; "
        f"Spearman rho ({s.predictor}) {_fmt(s.spearman)}; ROC AUC {_aucs(s.auc)}"
    )


def _note(predictor: str) -> None:
    if predictor != "sketch":
        click.echo(
            "note: the run kept no gradient sketches, so the prediction is edit-impact's (stored IG scores "
            "only; weaker on whole-layer edits). Index with --sketch-rank 4 to predict every edit form.",
            err=True,
        )


@click.command()
@db_option
@click.argument("edit_id", type=int, required=False)
@click.option("--sample", "sample", type=click.IntRange(1), default=None, help="Audit N trial edits of --run instead.")
@click.option("--run", "run", default=None, metavar="RUN", help="Run to sample trial edits from (with --sample).")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True, help="Predicted facts per edit.")
@click.option("--seed", type=int, default=0, show_default=True)
@model_option
def audit(db_url, edit_id, sample, run, limit, seed, model) -> None:
    """Predict which facts EDIT_ID disturbs from the atlas alone, measure, score the prediction.

    The prediction: the run's gradient sketches when it was indexed with `--sketch-rank` (the
    first-order change of every prompt, any edit form), else the query edit-impact (stored IG
    scores on the changed slots). Reports Spearman's rho between predicted and measured change of
    P(gold), and the ROC AUC of each predictor (sketch, impact, and the earlier edit-interference)
    for facts moved by >= 10 % and >= 50 %.
    With --sample N --run RUN: make N trial updates of random facts (never applied), audit each,
    and pool.

    \b
    Example:
        atlas audit 3
        atlas audit --sample 20 --run smollm2-kn5
    """
    from atlas.jobs.audit import audit_edit, audit_sample

    store = open_store(db_url)
    if sample is None:
        if edit_id is None:
            raise click.UsageError("give EDIT_ID, or --sample N --run RUN")
        summary = audit_edit(store, model, edit_id, limit=limit, seed=seed)
        click.echo(_line(summary))
        _note(summary.predictor)
        return
    if run is None or edit_id is not None:
        raise click.UsageError("--sample needs --run and no EDIT_ID")
    with progress_bar() as bar:
        task = bar.add_task("trial edits", total=sample, unit="edits")
        res = audit_sample(store, model, run, sample, seed=seed, limit=limit, on_edit=lambda: bar.advance(task))
    for s in res.edits:
        click.echo(_line(s))
    if res.edits:
        _note(res.edits[0].predictor)
    click.echo(
        f"overall: {len(res.edits)} edits, {res.n_facts} audited facts: Spearman rho {_fmt(res.spearman)} "
        f"(mean per edit {_fmt(res.mean_spearman)}); ROC AUC {_aucs(res.auc)}"
    )
