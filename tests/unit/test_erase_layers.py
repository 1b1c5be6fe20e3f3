"""The `lsq` erase's layer choice: the last layer in range leads, then the attribution ranking."""

from __future__ import annotations

import pytest

from atlas.errors import EditError
from atlas.jobs.erase import top_layers
from atlas.jobs.specs import EraseSpec


def _rows(*layers: int) -> list[dict]:
    return [{"layer": layer, "mass": 10.0 - i, "share": 0.1} for i, layer in enumerate(layers)]


@pytest.mark.parametrize(
    ("spec", "rows", "want"),
    [
        (EraseSpec(), _rows(5, 1, 9, 11, 7), [11, 5, 9]),  # 12 layers: the floor is 4
        (EraseSpec(), _rows(5, 9), [11, 5, 9]),  # the last layer holds no stored attribution: still edited
        (EraseSpec(last_layer=False), _rows(5, 1, 9, 11, 7), [5, 9, 11]),
        (EraseSpec(max_layer=9), _rows(5, 9, 8), [9, 5, 8]),  # the last layer in range
        (EraseSpec(layers=1, min_layer=0), _rows(1, 5), [11]),
    ],
)
def test_the_last_layer_leads_then_the_most_attribution(spec: EraseSpec, rows: list[dict], want: list[int]) -> None:
    assert [row["layer"] for row in top_layers(rows, spec, 12, "P1")] == want


def test_no_attribution_above_the_floor_is_refused() -> None:
    with pytest.raises(EditError, match="P1 has no stored attribution in layers 4..11"):
        top_layers(_rows(1, 2), EraseSpec(), 12, "P1")
