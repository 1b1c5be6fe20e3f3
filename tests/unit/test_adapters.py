"""Adapters: golden site lists, value-slot orientation, unsupported classes."""

from __future__ import annotations

import pytest
import torch

from atlas.errors import ModelError
from atlas.model.adapters import ADAPTERS, adapter_for
from atlas.model.sites import site_name
from tests.support.tiny_hf import TINY_FAMILIES, tiny_model

GOLDEN = {
    "llama": ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj", "model.layers.2.mlp.down_proj"],
    "mistral": ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj", "model.layers.2.mlp.down_proj"],
    "qwen2": ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj", "model.layers.2.mlp.down_proj"],
    "gemma": ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj", "model.layers.2.mlp.down_proj"],
    "gpt2": ["transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_proj", "transformer.h.2.mlp.c_proj"],
    "neox": [
        "gpt_neox.layers.0.mlp.dense_4h_to_h",
        "gpt_neox.layers.1.mlp.dense_4h_to_h",
        "gpt_neox.layers.2.mlp.dense_4h_to_h",
    ],
    "bert": [
        "bert.encoder.layer.0.output.dense",
        "bert.encoder.layer.1.output.dense",
        "bert.encoder.layer.2.output.dense",
    ],
    "roberta": [
        "roberta.encoder.layer.0.output.dense",
        "roberta.encoder.layer.1.output.dense",
        "roberta.encoder.layer.2.output.dense",
    ],
}
WIDTH = {"gpt2": 128}


def test_site_name() -> None:
    assert site_name(0) == "blocks.0.mlp.hook_post"
    assert site_name(29) == "blocks.29.mlp.hook_post"
    with pytest.raises(ValueError):
        site_name(-1)


@pytest.mark.parametrize("family", sorted(GOLDEN))
def test_golden_sites(family: str) -> None:
    ad = adapter_for(tiny_model(family))
    assert [(s.name, s.module_path, s.width) for s in ad.sites] == [
        (f"blocks.{i}.mlp.hook_post", path, WIDTH.get(family, 48)) for i, path in enumerate(GOLDEN[family])
    ]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_activations_are_ffn_output_input(family: str) -> None:
    """The module's input has n_neurons features and its output projects them to hidden size."""
    model = tiny_model(family)
    ad = adapter_for(model)
    seen = {}
    hook = ad.ffn_out(1).register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    model(input_ids=torch.tensor([[3, 4, 5]]))
    hook.remove()
    assert seen["x"].shape == (1, 3, ad.n_neurons)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_value_slot_is_what_a_neuron_writes(family: str) -> None:
    """Neuron i alone (activation 1, bias removed) outputs exactly value_slots(layer)[i]."""
    ad = adapter_for(tiny_model(family))
    proj = ad.ffn_out(2)
    x = torch.zeros(1, ad.n_neurons)
    x[0, 7] = 1.0
    out = proj(x) - proj(torch.zeros_like(x))
    torch.testing.assert_close(out[0], ad.value_slots(2)[7])


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_set_value_slots(family: str) -> None:
    ad = adapter_for(tiny_model(family))
    new = torch.randn(2, ad.hidden_size)
    ad.set_value_slots(1, [3, 9], new)
    torch.testing.assert_close(ad.value_slots(1)[[3, 9]], new)
    assert ad.value_slots(0).shape == (ad.n_neurons, ad.hidden_size)


def test_unembedding_shape() -> None:
    ad = adapter_for(tiny_model("neox"))
    assert ad.unembedding().shape == (101, 32)


def test_unsupported_model_lists_supported() -> None:
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ModelError) as err:
        adapter_for(model)
    for name in ADAPTERS:
        assert name in str(err.value)
