"""What the jobs work on, read from the atlas: a run's facts with their prompts, and their knowledge
neurons, per fact and per relation.

Torch-free (storage layer): the probe, edits and audit turn these plain records into token ids
and forward passes. Every reader takes an open connection, so that a job reads everything it
needs in one transaction before its model runs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.engine import Connection

from atlas.db.edits import EditRows, applied_stack
from atlas.db.queries import load_query
from atlas.db.runs import Run, resolve_run
from atlas.db.sqlfile import sql_text
from atlas.db.store import Store

Neuron = tuple[int, int]
FactNeurons = dict[str, list[tuple[int, int, float]]]  # fact id -> [(layer, neuron, score)], best first


@dataclass
class Fact:
    id: str
    relation_id: str
    subject: str
    object: str
    prompts: list[str] = field(default_factory=list)  # causal prompt texts scored in the run

    @property
    def name(self) -> str:
        """How results name the fact: "RELATION subject -> object"."""
        return f"{self.relation_id} {self.subject} -> {self.object}"


@dataclass(frozen=True)
class SlotStat:
    """A knowledge neuron of a relation: how many of its facts have it, their share, its mean score."""

    layer: int
    neuron: int
    n_facts: int
    share: float
    mean_score: float


def run_facts(conn: Connection, run_id: int, backend: str) -> dict[str, Fact]:
    """Facts of the run with their scored causal prompts, ordered by relation then id."""
    return facts_of_rows(conn.execute(sql_text("run_facts", backend), {"run_id": run_id}))


def facts_of_rows(rows) -> dict[str, Fact]:
    """Rows of (fact_id, relation_id, subject, object, ..., text), one per prompt, as facts."""
    out: dict[str, Fact] = {}
    for r in rows:
        fact = out.get(r.fact_id)
        if fact is None:
            fact = out[r.fact_id] = Fact(r.fact_id, r.relation_id, r.subject, r.object)
        fact.prompts.append(r.text)
    return out


def preserved_facts(conn: Connection, backend: str, model_id: int, relation: str, limit: int) -> list[Fact]:
    """Up to `limit` facts of other relations than `relation` that any run of the model scored, with
    those prompts (round-robin over relations): what an edit of `relation` should leave alone, also
    when the edited run holds only a relation or two (a user's own file)."""
    params = {"model_id": model_id, "relation_id": relation, "limit": limit}
    return list(facts_of_rows(conn.execute(sql_text("preserved_facts", backend), params)).values())


def run_neurons(conn: Connection, run_id: int, backend: str) -> dict[str, list[tuple[int, int, float]]]:
    """Knowledge neurons per fact, best score first: {fact_id: [(layer, neuron, score), ...]}."""
    out: dict[str, list[tuple[int, int, float]]] = defaultdict(list)
    for r in conn.execute(sql_text("run_neurons", backend), {"run_id": run_id}):
        out[r.fact_id].append((int(r.layer), int(r.neuron), float(r.score)))
    return dict(out)


def relation_neurons(conn: Connection, run_id: int, relation: str, backend: str) -> list[SlotStat]:
    """Every knowledge neuron of `relation`, most frequent first (ties: larger mean score first):
    the named query `relation-neurons` with no thresholds."""
    query = load_query("relation-neurons")
    rows = conn.execute(
        query.text(backend), query.bind({"run_id": run_id, "relation_id": relation, "min_facts": 1, "min_share": 0.0})
    )
    return [SlotStat(int(r.layer), int(r.neuron), int(r.n_facts), float(r.share), float(r.mean_score)) for r in rows]


def run_atlas(conn: Connection, backend: str, run: str | int) -> tuple[Run, dict[str, Fact], FactNeurons]:
    """The run named or numbered `run`, its facts with their prompts, and their knowledge neurons."""
    found = resolve_run(conn, run)
    return found, run_facts(conn, found.id, backend), run_neurons(conn, found.id, backend)


def read_run_atlas(store: Store, run: str | int) -> tuple[Run, dict[str, Fact], FactNeurons]:
    """`run_atlas` in a transaction of its own."""
    with store.begin() as conn:
        return run_atlas(conn, store.backend, run)


@dataclass
class Workset:
    """What an edit reads, in one transaction: the run, its facts and neurons, the applied edits,
    and the neuron statistics of the relation concerned."""

    run: Run
    facts: dict[str, Fact]
    neurons: FactNeurons
    stack: list[EditRows]
    relation: list[SlotStat]


def read_workset(
    store: Store,
    run_name: str | int,
    relation_of: Callable[[Run, dict[str, Fact], dict], str],
    conn: Connection | None = None,
) -> Workset:
    """`relation_of(run, facts, neurons)` names the relation whose neuron statistics are read (or
    raises). In a transaction of its own, or in the caller's `conn` (to read more in the same one)."""
    if conn is None:
        with store.begin() as own:
            return read_workset(store, run_name, relation_of, own)
    run, facts, neurons = run_atlas(conn, store.backend, run_name)
    relation = relation_of(run, facts, neurons)
    stats = relation_neurons(conn, run.id, relation, store.backend)
    return Workset(run, facts, neurons, applied_stack(conn, store.backend, run.model_id), stats)
