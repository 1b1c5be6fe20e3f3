"""The one hook mechanism: functions that read, and may replace, a layer's neuron activations.

A neuron site is the INPUT of a layer's FFN output projection (`atlas.model.sites`), so a hook is a
forward-pre-hook on that module (the adapter says which it is). Modelled on TransformerLens'
`hooks()` context manager: hooks are plain functions keyed by layer, installed for the body of a
`with` block and always removed on exit, errors included, so no caller ever leaves a model with a
stray hook. Every activation intervention (probes, the masked-LM attribution's recording and
scaling) goes through `hooks`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any

from torch import Tensor, nn

#: A layer's neuron activations: `[batch, positions, n_neurons]`.
Activations = Annotated[Tensor, "batch pos n_neurons"]
#: Sees the activations; returns a replacement of the same shape, or None to leave them as they are.
NeuronHook = Callable[[Activations], Activations | None]


@contextmanager
def hooks(adapter: Any, fns: Mapping[int, NeuronHook], site: str = "neurons") -> Iterator[None]:
    """Run the body with `fns[layer]` applied to each listed layer's neuron activations (or, with
    `site="output"`, to what the layer's FFN adds to the residual stream).

    Example:
        >>> seen = []
        >>> with hooks(adapter, {3: lambda acts: seen.append(acts[:, -1].detach())}):  # doctest: +SKIP
        ...     model(ids)
    """
    handles = []
    try:
        for layer, fn in fns.items():
            module = adapter.ffn_out(layer)
            if site == "neurons":
                handles.append(module.register_forward_pre_hook(_pre_hook(fn)))
            else:  # "output": what the FFN adds to the residual stream, `[batch, pos, hidden]`
                handles.append(module.register_forward_hook(lambda _m, _args, out, fn=fn: fn(out)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _pre_hook(fn: NeuronHook) -> Callable[[nn.Module, tuple], tuple | None]:
    def hook(_module: nn.Module, args: tuple) -> tuple | None:
        out = fn(args[0])
        return None if out is None else (out, *args[1:])

    return hook
