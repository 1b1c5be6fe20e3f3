"""Activation interventions on knowledge neurons (suppress = x0, amplify = x2): what a neuron
*emits* for one forward pass, the paper's probe experiment.

They are frozen dataclasses (stored as JSON next to their results) applied by `applied`, which
scales the chosen neurons at each row's answer position through the one hook mechanism
(`atlas.model.hooks`), so nothing stays installed after the body. What a neuron *writes*
permanently (its value slot) is `atlas.model.slots`. Reaches the model only through an adapter.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch

from atlas.model.adapters import Adapter
from atlas.model.hooks import NeuronHook, hooks

Neuron = tuple[int, int]  # (layer, neuron)


@dataclass(frozen=True)
class ScaleNeurons:
    """Multiply the activations of `neurons` by `factor` at the answer position.

    factor 0 suppresses (the paper's "erase activation"), 2 amplifies. The answer position is the
    last prompt token for left-to-right models: the same position the attribution scaled.
    """

    neurons: tuple[Neuron, ...]
    factor: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "neurons", tuple(sorted((int(l), int(n)) for l, n in self.neurons)))

    @classmethod
    def suppress(cls, neurons: Sequence[Neuron]) -> ScaleNeurons:
        return cls(tuple(neurons), 0.0)

    @classmethod
    def amplify(cls, neurons: Sequence[Neuron]) -> ScaleNeurons:
        return cls(tuple(neurons), 2.0)

    def to_json(self) -> str:
        return json.dumps({"type": "scale_neurons", **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ScaleNeurons:
        doc = json.loads(text)
        if doc.pop("type", None) != "scale_neurons":
            raise ValueError(f"not a scale_neurons intervention: {text[:80]!r}")
        return cls(tuple((l, n) for l, n in doc["neurons"]), float(doc["factor"]))

    def by_layer(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = defaultdict(list)
        for layer, neuron in self.neurons:
            out[layer].append(neuron)
        return dict(out)


def _scaler(neurons: list[int], factor: float, positions: torch.Tensor | None) -> NeuronHook:
    """Scales `neurons` at `positions` ([B] indices; None: the last position of every row)."""

    def scale(x: torch.Tensor) -> torch.Tensor:
        idx = torch.as_tensor(neurons, dtype=torch.long, device=x.device)
        x = x.clone()
        if positions is None:
            x[..., -1, idx] = x[..., -1, idx] * factor
        else:
            rows = torch.arange(x.shape[0], device=x.device)[:, None]
            pos = positions.to(x.device)[:, None]
            x[rows, pos, idx[None, :]] = x[rows, pos, idx[None, :]] * factor
        return x

    return scale


@contextmanager
def applied(
    adapter: Adapter, intervention: ScaleNeurons | None, positions: torch.Tensor | None = None
) -> Iterator[None]:
    """Run the body with `intervention` active; `positions[b]` = answer position of batch row b.

    positions None means the last position of every row. A None intervention is a no-op, so that
    callers can run baseline and intervened passes through the same code.
    """
    layers = intervention.by_layer() if intervention is not None else {}
    factor = float(intervention.factor) if intervention is not None else 1.0
    with hooks(adapter, {layer: _scaler(neurons, factor, positions) for layer, neurons in layers.items()}):
        yield
