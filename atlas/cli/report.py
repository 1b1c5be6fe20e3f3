"""``atlas report``: a markdown report with plots of one run's neurons, probes, edits and audits."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click

from atlas.cli.common import db_option, open_store
from atlas.cli.output import writable_dir


@click.command()
@db_option
@click.option("--run", "run", required=True, metavar="RUN", help="Run name or id.")
@click.option(
    "--output",
    "output",
    required=True,
    type=click.Path(path_type=Path),
    callback=writable_dir,
    help="Folder for report.md and PNGs.",
)
def report(db_url: str | None, run: str, output: Path) -> None:
    """Write DIR/report.md: neurons per fact, sharing, suppress/amplify vs controls, edits, audits.

    \b
    Example:
        atlas report --run smollm2-kn5 --output reports/smollm2
    """
    from atlas.jobs.report import write_report

    figures = write_report(open_store(db_url), run, output)
    click.echo(f"wrote {output / 'report.md'}")
    for key, value in asdict(figures).items():
        click.echo(f"  {key:28s} {value if not isinstance(value, float) else round(value, 4)}")
