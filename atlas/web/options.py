"""`atlas serve`'s settings, defined once (the dataclass is also the command's flags).

Kept apart from the application so that `atlas --help` and `atlas serve --help` load no web stack.
"""

from __future__ import annotations

from dataclasses import dataclass

from atlas.options import opt


@dataclass(frozen=True)
class ServeOptions:
    """`atlas serve`'s settings (each field is also its flag)."""

    host: str = opt("127.0.0.1", help="Address to listen on (default: this machine only).")
    port: int = opt(8765, minimum=1, help="Port to listen on.")
    timeout: float = opt(10.0, help="Seconds any one statement may run (pages, named queries, ad-hoc SQL).")
    max_rows: int = opt(1000, minimum=1, flag="--max-rows", help="Rows an ad-hoc SQL statement shows at most.")
    pool: int = opt(8, minimum=1, help="Database connections kept open per process (requests served at once).")
    workers: int = opt(
        2,
        minimum=1,
        help="Server processes, each with its own connections and run summaries: more use more cores "
        "(2 met the 20-client target on 2 cores, 1 did not: BENCHMARKS.md).",
    )
    vocab: str = opt(
        "auto",
        choices=("auto", "off"),
        help="Neuron pages: project a value slot onto the vocabulary on demand when the run's weights load (auto).",
    )
