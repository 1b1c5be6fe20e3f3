"""Model shapes the benchmarks build with random weights (speed does not depend on the weights' values)."""

from __future__ import annotations

# SmolLM2-135M-Instruct (the bundled real model): 30 layers x 1536 FFN neurons, hidden 576
SMOLLM2_ARCH = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    max_position_embeddings=8192,
    hidden_act="silu",
)

# Llama-3.2-1B: 16 layers x 8192 FFN neurons, hidden 2048, tied 128k-word head
LLAMA32_1B = dict(
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    max_position_embeddings=8192,
    hidden_act="silu",
)

# Llama-3-8B: 32 layers x 14336 FFN neurons, hidden 4096, untied 128k-word head
LLAMA3_8B = dict(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    max_position_embeddings=8192,
    hidden_act="silu",
)

SHAPES = {"smollm2": SMOLLM2_ARCH, "llama-1b": LLAMA32_1B, "llama-8b": LLAMA3_8B}
