"""LLaMA-style decoders: LLaMA, Mistral, Qwen2, Gemma (v1).

All four share `model.layers[i].{input_layernorm, self_attn.{q,k,v,o}_proj, post_attention_layernorm,
mlp.{gate,up,down}_proj}`, rotary position embeddings and a gated MLP. The neuron activations are
`act(gate_proj(x)) * up_proj(x)`, the INPUT of `down_proj` (hooking `gate_proj` or `act_fn` alone
misses the `up_proj` factor). Gemma differs only inside modules we call (embedding scale, RMSNorm
with 1 + w, GELU-tanh); Gemma 2/3 add attention soft-capping and extra norms and are not handled.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from atlas.model.adapters.base import DecoderAdapter, apply_rope


class LlamaAdapter(DecoderAdapter):
    family = "llama"
    ffn_out_template = "model.layers.{layer}.mlp.down_proj"
    ffn_in_template = "model.layers.{layer}.mlp"
    ffn_key_templates = ("model.layers.{layer}.mlp.gate_proj", "model.layers.{layer}.mlp.up_proj")
    bias_config = "mlp_bias"  # LlamaConfig(mlp_bias=True): every MLP projection gets a bias

    def layer(self, layer: int) -> nn.Module:
        return self.model.model.layers[layer]

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model.model.embed_tokens(ids)

    def positional(self, positions: torch.Tensor, like: torch.Tensor) -> Any:
        cos, sin = self.model.model.rotary_emb(like, positions)
        return cos[:, None, :, None, :], sin[:, None, :, None, :]

    def attention_inputs(
        self, layer: int, h: torch.Tensor, pos: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        blk = self.layer(layer)
        attn = blk.self_attn
        x = blk.input_layernorm(h)
        hd = self.head_dim
        q = attn.q_proj(x).unflatten(-1, (-1, hd))
        k = attn.k_proj(x).unflatten(-1, (-1, hd))
        v = attn.v_proj(x).unflatten(-1, (-1, hd))
        cos, sin = pos
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def attention_scale(self, layer: int) -> float:
        return float(self.layer(layer).self_attn.scaling)

    def attention_output(self, layer: int, ctx: torch.Tensor) -> torch.Tensor:
        return self.layer(layer).self_attn.o_proj(ctx)

    def mlp_activation(self, layer: int, h_in: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        blk = self.layer(layer)
        x = blk.post_attention_layernorm(base)
        mlp = blk.mlp
        return mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)

    def final_norm(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.model.norm(h)

    def final_norm_scale(self) -> torch.Tensor | None:
        return self.model.model.norm.weight


class MistralAdapter(LlamaAdapter):
    family = "mistral"
    bias_config = None  # its MLP has no bias option: injection refuses it


class Qwen2Adapter(LlamaAdapter):
    family = "qwen2"
    bias_config = None  # its MLP has no bias option: injection refuses it


class GemmaAdapter(LlamaAdapter):
    family = "gemma"
    bias_config = None  # its MLP has no bias option: injection refuses it

    def final_norm_scale(self) -> torch.Tensor | None:
        return 1.0 + self.model.model.norm.weight  # Gemma's RMSNorm scales by (1 + w)
