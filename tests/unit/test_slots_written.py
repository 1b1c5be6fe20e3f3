"""`slots_written` writes slots a layer group at a time; the result must be what writing them one by
one gives (the slow reference), repeated neurons included, and the exit must restore the weights
bit for bit."""

from __future__ import annotations

import random

import torch

from atlas.jobs.weights import Slot, slots_written
from atlas.model.adapters import adapter_for
from atlas.model.loading import LoadedModel
from atlas.model.slots import read_slots, write_slots
from tests.support.tiny_hf import tiny_model


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_grouped_writes_equal_one_by_one_writes_and_restore_exactly() -> None:
    model = tiny_model("llama", seed=3)
    adapter = adapter_for(model)
    lm = LoadedModel("tiny", "test", model, None, adapter, "sha")
    rng = random.Random(0)
    hidden = adapter.hidden_size
    slots = []
    for _ in range(40):  # layers interleaved, neurons repeated within and across layers
        layer, neuron = rng.randrange(adapter.n_layers), rng.randrange(6)
        slots.append(Slot(layer, neuron, torch.randn(hidden), torch.randn(hidden)))
    for neuron in (2, 4, 2, 5, 4, 2):  # one layer in a row, neurons repeated: the last value wins
        slots.append(Slot(1, neuron, torch.randn(hidden), torch.randn(hidden)))
    base = _state(model)

    for s in slots:  # the reference: one slot at a time, in order
        write_slots(adapter, s.layer, [s.neuron], s.edited[None, :])
    expected = _state(model)
    model.load_state_dict(base)

    with slots_written(lm, slots):
        got = _state(model)
        for layer in range(adapter.n_layers):
            assert torch.equal(read_slots(adapter, layer, range(6)), expected_slots(expected, adapter, layer))
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    after = _state(model)
    assert all(torch.equal(after[k], base[k]) for k in base)  # restored bit for bit


def expected_slots(state: dict[str, torch.Tensor], adapter, layer: int) -> torch.Tensor:
    w = state[adapter.ffn_out_path(layer) + ".weight"]
    return (w if adapter.slots_are_rows else w.T)[:6]
