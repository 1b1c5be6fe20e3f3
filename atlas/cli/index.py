"""``atlas index``: attribute every prompt of a dataset and store the knowledge neurons."""

from __future__ import annotations

import click

from atlas.cli.common import db_option, open_store, options_of
from atlas.cli.progress import progress_bar
from indexer.job.options import IndexOptions


@click.command("index")
@db_option
@options_of(IndexOptions)
def index(db_url: str | None, **options: object) -> None:
    """Index a dataset: integrated-gradients scores per prompt, knowledge neurons per fact.

    Creates a run, or resumes the unfinished run with the same model, dataset, selection and
    parameters: stopping it (even with kill -9) and running the same command again completes it
    with exactly the rows of an uninterrupted run. Prompts whose answer cannot be tokenised are
    recorded as skipped, with the reason.

    \b
    Example:
        atlas facts load kn-paper --relations P36,P103 --limit-per-relation 20
        atlas index --model smollm2 --dataset kn-paper --relations P36,P103
        atlas index --model ./my-model --dataset pararel --device cuda --workers auto --precision bf16 \\
            --db postgresql+psycopg:///atlas
    """
    from indexer.job.run import index as run_index

    store = open_store(db_url)
    opts = IndexOptions(**options)  # type: ignore[arg-type]
    with progress_bar() as bar:
        task = bar.add_task("starting", total=None, unit="prompts")

        def on_progress(done: int, total: int, relation: str) -> None:
            bar.update(task, completed=done, total=total, description=relation)
            if bar.disable:  # not a terminal (batch job, log file): one line per finished item instead
                click.echo(f"{done}/{total} prompts {relation}".rstrip(), err=True)

        summary = run_index(store, opts, on_progress)
    click.echo(format_summary(summary))


def format_summary(s: object) -> str:
    """The closing report: what the run holds now and where this session's time went."""
    c, t, run = s.counts, s.timings, s.run  # type: ignore[attr-defined]
    state = (
        "created" if s.created else ("already complete" if s.timings.items == 0 and run.status == "done" else "resumed")
    )  # type: ignore[attr-defined]
    lines = [
        f"run {run.name} (id {run.id}, {state}): {run.status}",
        f"  facts {c.facts:,}  prompts {c.prompts:,} (ok {c.ok:,}, skipped {c.skipped:,})  "
        f"knowledge neurons {c.neurons:,} in {c.facts_with_neurons:,} facts  "
        f"relations {c.relations_done}/{c.relations}",
    ]
    for reason, n in sorted(c.skip_reasons.items(), key=lambda kv: -kv[1])[:5]:
        lines.append(f"  skipped {n:,}: {reason}")
    wall = s.wall_s  # type: ignore[attr-defined]
    lines.append(
        f"  this session: {t.prompts:,} prompts in {wall:.1f} s ({s.prompts_per_s:.2f} prompts/s), "  # type: ignore[attr-defined]
        f"model {t.model_s:.1f} s, database {t.db_s:.1f} s ({100 * t.db_s / wall if wall else 0:.1f}% of wall), "
        f"model waiting for the database {t.wait_s:.1f} s"
        + (f"; {s.pass_size} prompts per pass, {s.workers} worker(s)" if s.pass_size else "")
        + (f", started in {max(s.worker_start_s):.1f} s" if s.worker_start_s else "")  # type: ignore[attr-defined]
    )  # type: ignore[attr-defined]
    if s.pending_elsewhere:  # type: ignore[attr-defined]
        lines.append(f"  {s.pending_elsewhere} work item(s) are still held by other workers")  # type: ignore[attr-defined]
    return "\n".join(lines)
