#!/usr/bin/env bash
# bench/scale.py on a GPU machine of the device tool (no network; wheels travel in .whl/ and the
# SmolLM2 tokenizer in bench/.tokenizer/, both carried and git-ignored: see bench/gpu_index.sh).
#   bash bench/gpu_scale.sh smoke     # a tiny run of every path (1 and 2 GPUs, PostgreSQL): fails fast
#   bash bench/gpu_scale.sh small     # SmolLM2 and Llama-3.2-1B shapes, one GPU, DuckDB, fidelity
#   bash bench/gpu_scale.sh big-bg    # Llama-3-8B shape, 1 then all GPUs, PostgreSQL, in the background
#   bash bench/gpu_scale.sh wait      # (later calls) wait up to WAIT_S for big-bg, copy its results
# Results go to $OUT (the device tool brings them back) and, for big-bg, /tmp/bg first.
set -uo pipefail
mode=${1:-smoke}
out=${OUT:-/tmp/out}; mkdir -p "$out" /tmp/bg
wheels=$(ls .whl 2>/dev/null | md5sum | cut -c1-12)  # once per machine and set of wheels
if [ "$(cat /tmp/site/.ready 2>/dev/null)" != "$wheels" ] && [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    echo "$wheels" > /tmp/site/.ready
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false ATLAS_CACHE=/tmp/cache
scale() { python3 bench/scale.py --tokenizer bench/.tokenizer --label "${LABEL:-}" "$@" 2>&1 | grep -v -E "Loading weights|Writing model|it/s\]$"; }
gpus=$(nvidia-smi -L | wc -l)
case "$mode" in
  smoke)
    nvidia-smi -L
    scale --shapes smollm2 --limit 1 --db postgres --gpus "1,$gpus" --engine-prompts 64 --fidelity 16 \
        --root /tmp/smoke --out "$out/smoke.jsonl" ;;
  small)
    scale --shapes smollm2,llama-1b --limit "${LIMIT:-24}" --gpus 1 --fidelity "${FIDELITY:-128}" --out "$out/scale.jsonl"
    [ -n "${FPI:-}" ] && scale --shapes smollm2 --limit "${LIMIT:-24}" --gpus 1 --facts-per-item "$FPI" --out "$out/scale.jsonl" ;;
  big-bg)
    cp -r "$PWD" /tmp/bg/code  # the next call replaces this tree; the run keeps its own copy
    # all GPUs first, over the whole subset; then one GPU, time-boxed by ONE_GPU_BOX_S when set
    # (its steady rate is measured; its wall time for the whole subset is then a projection)
    big="PYTHONPATH=/tmp/site:/tmp/bg/code python3 bench/scale.py --tokenizer bench/.tokenizer --label '${LABEL:-}' \
        --shapes llama-8b --limit ${LIMIT:-100} --db postgres --out /tmp/bg/scale.jsonl"
    (cd /tmp/bg/code && setsid nohup bash -c "$big --gpus $gpus --engine-prompts 256 && \
        $big --gpus 1 --engine-prompts 0 ${ONE_GPU_BOX_S:+--time-box $ONE_GPU_BOX_S}" > /tmp/bg/log.txt 2>&1 < /dev/null &)
    sleep "${SLEEP_S:-120}"; grep -v -E "Loading weights|it/s\]$" /tmp/bg/log.txt | tail -5
    nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv ;;
  wait)
    end=$((SECONDS + ${WAIT_S:-540}))
    while pgrep -f "bench/scale.py" >/dev/null && [ $SECONDS -lt $end ]; do sleep 5; done
    nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv
    cp /tmp/bg/scale.jsonl /tmp/bg/log.txt "$out/" 2>/dev/null
    grep -v -E "Loading weights|it/s\]$" /tmp/bg/log.txt | tail -8 ;;
esac
