"""Injection math against slow obvious references, on tiny models of every supported family:
widening by zero slots changes nothing; a widened model's logits are the original's plus each
pair's contribution computed by hand from the FFN input; the clamp is silent below its threshold
and saturated above; the model comes back bit-exactly; stock transformers loads the widened model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

from atlas.errors import ModelError
from atlas.model.adapters import adapter_for
from atlas.model.inject import SlotPair, widened, write_pair
from atlas.model.inject.keys import discriminant, gate
from atlas.model.loading import weights_sha256
from tests.support.tiny_hf import tiny_model

FAMILIES = ("llama", "gpt2", "neox", "neox_seq", "bert")
IDS = torch.tensor([[5, 17, 3, 44, 9, 12, 30]])


def _logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        extra = {"token_type_ids": torch.zeros_like(ids)} if model.config.architectures[0].endswith("MaskedLM") else {}
        return model(input_ids=ids, **extra).logits


def _pairs(adapter, n: int, seed: int = 0) -> list[SlotPair]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for j in range(n):
        w = torch.randn(adapter.hidden_size, generator=g, dtype=torch.float64)
        out.append(
            SlotPair(
                layer=j % adapter.n_layers,
                index=adapter.n_neurons + 2 * j,
                key=w / w.norm(),
                threshold=-0.3 + 0.2 * j,
                slope=2.0,
                value=torch.randn(adapter.hidden_size, generator=g, dtype=torch.float64),
                sharpness=64.0,
            )
        )
    return out


def _act(adapter):
    """The family's activation, named from its config (the reference does not ask the model)."""
    cfg = adapter.config
    name = getattr(cfg, "hidden_act", None) or getattr(cfg, "activation_function", None)
    return {"silu": F.silu, "gelu": F.gelu, "gelu_new": lambda z: F.gelu(z, approximate="tanh")}[name]


def _by_hand(adapter, p: SlotPair, x: torch.Tensor) -> torch.Tensor:
    """What the pair adds to the FFN output at FFN input x `[..., hidden]`: (act(k t) - act(k (t-1))) / k v."""
    act, k = _act(adapter), p.sharpness
    t = p.slope * (x.double() @ p.key - p.threshold)
    return ((act(k * t) - act(k * (t - 1))) / k)[..., None] * p.value


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_slots_change_nothing_and_the_model_comes_back(family: str) -> None:
    model = tiny_model(family)
    adapter = adapter_for(model)
    sha, want, n = weights_sha256(model), _logits(model), adapter.n_neurons
    with widened(adapter, [], adapter.n_neurons + 6):
        assert adapter.n_neurons == getattr(adapter.config, adapter.width_config) == adapter.value_slots(2).shape[0]
        # zero rows, biases and columns add nothing; only the summation order of a wider matmul
        # (and a bias add) can move the last bits
        assert torch.allclose(_logits(model), want, rtol=0, atol=1e-5)
    assert weights_sha256(model) == sha and adapter.n_neurons == n


@pytest.mark.parametrize("family", FAMILIES)
def test_widened_logits_are_the_original_plus_each_pair_by_hand(family: str) -> None:
    model = tiny_model(family)
    adapter = adapter_for(model)
    pairs = _pairs(adapter, 4)
    seen: dict[int, torch.Tensor] = {}

    def add_by_hand(layer):
        def hook(_m, args, out):
            x = seen[layer]
            extra = sum((_by_hand(adapter, p, x) for p in pairs if p.layer == layer), torch.zeros(()))
            return out + extra.to(out.dtype)

        return hook

    handles = []
    for layer in range(adapter.n_layers):
        record = lambda _m, a, lay=layer: seen.__setitem__(lay, a[0])  # noqa: E731
        handles.append(adapter.ffn_in(layer).register_forward_pre_hook(record))
        handles.append(adapter.ffn_out(layer).register_forward_hook(add_by_hand(layer)))
    try:
        want = _logits(model)
    finally:
        for h in handles:
            h.remove()
    with widened(adapter, pairs, adapter.n_neurons + 8):
        got = _logits(model)
    assert not torch.allclose(want, _logits(model), atol=1e-4)  # the pairs do something here
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_pair_is_silent_below_its_threshold_and_saturated_above(family: str) -> None:
    model = tiny_model(family)
    adapter = adapter_for(model)
    p = _pairs(adapter, 1)[0]
    x = torch.stack([p.key * s for s in (-5.0, p.threshold - 0.2, p.threshold + 0.6, 8.0)])
    out = _by_hand(adapter, p, x)
    assert out[0].abs().max() < 1e-12 and out[1].abs().max() < 1e-4 * p.value.abs().max()
    assert torch.allclose(out[2:], p.value.expand(2, -1), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("family", ["llama", "gpt2", "neox", "bert"])
def test_stock_transformers_loads_the_widened_model_with_equal_logits(family: str, tmp_path) -> None:
    model = tiny_model(family)
    adapter = adapter_for(model)
    pairs = _pairs(adapter, 3, seed=1)
    with widened(adapter, [], adapter.n_neurons + 6):  # widen empty, then write pairs in place
        for p in pairs:
            write_pair(adapter, p)
        want, sha = _logits(model), weights_sha256(model)
        model.save_pretrained(tmp_path)
    with widened(adapter, pairs, adapter.n_neurons + 6):
        assert torch.equal(_logits(model), want)  # in place = built whole
    auto = AutoModelForMaskedLM if family == "bert" else AutoModelForCausalLM
    loaded = auto.from_pretrained(tmp_path, attn_implementation="eager").eval()  # as tiny_model runs
    assert weights_sha256(loaded) == sha
    assert torch.equal(_logits(loaded), want)


def test_a_gated_family_without_biases_is_refused() -> None:
    adapter = adapter_for(tiny_model("qwen2"))
    with pytest.raises(ModelError, match="without biases"), widened(adapter, [], adapter.n_neurons + 2):
        pass


def test_discriminant_separates_what_the_mean_does_not() -> None:
    """Positives and negatives share a large common direction (the template): the mean of the
    positives fires on the negatives, the discriminant direction does not."""
    g = torch.Generator().manual_seed(0)
    common = torch.randn(16, generator=g, dtype=torch.float64) * 5
    neg = common + torch.randn(200, 16, generator=g, dtype=torch.float64)
    pos = common + torch.randn(6, 16, generator=g, dtype=torch.float64) * 0.1
    pos[:, 3] += 6.0
    mean = pos.mean(0) / pos.mean(0).norm()
    assert (neg @ mean).max() > (pos @ mean).min()
    w = discriminant(pos, neg)
    gt = gate(pos @ w, neg @ w)
    assert gt.separable and (neg @ w).max() < gt.threshold < gt.saturation <= (pos @ w).min()
