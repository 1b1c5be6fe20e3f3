"""`atlas index --layers LO:HI` on both backends: only those layers hold scores and knowledge
neurons, the range is in the run's parameters (a run of its own), and a range the model lacks is
refused in one line before anything is written."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from atlas.db.runs import get_run
from atlas.db.schema import knowledge_neurons, prompt_scores, runs
from atlas.errors import InputError
from indexer.job.options import parse_layers
from indexer.job.run import IndexOptions, index
from tests.support.kn_world import load_world_facts, save_model


def test_only_the_chosen_layers_are_attributed(store, tmp_path) -> None:
    model = save_model(tmp_path / "tiny")
    load_world_facts(store)
    opts = IndexOptions(model=str(model), dataset="kn-world", steps=4, layers=(1, 2), run_name="top")
    summary = index(store, opts)
    assert summary.run.status == "done" and get_run(store, "top").params["params"]["layers"] == [1, 2]
    with store.begin() as conn:
        kn_layers = set(conn.execute(sa.select(knowledge_neurons.c.layer).distinct()).scalars())
        score_layers = set(conn.execute(sa.select(prompt_scores.c.layer).distinct()).scalars())
    assert kn_layers and kn_layers <= {1, 2} and score_layers == {1, 2}
    full = index(store, IndexOptions(model=str(model), dataset="kn-world", steps=4, run_name="all"))
    assert "layers" not in full.run.params["params"] and full.run.params_key != summary.run.params_key
    with pytest.raises(InputError, match=r"--layers 1:9: model tiny has layers 0:2"):
        index(store, IndexOptions(model=str(model), dataset="kn-world", steps=4, layers=(1, 9), run_name="bad"))
    with store.begin() as conn:
        assert conn.execute(sa.select(runs.c.name).order_by(runs.c.id)).scalars().all() == ["top", "all"]


def test_layer_ranges_are_parsed_or_refused() -> None:
    assert parse_layers("3:7") == (3, 7) and parse_layers("5") == (5, 5) and parse_layers(None) is None
    for bad in ("7:3", "a:b", "-1:2", "1:"):
        with pytest.raises(InputError, match="--layers"):
            parse_layers(bad)
