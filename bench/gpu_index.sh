#!/usr/bin/env bash
# Benchmarks on a GPU machine of the device tool (no network, no DuckDB/SQLAlchemy there):
# wheels travel in .whl/, the SmolLM2 tokenizer in bench/.tokenizer/ (both carried, git-ignored).
#   bash bench/gpu_index.sh engine    # bench/ig_throughput.py: GPT-2 vs EleutherAI, SmolLM2 arch fp32/bf16
#   bash bench/gpu_index.sh full-bg   # whole PARAREL on one GPU, DuckDB, started in the background
#   bash bench/gpu_index.sh wait      # (a later call) wait for full-bg and collect its results
#   bash bench/gpu_index.sh scaling   # a PARAREL subset with 1 and 2 workers (embedded PostgreSQL)
#   bash bench/gpu_index.sh defaults  # a PARAREL subset with the indexer's own pass and item sizes
#   bash bench/gpu_index.sh sketch    # the same subset with --sketch-rank 0, 1, 4 (RANKS): their cost
# A command of the device tool may run 10 minutes; the whole-PARAREL run takes longer, so it runs
# in its own process session (setsid) and a later call collects it from /tmp/bg.
set -uo pipefail
mode=${1:-engine}
out=${OUT:-/tmp/out}; mkdir -p "$out"
[ "$mode" = full ] && out=/tmp/bg && mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi -L
bench() { python3 bench/index_speed.py --tokenizer bench/.tokenizer --device cuda --precision bf16 --out "$out/results.jsonl" "$@" 2>&1 \
          | grep -v -E "Loading weights|Writing model|it/s\]$" | tee -a "$out/log.txt"; }
gpu=$(nvidia-smi -L | head -1 | cut -c1-40)
case "$mode" in
  engine)
    python3 bench/ig_throughput.py --device cuda --n 200 --eleuther-n 20 --batch-size 100 --smol-n 256 --smol-batch 128 \
        --tokenizer bench/.tokenizer 2>&1 | grep -v -E "Loading weights|it/s\]$"
    cp bench/results.jsonl "$out/ig_results.jsonl" ;;
  full-bg)
    setsid nohup bash bench/gpu_index.sh full > /tmp/bg-launch.log 2>&1 < /dev/null &
    sleep 60; cat /tmp/bg/log.txt 2>/dev/null; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv ;;
  full)
    bench --facts-per-item "${FPI:-96}" --batch-size "${BS:-384}" --workers 1 --label "pararel full, $gpu" ;;
  wait)
    end=$((SECONDS + ${WAIT_S:-540}))
    while pgrep -f "gpu_index.sh full" >/dev/null && [ $SECONDS -lt $end ]; do sleep 5; done
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
    cp /tmp/bg/* /tmp/bg-launch.log "$out/" 2>/dev/null; cat /tmp/bg/log.txt ;;
  sketch)  # what gradient sketches cost: the same subset without and with them
    for r in ${RANKS:-0 1 4}; do
        bench --limit-per-relation "${LIMIT:-30}" --workers 1 --sketch-rank "$r" --label "sketch rank $r, $gpu"
    done ;;
  defaults)
    bench --limit-per-relation "${LIMIT:-100}" --workers 1 --label "indexer defaults, $gpu" ;;
  scaling)
    bench --db postgres --limit-per-relation "${LIMIT:-60}" --facts-per-item "${FPI:-96}" --batch-size "${BS:-384}" --workers "${WORKERS:-1,2}" \
        ${TIME_BOX:+--time-box $TIME_BOX} --label "scaling, $gpu" ;;
esac
