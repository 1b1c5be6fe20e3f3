#!/usr/bin/env bash
# Indexing benchmarks on a GPU machine of the device tool (no network, no DuckDB/SQLAlchemy there):
# wheels travel in .whl/, the SmolLM2 tokenizer in bench/.tokenizer/ (both carried, git-ignored).
#   bash bench/gpu_index.sh single   # PARAREL on one GPU, time-boxed, DuckDB
#   bash bench/gpu_index.sh scaling  # the same subset with 1 and 2 workers (embedded PostgreSQL)
set -uo pipefail
mode=${1:-single}
out=${OUT:-/tmp/out}; mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi -L
bench() { python3 bench/index_speed.py --tokenizer bench/.tokenizer --device cuda --precision bf16 --out "$out/results.jsonl" "$@" 2>&1 \
          | grep -v -E "Loading weights|Writing model|it/s\]$" | tee -a "$out/log.txt"; }
# smoke: one item of ~220 prompts; a batch of 128 prompts may not fit: fall back to 64
bs=128
if [ "$mode" = scaling ]; then   # the engine already ran batches of 128 on an H100 (80 GB); an H200 has more
  bench --db postgres --limit-per-relation "${LIMIT:-60}" --facts-per-item 16 --batch-size $bs --workers 1,2 --time-box "${TIME_BOX:-120}" --label "scaling 1 vs 2 GPUs"
  exit
fi
bench --relations P36,P19 --limit-per-relation 20 --facts-per-item 32 --batch-size $bs --label smoke || true
if ! grep -q '"label": "smoke"' "$out/results.jsonl" 2>/dev/null; then
  bs=64; bench --relations P36,P19 --limit-per-relation 20 --facts-per-item 32 --batch-size $bs --label smoke-64 || true
  grep -q '"label": "smoke-64"' "$out/results.jsonl" || { echo "smoke failed"; exit 1; }
fi
bench --facts-per-item 32 --batch-size $bs --workers 1 --time-box "${TIME_BOX:-330}" --label "pararel full, $(nvidia-smi -L | head -1 | cut -c1-40)"
