"""A tiny randomly initialised model saved as a Hugging Face directory, with a character-level
tokenizer, so `atlas index --model DIR` can run end to end in a test (subprocesses included).

The tokenizer knows ASCII letters, space and a little punctuation, but no digits or accents:
answers holding those cannot be tokenised and must come out as skipped prompts.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from torch import nn
from transformers import PreTrainedTokenizerFast

from atlas.model.loading import config_model

SPECIALS = ["[UNK]", "[MASK]", "[PAD]"]
CHARS = list(string.ascii_letters + " .,'-()")


def char_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", mask_token="[MASK]", pad_token="[PAD]")


def save_tiny(path: Path, family: str = "llama", seed: int = 0) -> Path:
    """Write a tiny `family` model (3 layers x 48 neurons) and the char tokenizer to `path`."""
    model = tiny_model(family, seed=seed)
    model.save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


TINY_FAMILIES = ("llama", "mistral", "qwen2", "gemma", "gpt2", "neox", "neox_seq", "bert", "roberta")
VOCAB = 101


def _tiny_config(family: str) -> Any:
    import transformers as tf

    dec = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=64,
        initializer_range=0.1,
    )
    gqa = dict(dec, num_key_value_heads=2, tie_word_embeddings=False)
    enc = dict(dec, max_position_embeddings=70)
    configs = {
        "llama": lambda: tf.LlamaConfig(**gqa),
        "mistral": lambda: tf.MistralConfig(**gqa, sliding_window=None),
        "qwen2": lambda: tf.Qwen2Config(**gqa),
        "gemma": lambda: tf.GemmaConfig(**dict(gqa, head_dim=8)),
        "gpt2": lambda: tf.GPT2Config(
            vocab_size=VOCAB,
            n_embd=32,
            n_layer=3,
            n_head=4,
            n_positions=64,
            bos_token_id=0,
            eos_token_id=0,
            initializer_range=0.1,
        ),
        "neox": lambda: tf.GPTNeoXConfig(**dec, rotary_pct=0.5, use_parallel_residual=True),
        "neox_seq": lambda: tf.GPTNeoXConfig(**dec, rotary_pct=1.0, use_parallel_residual=False),
        "bert": lambda: tf.BertConfig(**enc),
        "roberta": lambda: tf.RobertaConfig(**enc, pad_token_id=1),
    }
    if family not in configs:
        raise ValueError(f"unknown tiny family {family!r}; choose from {TINY_FAMILIES}")
    return configs[family]()


def tiny_model(family: str, seed: int = 0) -> nn.Module:
    """A tiny (3 layers, hidden 32) randomly initialised model of `family`, fp32, eval mode.

    Example:
        >>> m = tiny_model("llama", seed=1)
        >>> type(m).__name__
        'LlamaForCausalLM'
    """
    cfg = _tiny_config(family)
    cls = {
        "llama": "LlamaForCausalLM",
        "mistral": "MistralForCausalLM",
        "qwen2": "Qwen2ForCausalLM",
        "gemma": "GemmaForCausalLM",
        "gpt2": "GPT2LMHeadModel",
        "neox": "GPTNeoXForCausalLM",
        "neox_seq": "GPTNeoXForCausalLM",
        "bert": "BertForMaskedLM",
        "roberta": "RobertaForMaskedLM",
    }[family]
    cfg.architectures = [cls]
    return config_model(cfg, seed)
