"""GPT-NeoX / Pythia: activations are the input of `mlp.dense_4h_to_h` (a Linear: value slot =
column i). Attention uses a fused `query_key_value` laid out per head as `[q | k | v]`, partial
rotary embeddings, and (by default) a parallel residual `h + attn(ln1 h) + mlp(ln2 h)`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from atlas.model.adapters.base import DecoderAdapter, apply_rope


class NeoXAdapter(DecoderAdapter):
    family = "neox"
    ffn_out_template = "gpt_neox.layers.{layer}.mlp.dense_4h_to_h"
    ffn_in_template = "gpt_neox.layers.{layer}.mlp"
    ffn_key_templates = ("gpt_neox.layers.{layer}.mlp.dense_h_to_4h",)

    def max_positions_exact(self) -> int | None:
        return None

    def layer(self, layer: int) -> nn.Module:
        return self.model.gpt_neox.layers[layer]

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model.gpt_neox.embed_in(ids)

    def positional(self, positions: torch.Tensor, like: torch.Tensor) -> Any:
        cos, sin = self.model.gpt_neox.rotary_emb(like, positions)
        return cos[:, None, :, None, :], sin[:, None, :, None, :]

    def attention_inputs(
        self, layer: int, h: torch.Tensor, pos: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        blk = self.layer(layer)
        qkv = blk.attention.query_key_value(blk.input_layernorm(h))
        q, k, v = qkv.unflatten(-1, (self.n_heads, 3 * self.head_dim)).chunk(3, dim=-1)
        cos, sin = pos
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def attention_scale(self, layer: int) -> float:
        return float(self.layer(layer).attention.scaling)

    def attention_output(self, layer: int, ctx: torch.Tensor) -> torch.Tensor:
        return self.layer(layer).attention.dense(ctx)

    def mlp_activation(self, layer: int, h_in: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        blk = self.layer(layer)
        x = blk.post_attention_layernorm(h_in if self.config.use_parallel_residual else base)
        return blk.mlp.act(blk.mlp.dense_h_to_4h(x))

    def final_norm(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.gpt_neox.final_layer_norm(h)

    def final_norm_scale(self) -> torch.Tensor | None:
        return self.model.gpt_neox.final_layer_norm.weight
