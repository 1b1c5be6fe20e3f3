"""``atlas index``: attribute every prompt of a dataset and store the knowledge neurons."""

from __future__ import annotations

import click

from atlas.db.runs import RunConflict, SelectionError
from atlas.cli.common import db_option, open_store, user_errors
from atlas.cli.progress import progress_bar


def _relations(_ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...] | None:
    ids = tuple(r.strip() for v in value for r in v.split(",") if r.strip())
    return ids or None


def _workers(_ctx: click.Context, _param: click.Parameter, value: str) -> int | str:
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise click.BadParameter(f"{value!r}: give a number >= 1 or auto")
    return int(value)


@click.command("index")
@db_option
@click.option("--model", "model", required=True, metavar="NAME|DIR", help="smollm2 (bundled), a local HF model directory, or a hub id.")
@click.option("--dataset", required=True, metavar="pararel|kn-paper|NAME", help="A dataset loaded with `atlas facts load`.")
@click.option("--relations", multiple=True, callback=_relations, metavar="P19,P36", help="Only these relations (comma-separated or repeated).")
@click.option("--limit-per-relation", type=click.IntRange(min=1), metavar="N", help="Only the first N facts (by id) of each relation.")
@click.option("--device", default="cpu", show_default=True, metavar="cpu|cuda", help="Where the model runs.")
@click.option("--workers", default="1", show_default=True, callback=_workers, metavar="N|auto", help="Model worker processes fed by this one (auto: one per visible GPU). A GPU always gets a worker process.")
@click.option("--steps", type=click.IntRange(min=1), default=20, show_default=True, help="Integrated-gradients steps.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="Precision of the scaled IG pass (a weight copy; P(gold) and activations stay fp32). bf16 is "
                   "~2x faster on AMX CPUs and 1.5x on GPUs; top-20 neurons agree ~98-99% with fp32 (BENCHMARKS.md).")
@click.option("--run", "run_name", metavar="NAME", help="Run name (default: model-dataset-<key>); the same name resumes it.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Prompts per attribution pass [default: 4 on a CPU; on a GPU as many as half its free memory holds, "
                   "at most 512]. Larger passes are faster on a GPU (SmolLM2-135M: ~0.13 GiB each).")
@click.option("--facts-per-item", type=click.IntRange(min=1),
              help="Facts per work item, the unit of claiming and redoing [default: 8 on a CPU, 96 on a GPU, enough to fill large passes].")
@click.option("--score-cap", type=click.IntRange(min=1), default=50, show_default=True, help="Stored scores per prompt (coarse ones always kept).")
@click.option("--lease", "lease_s", type=click.IntRange(min=2), default=120, show_default=True, metavar="SECONDS",
              help="Work-item lease: a crashed worker's items are redone by others after this long.")
@user_errors(SelectionError, RunConflict)
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
    from indexer.job.run import IndexingError, IndexOptions, index as run_index

    store = open_store(db_url)
    try:
        opts = IndexOptions(**options)  # type: ignore[arg-type]
        with progress_bar() as bar:
            task = bar.add_task("starting", total=None, unit="prompts")

            def on_progress(done: int, total: int, relation: str) -> None:
                bar.update(task, completed=done, total=total, description=relation)
                if bar.disable:  # not a terminal (batch job, log file): one line per finished item instead
                    click.echo(f"{done}/{total} prompts {relation}".rstrip(), err=True)

            summary = run_index(store, opts, on_progress)
    except IndexingError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(format_summary(summary))


def format_summary(s: object) -> str:
    """The closing report: what the run holds now and where this session's time went."""
    c, t, run = s.counts, s.timings, s.run  # type: ignore[attr-defined]
    state = "created" if s.created else ("already complete" if s.timings.items == 0 and run.status == "done" else "resumed")  # type: ignore[attr-defined]
    lines = [
        f"run {run.name} (id {run.id}, {state}): {run.status}",
        f"  facts {c.facts:,}  prompts {c.prompts:,} (ok {c.ok:,}, skipped {c.skipped:,})  "
        f"knowledge neurons {c.neurons:,} in {c.facts_with_neurons:,} facts  relations {c.relations_done}/{c.relations}",
    ]
    for reason, n in sorted(c.skip_reasons.items(), key=lambda kv: -kv[1])[:5]:
        lines.append(f"  skipped {n:,}: {reason}")
    wall = s.wall_s  # type: ignore[attr-defined]
    lines.append(f"  this session: {t.prompts:,} prompts in {wall:.1f} s ({s.prompts_per_s:.2f} prompts/s), "  # type: ignore[attr-defined]
                 f"model {t.model_s:.1f} s, database {t.db_s:.1f} s ({100 * t.db_s / wall if wall else 0:.1f}% of wall), "
                 f"model waiting for the database {t.wait_s:.1f} s"
                 + (f"; {s.pass_size} prompts per pass, {s.workers} worker(s)" if s.pass_size else ""))  # type: ignore[attr-defined]
    if s.pending_elsewhere:  # type: ignore[attr-defined]
        lines.append(f"  {s.pending_elsewhere} work item(s) are still held by other workers")  # type: ignore[attr-defined]
    return "\n".join(lines)
