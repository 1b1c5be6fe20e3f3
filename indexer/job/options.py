"""`atlas index` options, defined once: name, type, default, help and whether they change results.

`IndexOptions` is both the job's input and the source of the command's flags: each field's
metadata (`atlas.options.opt`) holds what the CLI needs (flag, help, metavar, bounds, choices, a parser
for text values), and `atlas.cli.common.options_of` turns the fields into click options, the way
datasette builds its settings from one `SETTINGS` table. Fields marked `result=True` enter the
run's params_key (changing them makes another run). Imports no torch: `atlas index --help` stays fast.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields

from atlas.db.workqueue import DEFAULT_LEASE_S
from atlas.errors import InputError
from atlas.options import opt

PRECISIONS = ("fp32", "bf16", "fp16")


def parse_relations(value: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """`--relations P19,P36 --relations P103` -> ('P19', 'P36', 'P103'); nothing -> None (all)."""
    ids = tuple(r.strip() for v in value or () for r in v.split(",") if r.strip())
    return ids or None


def parse_workers(value: str | int) -> int | str:
    """A number >= 1, or "auto" (one per visible GPU)."""
    if value == "auto":
        return value
    if not str(value).isdigit() or int(value) < 1:
        raise InputError(f"{value!r}: give a number >= 1 or auto")
    return int(value)


def parse_layers(value: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """`LO:HI` (inclusive, 0-based) or one layer `L`; whether the model has them is checked once it
    loads (`indexer.job.attributor.check_layers`)."""
    if value is None or isinstance(value, tuple):
        return value
    lo, sep, hi = str(value).strip().partition(":")
    hi = hi if sep else lo
    if not (lo.strip().isdigit() and hi.strip().isdigit()) or int(lo) > int(hi):
        raise InputError(f"--layers {value!r}: give LO:HI with 0 <= LO <= HI (0-based, inclusive), or one layer")
    return int(lo), int(hi)


def parse_device(value: str) -> str:
    """`cpu`, `cuda` or `cuda:N`, checked before any model loads (whether the GPU exists is
    `indexer.job.run.check_device`'s question)."""
    text = str(value).strip().lower()
    if text in ("cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise InputError(f"{value!r}: give cpu, cuda or cuda:N")


@dataclass(frozen=True)
class IndexOptions:
    """One `atlas index` invocation."""

    model: str = opt(
        required=True, metavar="NAME|DIR", help="smollm2 (bundled), a local HF model directory, or a hub id."
    )
    dataset: str = opt(required=True, metavar="pararel|kn-paper|NAME", help="A dataset loaded with `atlas facts load`.")
    relations: tuple[str, ...] | None = opt(
        multiple=True,
        parse=parse_relations,
        metavar="P19,P36",
        result=True,
        help="Only these relations (comma-separated or repeated).",
    )
    limit_per_relation: int | None = opt(
        minimum=1, metavar="N", result=True, help="Only the first N facts (by id) of each relation."
    )
    device: str = opt("cpu", metavar="cpu|cuda", parse=parse_device, help="Where the model runs.")
    workers: int | str = opt(
        1,
        parse=parse_workers,
        metavar="N|auto",
        help="Model worker processes fed by this one (auto: one per visible GPU). A GPU always gets a worker process.",
    )
    steps: int = opt(20, minimum=1, result=True, help="Integrated-gradients steps.")
    layers: tuple[int, int] | None = opt(
        metavar="LO:HI",
        parse=parse_layers,
        result=True,
        help="Attribute only layers LO..HI (0-based, inclusive); the others score 0 and hold no knowledge "
        "neurons. Recorded in the run's parameters. [default: every layer]",
    )
    precision: str = opt(
        "fp32",
        choices=PRECISIONS,
        result=True,
        help="Precision of attribution. On a GPU, bf16/fp16 load the weights in that dtype (no fp32 copy: an "
        "8B model takes 16 GB) and the run's weights are those; on a CPU the weights stay fp32 and the "
        "scaled pass runs on a bf16 copy (~2.4x faster with AMX). P(gold) and softmax sums stay fp32; "
        "top-20 neurons agree 96-99% with fp32 (BENCHMARKS.md).",
    )
    run_name: str | None = opt(
        flag="--run", metavar="NAME", help="Run name (default: model-dataset-<key>); the same name resumes it."
    )
    batch_size: int | None = opt(
        minimum=1,
        help="Prompts per attribution pass [default: 4 on a CPU; on a GPU measured by two trial passes: "
        "as many as 90% of the free memory holds, at most 512, halved if a pass runs out of memory]. "
        "Larger passes are faster on a GPU (~0.1 GiB each for SmolLM2, ~1.2 GiB for an 8B model).",
    )
    facts_per_item: int | None = opt(
        minimum=1,
        help="Facts per work item, the unit of claiming and redoing "
        "[default: 8 on a CPU, 96 on a GPU, enough to fill large passes].",
    )
    score_cap: int = opt(50, minimum=1, result=True, help="Stored scores per prompt (coarse ones always kept).")
    sketch_rank: int = opt(
        0,
        minimum=0,
        metavar="R",
        result=True,
        help="Also keep, per prompt and layer, the top-R singular triplets of the gradient of log P(gold) "
        "on the value slots (one extra forward and backward pass per prompt), so that `atlas audit` can "
        "predict what any edit does to every fact (ROC AUC 0.92 on the real SmolLM2, where the stored IG scores "
        "give 0.52; BENCHMARKS.md). Costs R x (hidden + neurons) x 2 bytes per prompt and layer: 4 KB for "
        "SmolLM2 at R=1, 127 KB a prompt over its 30 layers; ~40 % of a GPU run's speed. 4 for the default "
        "updates, whose changes lie where low-rank sketches carry least (rho 0.80 at R=4). "
        "0: none.",
    )
    lease_s: int = opt(
        DEFAULT_LEASE_S,
        flag="--lease",
        minimum=2,
        metavar="SECONDS",
        help="Work-item lease: a crashed worker's items are redone by others after this long.",
    )
    stop_at: float | None = opt(
        cli=False, help="time.time() after which no new item is claimed (time-boxed benchmarks)."
    )

    def stopped(self) -> bool:
        return self.stop_at is not None and time.time() >= self.stop_at

    def item_facts(self) -> int:
        return self.facts_per_item or (96 if self.device.startswith("cuda") else 8)

    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")


def result_fields() -> list[str]:
    """The options that change a run's results (and so its params_key)."""
    return [f.name for f in fields(IndexOptions) if f.metadata.get("result")]
