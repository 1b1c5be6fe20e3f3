"""IG throughput: this engine vs EleutherAI `knowledge-neurons==0.0.2` on the same GPT-2 small
(random init) and the same single-token PARAREL prompts, plus the SmolLM2-135M architecture and,
on a GPU, the bf16-vs-fp32 fidelity (mean top-20 neuron overlap).

Example:
    python bench/ig_throughput.py --n 200 --eleuther-n 5          # 2-core CPU
    python bench/ig_throughput.py --device cuda --n 200 --eleuther-n 100 --fidelity-n 32
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_ARCH = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0, rms_norm_eps=1e-5,
                    tie_word_embeddings=True, max_position_embeddings=8192)


def pararel_prompts(data: Path, tok, n: int) -> list[tuple[str, str, list[int], list[int]]]:
    """First n (prompt, answer) pairs whose template ends in [Y] and whose answer is ONE token."""
    out = []
    for pat_file in sorted((data / "patterns").glob("P*.jsonl")):
        facts_file = data / "trex_lms_vocab" / pat_file.name
        if not facts_file.exists():
            continue
        pats = [json.loads(l)["pattern"] for l in pat_file.read_text().splitlines() if l.strip()]
        pats = [p.rstrip(" .").removesuffix("[Y]").rstrip() for p in pats if p.rstrip(" .").endswith("[Y]")]
        facts = [json.loads(l) for l in facts_file.read_text().splitlines()[:3] if l.strip()]
        for f in facts:
            for p in pats[:2]:
                prompt, answer = p.replace("[X]", f["sub_label"]), " " + f["obj_label"]
                a_ids = tok(answer).input_ids
                if len(a_ids) == 1:
                    out.append((prompt, answer, tok(prompt).input_ids, a_ids))
                if len(out) == n:
                    return out
    return out


def find_data(arg: str | None) -> Path:
    for cand in [arg, ROOT / "atlas" / "data" / "pararel", "/work/shared/data/pararel"]:
        if cand and (Path(cand) / "patterns").is_dir():
            return Path(cand)
    raise SystemExit("PARAREL data not found: pass --data")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_ours(model, items, cfg, device: str) -> float:
    from atlas.adapters import adapter_for
    from indexer.ig import attribute

    ad = adapter_for(model)
    attribute(model, ad, items[: cfg.batch_size], cfg)  # warm-up
    sync(device)
    t = time.perf_counter()
    attribute(model, ad, items, cfg)
    sync(device)
    return time.perf_counter() - t


def time_eleuther(model, tok, prompts, device: str) -> float:
    from knowledge_neurons import KnowledgeNeurons

    kn = KnowledgeNeurons(model, tok, model_type="gpt2", device=device)
    kn.get_scores(prompts[0][0], prompts[0][1], batch_size=20, steps=20, pbar=False)  # warm-up
    sync(device)
    t = time.perf_counter()
    for prompt, answer, *_ in prompts:
        kn.get_scores(prompt, answer, batch_size=20, steps=20, pbar=False)
    sync(device)
    return time.perf_counter() - t


def topk_overlap(a: torch.Tensor, b: torch.Tensor, k: int = 20) -> float:
    ta = set(a.flatten().topk(k).indices.tolist())
    tb = set(b.flatten().topk(k).indices.tolist())
    return len(ta & tb) / k


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data")
    ap.add_argument("--tokenizer", default=None, help="HF tokenizer dir (default: the converted SmolLM2)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--eleuther-n", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--smol-n", type=int, default=8)
    ap.add_argument("--smol-batch", type=int, default=4)
    ap.add_argument("--smol-dtype", default="float32")
    ap.add_argument("--fidelity-n", type=int, default=0)
    ap.add_argument("--results", default=str(ROOT / "bench" / "results.jsonl"))
    args = ap.parse_args()

    from transformers import AutoTokenizer, GPT2Config, LlamaConfig

    from atlas.models import config_model
    from indexer.ig import IGConfig, PromptItem

    tok_dir = args.tokenizer
    if tok_dir is None:
        from atlas.models import smollm2_dir
        tok_dir = str(smollm2_dir())
    tok = AutoTokenizer.from_pretrained(tok_dir)
    prompts = pararel_prompts(find_data(args.data), tok, args.n)
    items = [PromptItem(p_ids, a_ids) for _, _, p_ids, a_ids in prompts]
    dev = args.device
    rec: dict = {"bench": "ig_throughput", "device": dev, "n_prompts": len(items), "steps": 20, "rule": "left",
                 "gpu": torch.cuda.get_device_name() if dev.startswith("cuda") else None,
                 "threads": torch.get_num_threads(), "torch": torch.__version__}
    try:
        rec["git_sha"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip() or None
    except OSError:
        rec["git_sha"] = None
    t_all = time.perf_counter()

    gcfg = GPT2Config(bos_token_id=0, eos_token_id=0)
    gcfg.architectures = ["GPT2LMHeadModel"]
    gpt2 = config_model(gcfg, seed=0).to(dev)
    wall = time_ours(gpt2, items, IGConfig(batch_size=args.batch_size), dev)
    rec["gpt2_ours_prompts_per_s"] = len(items) / wall
    print(f"GPT-2 small, this engine : {len(items)} prompts in {wall:.1f} s = {len(items) / wall:.2f} prompts/s")
    if args.eleuther_n:
        e_wall = time_eleuther(gpt2, tok, prompts[: args.eleuther_n], dev)
        rec["gpt2_eleuther_prompts_per_s"] = args.eleuther_n / e_wall
        rec["eleuther_n"] = args.eleuther_n
        rec["speedup_vs_eleuther"] = rec["gpt2_ours_prompts_per_s"] / rec["gpt2_eleuther_prompts_per_s"]
        print(f"GPT-2 small, EleutherAI  : {args.eleuther_n} prompts in {e_wall:.1f} s = "
              f"{args.eleuther_n / e_wall:.3f} prompts/s; ratio {rec['speedup_vs_eleuther']:.1f}x")
    del gpt2

    scfg = LlamaConfig(**SMOLLM2_ARCH)
    scfg.architectures = ["LlamaForCausalLM"]
    smol = config_model(scfg, seed=0).to(dev)
    sdtype = getattr(torch, args.smol_dtype)
    smol_items = items[: args.smol_n]
    s_wall = time_ours(smol.to(sdtype), smol_items, IGConfig(batch_size=args.smol_batch), dev)
    rec.update(smol_dtype=args.smol_dtype, smol_n=len(smol_items), smol_batch=args.smol_batch,
               smol_prompts_per_s=len(smol_items) / s_wall)
    print(f"SmolLM2-135M arch ({args.smol_dtype}): {len(smol_items)} prompts in {s_wall:.1f} s = "
          f"{len(smol_items) / s_wall:.2f} prompts/s ({s_wall / len(smol_items):.3f} s/prompt)")

    if args.fidelity_n:
        from atlas.adapters import adapter_for
        from indexer.ig import attribute

        fi = items[: args.fidelity_n]
        ad = adapter_for(smol)
        ref = attribute(smol.to(torch.float32), ad, fi, IGConfig(batch_size=args.smol_batch))
        bf = attribute(smol.to(torch.bfloat16), ad, fi, IGConfig(batch_size=args.smol_batch))
        ov = [topk_overlap(a.scores, b.scores) for a, b in zip(ref, bf)]
        rec["bf16_top20_overlap_mean"] = sum(ov) / len(ov)
        rec["bf16_top20_overlap_min"] = min(ov)
        rec["fidelity_n"] = len(fi)
        print(f"bf16 vs fp32 (SmolLM2 arch, random init): mean top-20 overlap {rec['bf16_top20_overlap_mean']:.3f} "
              f"(min {min(ov):.2f}) over {len(fi)} prompts")

    rec["wall_s"] = time.perf_counter() - t_all
    rec["items_per_s"] = rec["gpt2_ours_prompts_per_s"]
    with open(args.results, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec))


if __name__ == "__main__":
    main()
