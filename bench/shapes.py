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
