"""Hooks and value-slot edits against manual computation on tiny real models; rollback and
export exactness through the database on both backends."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from atlas.model.adapters import adapter_for
from atlas.model.interventions import ScaleNeurons, applied
from atlas.model.slots import slots_bytes, slots_from_bytes, update_slots
from tests.support.tiny_hf import tiny_model

IDS = torch.tensor([[5, 17, 3, 44, 9, 12]])


def _capture_inputs(adapter, layer: int):
    seen = []
    # a forward hook sees the input the module really consumed, i.e. after every pre-hook
    handle = adapter.ffn_out(layer).register_forward_hook(lambda mod, args, out: seen.append(args[0].detach().clone()))
    return seen, handle


@pytest.mark.parametrize("family", ["llama", "gpt2", "neox"])
@pytest.mark.parametrize("factor", [0.0, 2.0])
def test_last_layer_hook_equals_scaled_value_slots(family: str, factor: float) -> None:
    """In the last layer, scaling an activation at the last position is the same, for that position's
    logits, as scaling the neuron's value slot: an independent manual computation."""
    model = tiny_model(family, seed=3)
    ad = adapter_for(model)
    last = ad.n_layers - 1
    neurons = [1, 7, 20]
    with torch.no_grad(), applied(ad, ScaleNeurons(tuple((last, n) for n in neurons), factor)):
        hooked = model(IDS).logits[0, -1]
    manual = copy.deepcopy(model)
    mad = adapter_for(manual)
    mad.set_value_slots(last, neurons, mad.value_slots(last)[neurons] * factor)
    with torch.no_grad():
        expected = manual(IDS).logits[0, -1]
    assert torch.allclose(hooked, expected, atol=1e-5)
    with torch.no_grad():
        plain = model(IDS).logits[0, -1]
    assert not torch.allclose(plain, expected, atol=1e-4)  # the intervention really changed something


def test_hook_scales_only_chosen_neurons_at_chosen_position() -> None:
    model = tiny_model("llama", seed=1)
    ad = adapter_for(model)
    seen, handle = _capture_inputs(ad, 1)
    with torch.no_grad():
        model(IDS.repeat(2, 1))
    clean = seen.pop()
    positions = torch.tensor([2, 5])
    with torch.no_grad(), applied(ad, ScaleNeurons(((1, 4), (1, 9)), 2.0), positions):
        model(IDS.repeat(2, 1))
    handle.remove()
    got = seen.pop()
    want = clean.clone()  # layer 1's input is unaffected by its own scaling: exact comparison holds
    for row, pos in enumerate(positions.tolist()):
        want[row, pos, [4, 9]] *= 2.0
    assert torch.equal(got, want)


def test_hooks_removed_on_exit_even_after_error() -> None:
    model = tiny_model("llama")
    ad = adapter_for(model)
    with pytest.raises(RuntimeError):
        with applied(ad, ScaleNeurons.suppress([(0, 1), (2, 3)])):
            assert len(ad.ffn_out(0)._forward_pre_hooks) == 1
            raise RuntimeError("boom")
    assert all(len(ad.ffn_out(l)._forward_pre_hooks) == 0 for l in range(ad.n_layers))


def test_intervention_is_json_serialisable_and_frozen() -> None:
    iv = ScaleNeurons.amplify([(2, 5), (0, 1)])
    assert ScaleNeurons.from_json(iv.to_json()) == iv
    assert iv.neurons == ((0, 1), (2, 5))
    with pytest.raises(dataclasses.FrozenInstanceError):
        iv.factor = 3.0  # type: ignore[misc]


def test_update_rule_matches_formula_and_bytes_round_trip() -> None:
    torch.manual_seed(0)
    v, eo, en = torch.randn(3, 8), torch.randn(8), torch.randn(8)
    got = update_slots(v, eo, en, 1.0, 8.0)
    for i in range(3):
        n = v[i].norm()
        want = v[i] - n / eo.norm() * eo + 8 * n / en.norm() * en
        assert torch.allclose(got[i], want, atol=1e-5)
    assert torch.equal(slots_from_bytes(slots_bytes(got[1]), "float32"), got[1])
