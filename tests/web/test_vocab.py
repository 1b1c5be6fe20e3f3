"""`atlas vocab`: every knowledge neuron of a run projected and stored (both backends); the neuron
page then reads the stored rows without loading any weights (`--vocab off`)."""

from __future__ import annotations

import sqlalchemy as sa

from atlas.db.schema import knowledge_neurons, neuron_tokens
from atlas.jobs.vocab import project
from tests.support.cli import atlas
from tests.web.conftest import Served


def test_vocab_stores_every_neuron_and_the_page_reads_them(served: Served) -> None:
    store, w = served.store, served.world
    result = atlas("vocab", w.run, "--db", store.url, "--top-k", "7")
    assert result.exit_code == 0, result.output
    with store.begin() as conn:
        coords = conn.execute(sa.select(knowledge_neurons.c.layer, knowledge_neurons.c.neuron).distinct()).all()
        stored = conn.execute(sa.select(neuron_tokens).order_by("layer", "neuron", "rank")).mappings().all()
    assert len(stored) == 7 * len(coords) and f"{len(coords)} neurons" in result.output
    layer, neuron = coords[0]
    expected = project(w.lm, [(layer, neuron)], 7)
    mine = [r for r in stored if (r["layer"], r["neuron"]) == (layer, neuron)]
    assert [r["token_id"] for r in mine] == [e["token_id"] for e in expected]
    assert atlas("vocab", w.run, "--db", store.url, "--top-k", "3").exit_code == 0  # replaces, no stale ranks
    with store.begin() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(neuron_tokens)).scalar_one() == 3 * len(coords)
    with served.client(vocab="off") as c:
        tokens = c.get(f"/api/run/{w.run}/neuron/{layer}/{neuron}").json()["tables"]["tokens"]
    assert [t["token_id"] for t in tokens] == [e["token_id"] for e in expected[:3]]
