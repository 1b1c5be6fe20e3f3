"""Base classes shared by the per-family adapters.

An adapter is the single place that knows where a family keeps its FFN neurons and how its
blocks compute. Everything else (the IG engine, interventions, edits) talks to the adapter, so
adding a family means adding one file, never an `if` elsewhere.

Two layers of API:
- every adapter: `n_layers`, `n_neurons`, `hidden_size`, `is_masked_lm`, `sites`, `ffn_out(layer)`
  (the FFN output projection; neuron activations are its INPUT), `value_slots` /
  `set_value_slots`, `unembedding()`;
- decoder adapters also expose the block pieces that the fast IG path needs to re-run a few
  positions from layer l upward against cached prefix keys/values (`embed`, `positional`,
  `attention_inputs`, `attention_output`, `mlp_activation`, `mlp_output`, `final_norm`).
  The block is written as `out = base + mlp_output(a)` with `base = h_in + attention_output`
  (true for sequential and parallel residual blocks alike), which lets the engine inject scaled
  activations `x` at layer l as `base_l + mlp_output(x)` without recomputing anything below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from atlas.model.sites import site_name


@dataclass(frozen=True)
class Site:
    """One neuron site: its stored name, the HF module whose INPUT holds the activations, its width."""

    name: str
    module_path: str
    width: int


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The rotary-embedding helper used by LLaMA and GPT-NeoX (halves, not interleaved pairs)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first `cos.shape[-1]` dims of `x` (partial rotary for NeoX, full for LLaMA)."""
    rot = cos.shape[-1]
    if rot == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    xr, xp = x[..., :rot], x[..., rot:]
    return torch.cat((xr * cos + rotate_half(xr) * sin, xp), dim=-1)


class Adapter:
    """Family-independent view of a Hugging Face model's FFN neurons."""

    family: ClassVar[str] = ""
    is_masked_lm: ClassVar[bool] = False
    #: format string of the FFN output projection's module path, `{layer}` filled in.
    ffn_out_template: ClassVar[str] = ""
    #: True when the output projection stores value slots as ROWS (GPT-2's Conv1D).
    slots_are_rows: ClassVar[bool] = False
    #: module whose first INPUT is the FFN's input x (post-norm), `{layer}` filled in (injection keys).
    ffn_in_template: ClassVar[str] = ""
    #: the key-side projections, one output row per neuron: `(gate, up)` of a gated MLP, else one.
    ffn_key_templates: ClassVar[tuple[str, ...]] = ()
    #: the config field that holds the FFN width, and the flag that gives a gated MLP its biases
    #: (None: the family's FFN has biases of its own, or cannot have them: see `inject.widen`).
    width_config: ClassVar[str] = "intermediate_size"
    bias_config: ClassVar[str | None] = None

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.config = model.config
        #: set by `atlas.model.loading.load_model` from the tokenizer (masked LMs only).
        self.mask_token_id: int | None = None

    # --- shape -----------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def n_neurons(self) -> int:
        return int(self.config.intermediate_size)

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    # --- sites ------------------------------------------------------------------------------
    def ffn_out_path(self, layer: int) -> str:
        """HF module path of layer `layer`'s FFN output projection."""
        self._check_layer(layer)
        return self.ffn_out_template.format(layer=layer)

    def ffn_out(self, layer: int) -> nn.Module:
        """The FFN output projection of `layer`; neuron activations are its input."""
        return self.model.get_submodule(self.ffn_out_path(layer))

    @property
    def sites(self) -> list[Site]:
        """All neuron sites, in layer order (pinned by the golden tests)."""
        return [Site(site_name(l), self.ffn_out_path(l), self.n_neurons) for l in range(self.n_layers)]

    # --- value slots ------------------------------------------------------------------------
    def value_slots(self, layer: int) -> torch.Tensor:
        """Copy of the layer's value slots as `[n_neurons, hidden]` (row i = what neuron i writes), on
        the CPU: edits are computed there, in float64, whatever device the model runs on."""
        w = self.ffn_out(layer).weight.detach()
        return (w if self.slots_are_rows else w.T).cpu().clone()

    @torch.no_grad()
    def set_value_slots(self, layer: int, neurons: torch.Tensor | list[int], values: torch.Tensor) -> None:
        """Overwrite value slots `neurons` of `layer` with `values` `[len(neurons), hidden]`, in place."""
        w = self.ffn_out(layer).weight
        idx = torch.as_tensor(neurons, dtype=torch.long, device=w.device)
        values = values.to(device=w.device, dtype=w.dtype)
        if self.slots_are_rows:
            w[idx, :] = values
        else:
            w[:, idx] = values.T

    def ffn_in(self, layer: int) -> nn.Module:
        """The module whose first input is layer `layer`'s FFN input x `[..., hidden]`."""
        self._check_layer(layer)
        return self.model.get_submodule(self.ffn_in_template.format(layer=layer))

    def ffn_keys(self, layer: int) -> list[nn.Module]:
        """The key-side projections of `layer` (`[gate, up]` for a gated MLP, else one)."""
        self._check_layer(layer)
        return [self.model.get_submodule(t.format(layer=layer)) for t in self.ffn_key_templates]

    def unembedding(self) -> torch.Tensor:
        """Output word embedding matrix `[vocab, hidden]` (the `e_t` of the paper's update rule)."""
        return self.model.get_output_embeddings().weight

    def unembedding_bias(self) -> torch.Tensor | None:
        return getattr(self.model.get_output_embeddings(), "bias", None)

    def final_norm_scale(self) -> torch.Tensor | None:
        """The elementwise scale the last norm applies before the vocabulary head `[hidden]` (None:
        none that maps residual directions to logits elementwise, e.g. BERT's head transform)."""
        return None

    def answer_directions(self, tokens: torch.Tensor) -> torch.Tensor:
        """Residual-stream directions `[k, hidden]` that raise each token's logit: its output
        embedding times the final norm's scale (the norm's own normalisation aside); on the CPU, as
        `value_slots`."""
        emb = self.unembedding().detach()[tokens]
        scale = self.final_norm_scale()
        return (emb if scale is None else emb * scale.detach()).cpu()

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise IndexError(f"layer {layer} out of range [0, {self.n_layers})")


class DecoderAdapter(Adapter):
    """Adapter of a left-to-right LM, with the block pieces used by the fast IG path.

    Shapes: `h` is `[..., T, hidden]`; attention tensors are `[..., T, heads, head_dim]`;
    `positional` returns whatever `attention_inputs` needs for positions `[G, T]`, already
    broadcastable to `[G, R, T, heads, head_dim]` (R = rows per prompt).
    """

    @property
    def n_heads(self) -> int:
        return int(self.config.num_attention_heads)

    @property
    def n_kv_heads(self) -> int:
        return int(getattr(self.config, "num_key_value_heads", None) or self.n_heads)

    @property
    def head_dim(self) -> int:
        hd = getattr(self.config, "head_dim", None)
        return int(hd) if hd else self.hidden_size // self.n_heads

    def max_positions_exact(self) -> int | None:
        """Longest sequence for which plain causal attention is what the model does (sliding windows)."""
        window = getattr(self.config, "sliding_window", None)
        use = getattr(self.config, "use_sliding_window", True)
        return int(window) if (window and use) else None

    def layer(self, layer: int) -> nn.Module:
        raise NotImplementedError

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def positional(self, positions: torch.Tensor, like: torch.Tensor) -> Any:
        """Per-pass positional state (rotary cos/sin) for positions `[G, T]`; None if unused."""
        return None

    def attention_inputs(
        self, layer: int, h: torch.Tensor, pos: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def attention_scale(self, layer: int) -> float:
        return self.head_dim**-0.5

    def attention_output(self, layer: int, ctx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mlp_activation(self, layer: int, h_in: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """Neuron activations given the block input `h_in` and `base = h_in + attention output`."""
        raise NotImplementedError

    def mlp_output(self, layer: int, act: torch.Tensor) -> torch.Tensor:
        return self.ffn_out(layer)(act)

    def final_norm(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
