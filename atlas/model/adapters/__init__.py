"""Adapters: one class per model family, picked by Hugging Face class name.

`ADAPTERS` is the only architecture switch in the project: keys are `config.architectures[0]`
(falling back to `type(model).__name__`), values are adapter classes.

Example:
    >>> from atlas.model.adapters import adapter_for
    >>> adapter = adapter_for(model)          # doctest: +SKIP
    >>> adapter.ffn_out(3), adapter.value_slots(3).shape   # doctest: +SKIP
"""

from __future__ import annotations

from torch import nn

from atlas.errors import ModelError
from atlas.model.adapters.base import Adapter, DecoderAdapter, Site
from atlas.model.adapters.bert import BertAdapter, RobertaAdapter
from atlas.model.adapters.gpt2 import GPT2Adapter
from atlas.model.adapters.llama import GemmaAdapter, LlamaAdapter, MistralAdapter, Qwen2Adapter
from atlas.model.adapters.neox import NeoXAdapter

ADAPTERS: dict[str, type[Adapter]] = {
    "LlamaForCausalLM": LlamaAdapter,
    "MistralForCausalLM": MistralAdapter,
    "Qwen2ForCausalLM": Qwen2Adapter,
    "GemmaForCausalLM": GemmaAdapter,
    "GPT2LMHeadModel": GPT2Adapter,
    "GPTNeoXForCausalLM": NeoXAdapter,
    "BertForMaskedLM": BertAdapter,
    "RobertaForMaskedLM": RobertaAdapter,
}


def model_class_name(model: nn.Module) -> str:
    """`config.architectures[0]` when set (what the checkpoint says it is), else the Python class."""
    archs = getattr(getattr(model, "config", None), "architectures", None)
    return archs[0] if archs else type(model).__name__


def adapter_for(model: nn.Module) -> Adapter:
    """Build the adapter of `model`, or raise `ModelError`."""
    name = model_class_name(model)
    cls = ADAPTERS.get(name) or ADAPTERS.get(type(model).__name__)
    if cls is None:
        supported = ", ".join(sorted(ADAPTERS))
        raise ModelError(f"unsupported model class {name!r}; supported: {supported}")
    return cls(model)


__all__ = ["ADAPTERS", "Adapter", "DecoderAdapter", "Site", "ModelError", "adapter_for", "model_class_name"]
