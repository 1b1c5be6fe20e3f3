"""``atlas probe``: suppress or amplify knowledge neurons and measure P(gold) against controls."""

from __future__ import annotations

import io

import click
from rich.console import Console
from rich.table import Table

from atlas.cli.common import db_option, model_option, open_store
from atlas.cli.progress import progress_bar
from atlas.options import ModelChoice


@click.group()
def probe() -> None:
    """Intervene on knowledge neurons' activations (the paper's suppress / amplify experiments)."""


def _probe(kind: str) -> click.Command:
    def command(db_url: str | None, run: str, relation: str | None, seed: int, model: ModelChoice) -> None:
        from atlas.jobs.probe import count_facts
        from atlas.jobs.probe import probe as run_probe

        store = open_store(db_url)
        with progress_bar() as bar:
            task = bar.add_task(f"{kind} facts", total=count_facts(store, run, relation), unit="facts")
            rows = run_probe(store, model, run, kind, relation, seed, on_fact=lambda: bar.advance(task))
        click.echo(summary_table(rows, title=f"{kind}: relative change of P(gold) (mean delta p / mean p0), run {run}"))

    factor = "0 (suppress)" if kind == "suppress" else "2 (amplify)"
    command.__doc__ = f"""Set each fact's knowledge-neuron activations x{factor} at the answer position.

    Compares with as many neurons of a fact of another relation and with random neurons of the same
    layers; stores one row per fact and neuron set (probe_results) and prints mean delta p / mean p0
    per relation and overall.

    \b
    Example:
        atlas probe {kind} --run smollm2-kn5 --relation P36
    """
    for deco in reversed(
        [
            probe.command(kind),
            db_option,
            click.option("--run", "run", required=True, metavar="RUN", help="Run name or id."),
            click.option("--relation", metavar="P", default=None, help="Only facts of this relation."),
            click.option("--seed", type=int, default=0, show_default=True, help="Seed of the control neurons."),
            model_option,
        ]
    ):
        command = deco(command)
    return command


def summary_table(rows: list, title: str) -> str:
    """The per-relation summary as a plain-text table (rich, no colours)."""
    table = Table(title=title)
    for col in ("relation", "neurons", "facts", "mean n", "mean p0", "mean p1", "rel. change"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.relation_id,
            r.neurons,
            str(r.n_facts),
            f"{r.mean_neurons:.1f}",
            f"{r.mean_p_before:.4f}",
            f"{r.mean_p_after:.4f}",
            "-" if r.relative_change is None else f"{r.relative_change:+.1%}",
        )
    console = Console(file=io.StringIO(), width=120, force_terminal=False)
    console.print(table)
    return console.file.getvalue()


suppress = _probe("suppress")
amplify = _probe("amplify")
