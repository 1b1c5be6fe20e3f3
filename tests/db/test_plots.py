"""``atlas plot``: real PNGs from real queries on both backends."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import pytest
from click.testing import CliRunner

from atlas.cli import cli
from atlas.db.store import Store
from atlas.errors import NotFound
from atlas.jobs import plots
from bench.synthetic_atlas import build_synthetic_atlas
from tests.support.tiny_atlas import load_tiny


def _is_drawn_png(path: Path) -> bool:
    """A readable PNG that is not one flat colour (something was drawn)."""
    image = mpimg.imread(path)
    return image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100 and float(image.std()) > 0.01


def test_every_plot_from_the_cli(store: Store, tmp_path: Path) -> None:
    atlas = build_synthetic_atlas(
        store, n_facts=80, n_relations=6, neurons_per_fact=10, prompts=400, scores_per_prompt=15, seed=3
    )
    for args in (["layers"], ["overlap"], ["fact", atlas.fact_ids[0]]):
        target = tmp_path / f"{args[0]}.png"
        result = CliRunner().invoke(
            cli, ["plot", *args, "--run", str(atlas.run_id), "--output", str(target), "--db", store.url]
        )
        assert result.exit_code == 0, result.output
        assert _is_drawn_png(target)


def test_run_by_name_and_bad_input(store: Store, tmp_path: Path) -> None:
    load_tiny(store)
    with pytest.raises(NotFound, match="unknown run 'nope'"):
        plots.plot_layers(store, "nope", tmp_path / "x.png")
    with store.begin() as conn:  # the tiny atlas has knowledge neurons but no runs row: add one, with its model
        from atlas.db import schema

        store.bulk_insert(
            conn,
            schema.models,
            {
                "id": [1],
                "name": ["m"],
                "source": ["s"],
                "architecture": ["a"],
                "n_layers": [3],
                "n_neurons": [8],
                "sha256": ["0" * 64],
            },
        )
        store.bulk_insert(
            conn,
            schema.runs,
            {
                "id": [1],
                "name": ["tiny"],
                "model_id": [1],
                "dataset": ["tiny"],
                "method": ["ig"],
                "params": ["{}"],
                "params_key": ["k"],
                "code_version": ["t"],
                "status": ["done"],
            },
        )
    assert _is_drawn_png(plots.plot_overlap(store, "tiny", tmp_path / "o.png", min_facts=1))
    assert _is_drawn_png(plots.plot_fact(store, "tiny", "f1", tmp_path / "f.png"))
    with pytest.raises(NotFound, match="fact 'f2' has no prompt scores in run 1"):
        plots.plot_fact(store, "tiny", "f2", tmp_path / "f2.png")
    result = CliRunner().invoke(
        cli, ["plot", "fact", "f2", "--run", "tiny", "--output", str(tmp_path / "f2.png"), "--db", store.url]
    )
    assert result.exit_code != 0 and "has no prompt scores" in result.output
    assert not (tmp_path / "f2.png").exists()
