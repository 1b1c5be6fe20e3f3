"""Widening a model's FFNs by injected slot pairs: new key rows and value columns, zero elsewhere.

One injected fact occupies two neurons (i, i + 1) of one layer. With key w `[hidden]` (unit),
threshold b, slope a, sharpness k and value v `[hidden]`, its key-side rows are k a w with biases
-k a b and -k (a b + 1), so that with t = a (w . x - b) the two activations are act(k t) and
act(k (t - 1)). For act in {SiLU, GELU}, act(k t) / k -> relu(t) as k grows, so the pair writes

    (act(k t) - act(k (t - 1))) / k * v  ~=  clamp(a (w . x - b), 0, 1) * v

- silent below the threshold, saturated one 1/a above it. A gated MLP (LLaMA:
down(act(gate x) * up x)) carries the 1/k in its up-projection (up rows 0, up biases 1/k) and the
value columns are v and -v; a plain MLP (GPT-2, NeoX, BERT: out(act(W1 x + b1))) has value
columns v / k and -v / k. Every layer is widened to the same width (a Hugging Face config has one
`intermediate_size`): a layer without a fact's slots has zero rows, biases and columns there, which
add exactly nothing (act(0) = 0). A gated MLP has no biases of its own: LlamaConfig(mlp_bias=True)
gives every projection one, zero for the original neurons (REFERENCE.md section 7).

`widened` swaps the widened parameters in and puts the original Parameter objects back on exit,
so the model returns to its exact original state (same tensors, same sha256).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from atlas.errors import ModelError
from atlas.model.adapters import Adapter


@dataclass
class SlotPair:
    """One injected fact's two neurons (index, index + 1) in one layer and their parameters."""

    layer: int
    index: int
    key: Tensor  # [hidden] unit key direction w
    threshold: float  # b: the pair is silent while w . x <= b
    slope: float  # a: saturated once w . x >= b + 1/a
    value: Tensor  # [hidden] v: what the saturated pair adds to the residual stream
    sharpness: float = 64.0  # k: act(k t) / k approximates relu(t)
    # a guard (`guards`): the pair whose value it cancels where both open (in memory only: the
    # stored pair is an ordinary one, and the fact's info lists its guards)
    cancels: SlotPair | None = field(default=None, repr=False, compare=False)


def is_gated(adapter: Adapter) -> bool:
    return len(adapter.ffn_key_templates) == 2


def check_injectable(adapter: Adapter) -> None:
    """Refuse a family whose FFN cannot hold a thresholded slot (a gated MLP with no bias option)."""
    if not adapter.ffn_key_templates:
        raise ModelError(f"{type(adapter).__name__} does not say where its FFN keys are; injection is not supported")
    if is_gated(adapter) and adapter.bias_config is None and adapter.ffn_keys(0)[0].bias is None:
        raise ModelError(
            f"{adapter.family} has a gated MLP without biases and no config flag to add them; "
            "a slot cannot be thresholded (injection supports LLaMA, GPT-2, GPT-NeoX, BERT, RoBERTa)"
        )


def _rows(m: nn.Module) -> Tensor:
    """The weight as `[out, in]` (a Linear's own layout; GPT-2's Conv1D stores `[in, out]`)."""
    return m.weight.detach() if isinstance(m, nn.Linear) else m.weight.detach().T


def _set(m: nn.Module, rows: Tensor, bias: Tensor | None) -> None:
    """Install `rows` `[out, in]` and `bias` `[out]` as new Parameters of a Linear or Conv1D."""
    m.weight = nn.Parameter(rows if isinstance(m, nn.Linear) else rows.T.contiguous(), requires_grad=False)
    if bias is not None:
        m.bias = nn.Parameter(bias, requires_grad=False)
    if isinstance(m, nn.Linear):
        m.out_features, m.in_features = rows.shape
    else:
        m.nf, m.nx = rows.shape


def _key_blocks(pairs: Sequence[SlotPair], gated: bool, extra: int, base: int, like: Tensor) -> list[tuple]:
    """(rows `[extra, hidden]`, biases `[extra]`) for each key projection of one layer."""
    hidden = like.shape[1]
    out = [(torch.zeros(extra, hidden, dtype=torch.float64), torch.zeros(extra, dtype=torch.float64))]
    if gated:
        out.append((torch.zeros(extra, hidden, dtype=torch.float64), torch.zeros(extra, dtype=torch.float64)))
    for p in pairs:
        i, k = p.index - base, p.sharpness
        w = p.key.double()
        out[0][0][i] = out[0][0][i + 1] = k * p.slope * w
        out[0][1][i], out[0][1][i + 1] = -k * p.slope * p.threshold, -k * (p.slope * p.threshold + 1.0)
        if gated:
            out[1][1][i] = out[1][1][i + 1] = 1.0 / k
    return out


def pair_values(p: SlotPair, gated: bool) -> Tensor:
    """The two value slots `[2, hidden]` of a pair: (v, -v), divided by k for a plain MLP."""
    v = p.value.double() if gated else p.value.double() / p.sharpness
    return torch.stack([v, -v])


def _widen_layer(adapter: Adapter, layer: int, pairs: Sequence[SlotPair], base: int, extra: int) -> list[tuple]:
    """Widen one layer in place; returns what to restore: (module, attribute, old value)."""
    gated = is_gated(adapter)
    keys, out = adapter.ffn_keys(layer), adapter.ffn_out(layer)
    saved: list[tuple] = []
    for m in [*keys, out]:
        saved += [(m, "weight", m.weight), (m, "bias", m.bias)]
        saved += [(m, a, getattr(m, a)) for a in ("out_features", "in_features", "nf", "nx") if hasattr(m, a)]
    for m, (rows, bias) in zip(keys, _key_blocks(pairs, gated, extra, base, _rows(keys[0]))):
        old = _rows(m)
        old_b = m.bias.detach() if m.bias is not None else old.new_zeros(old.shape[0])
        _set(m, torch.cat([old, rows.to(old)]), torch.cat([old_b, bias.to(old_b)]))
    cols = torch.zeros(extra, adapter.hidden_size, dtype=torch.float64)
    for p in pairs:
        cols[p.index - base : p.index - base + 2] = pair_values(p, gated)
    slots = _rows(out).T  # [N, hidden]: one value slot per row
    out_bias = out.bias.detach() if out.bias is not None else slots.new_zeros(adapter.hidden_size)
    _set(out, torch.cat([slots, cols.to(slots)]).T.contiguous(), out_bias if gated else None)
    return saved


@contextmanager
def widened(adapter: Adapter, pairs: Sequence[SlotPair], width: int) -> Iterator[None]:
    """Run the body with every FFN widened to `width` neurons holding `pairs` (indices >= the
    current width); the original parameters and config come back on exit, errors included."""
    check_injectable(adapter)
    base, cfg = adapter.n_neurons, adapter.config
    if any(not base <= p.index <= width - 2 for p in pairs):
        raise ValueError(f"slot indices must lie in [{base}, {width - 2}]")
    saved: list[tuple] = []
    flags = [(adapter.width_config, getattr(cfg, adapter.width_config, None))]
    if is_gated(adapter) and adapter.bias_config:
        flags.append((adapter.bias_config, getattr(cfg, adapter.bias_config, False)))
    try:
        if width > base:
            with torch.no_grad():
                for layer in range(adapter.n_layers):
                    mine = [p for p in pairs if p.layer == layer]
                    saved += _widen_layer(adapter, layer, mine, base, width - base)
            setattr(cfg, adapter.width_config, width)
            if len(flags) == 2:
                setattr(cfg, adapter.bias_config, True)
        yield
    finally:
        for m, attr, old in reversed(saved):
            setattr(m, attr, old)
        for name, old in flags:
            setattr(cfg, name, old)


@torch.no_grad()
def set_pair_value(adapter: Adapter, p: SlotPair, value: Tensor) -> None:
    """Replace a widened pair's value `[hidden]` in place (the line search rescales it)."""
    p.value = value
    adapter.set_value_slots(p.layer, [p.index, p.index + 1], pair_values(p, is_gated(adapter)))


@torch.no_grad()
def write_pair(adapter: Adapter, p: SlotPair) -> None:
    """Write a pair into an already widened model, in place (its indices must exist)."""
    gated = is_gated(adapter)
    blocks = _key_blocks([p], gated, 2, p.index, _rows(adapter.ffn_keys(p.layer)[0]))
    for m, (rows, bias) in zip(adapter.ffn_keys(p.layer), blocks):
        w = m.weight
        if isinstance(m, nn.Linear):
            w[p.index : p.index + 2] = rows.to(w)
        else:
            w[:, p.index : p.index + 2] = rows.T.to(w)
        m.bias[p.index : p.index + 2] = bias.to(m.bias)
    set_pair_value(adapter, p, p.value)
