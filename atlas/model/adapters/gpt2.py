"""GPT-2: `transformer.h[i].mlp.c_proj` is a Conv1D (`y = x @ W + b`, W `[n_inner, hidden]`), so
the value slot of neuron i is ROW i of its weight. Activations are `act(c_fc(ln_2(x)))`, the
input of `c_proj` (post-GELU; EleutherAI's tool hooks the pre-GELU `c_fc` output, a known bug).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from atlas.model.adapters.base import DecoderAdapter


class GPT2Adapter(DecoderAdapter):
    family = "gpt2"
    ffn_out_template = "transformer.h.{layer}.mlp.c_proj"
    slots_are_rows = True
    ffn_in_template = "transformer.h.{layer}.mlp"
    ffn_key_templates = ("transformer.h.{layer}.mlp.c_fc",)
    width_config = "n_inner"

    @property
    def n_layers(self) -> int:
        return int(self.config.n_layer)

    @property
    def n_neurons(self) -> int:
        return int(self.config.n_inner or 4 * self.config.n_embd)

    @property
    def hidden_size(self) -> int:
        return int(self.config.n_embd)

    @property
    def n_heads(self) -> int:
        return int(self.config.n_head)

    @property
    def n_kv_heads(self) -> int:
        return self.n_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads

    def max_positions_exact(self) -> int | None:
        return int(self.config.n_positions)

    def layer(self, layer: int) -> nn.Module:
        return self.model.transformer.h[layer]

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        tr = self.model.transformer
        return tr.wte(ids) + tr.wpe(positions)

    def attention_inputs(
        self, layer: int, h: torch.Tensor, pos: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        blk = self.layer(layer)
        qkv = blk.attn.c_attn(blk.ln_1(h))
        q, k, v = qkv.split(self.hidden_size, dim=-1)
        hd = self.head_dim
        return q.unflatten(-1, (-1, hd)), k.unflatten(-1, (-1, hd)), v.unflatten(-1, (-1, hd))

    def attention_scale(self, layer: int) -> float:
        scale = self.head_dim**-0.5 if self.config.scale_attn_weights else 1.0
        if self.config.scale_attn_by_inverse_layer_idx:
            scale /= float(layer + 1)
        return scale

    def attention_output(self, layer: int, ctx: torch.Tensor) -> torch.Tensor:
        return self.layer(layer).attn.c_proj(ctx)

    def mlp_activation(self, layer: int, h_in: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        blk = self.layer(layer)
        return blk.mlp.act(blk.mlp.c_fc(blk.ln_2(base)))

    def final_norm(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.transformer.ln_f(h)

    def final_norm_scale(self) -> torch.Tensor | None:
        return self.model.transformer.ln_f.weight
