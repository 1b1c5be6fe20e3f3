"""What `--layers` saves: the IG engine on a random model of SmolLM2's shape (30 x 1536, m = 20),
all layers against the top third and the top sixth, on the same synthetic 12-token prompts, with
the scores of the chosen layers checked equal to the full run's.

    python bench/layers_speed.py --device cuda --n 1024 --batch 128
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from atlas.model.adapters import adapter_for
from atlas.model.encode import PromptItem
from indexer.attribution.ig import IGConfig, attribute_stacked

SMOLLM2 = dict(
    hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
    vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True,
)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2)).to(args.device).eval()
    ad = adapter_for(model)
    g = torch.Generator().manual_seed(1)
    items = [
        PromptItem(
            torch.randint(0, 49152, (12,), generator=g).tolist(), [int(torch.randint(0, 49152, (1,), generator=g))]
        )
        for _ in range(args.n)
    ]
    dtype = torch.bfloat16 if args.dtype == "bf16" else None
    full_scores = None
    for layers in (None, (20, 29), (25, 29)):
        cfg = IGConfig(steps=20, batch_size=args.batch, dtype=dtype, layers=layers)
        attribute_stacked(model, ad, items[: args.batch], cfg)  # warm-up
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        res = attribute_stacked(model, ad, items, cfg)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        wall = time.perf_counter() - t
        if layers is None:
            full_scores = res.scores
            same = None
        else:
            lo, hi = layers
            same = float((res.scores[:, lo : hi + 1] - full_scores[:, lo : hi + 1]).abs().max())
        gpu = args.device.startswith("cuda")
        row = {
            "layers": layers,
            "prompts": args.n,
            "seconds": round(wall, 3),
            "prompts_per_s": round(args.n / wall, 1),
            "max_abs_diff_vs_full": same,
            "device": torch.cuda.get_device_name() if gpu else "cpu",
            "dtype": args.dtype,
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
