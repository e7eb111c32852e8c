#!/bin/bash
set -u
mkdir -p /work && [ -e /work/main ] || ln -sfn "$PWD" /work/main
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
export FALSIFIER_COMMIT=$(cat .gpu/COMMIT)
P=$OUT/perf; mkdir -p $P; F=.gpu/falsifier
( /usr/bin/time -f "gen %e s" $F gen-model --preset qwen3-30b-a3b --quant q4_k_m --layers 48 --seed 1 --out /tmp/a3b-l48.gguf > $P/gen-l48.txt 2>&1 ) &
GEN=$!
BENCH=0 bash tools/gpu/evidence.sh 2>&1 | tee $P/evidence-summary.txt
echo "evidence done at ${SECONDS}s"
B="--include-ignored --nocapture --exact backend::cuda::gpu_tests::bench_prefill"
FALSIFIER_BENCH_MODEL=fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf FALSIFIER_BENCH_T=8,32,512 .gpu/lib-tests $B > $P/bench-tiny.txt 2>&1
echo "== tiny"; grep -A2 -E "^bench T=[0-9]+: untraced" $P/bench-tiny.txt | cut -c1-200
wait $GEN; echo "gen48: $(tail -1 $P/gen-l48.txt) at ${SECONDS}s"
M=/tmp/a3b-l48.gguf
FALSIFIER_BENCH_PROFILE=1 FALSIFIER_BENCH_MODEL=$M FALSIFIER_BENCH_T=32,512 timeout 150 .gpu/lib-tests $B > $P/l48-default.txt 2>&1
echo "== L48 rc=$?"; grep -A2 -E "^bench(:| T=[0-9]+: untraced)" $P/l48-default.txt; awk '/^bench T=512 untraced profile/{f=1;next} /^bench/{f=0} f' $P/l48-default.txt | head -12
echo "at ${SECONDS}s"
[ $SECONDS -lt 520 ] && { timeout 70 $F bench $M --backend cuda --tokens-count 32,512 --runs 5 > $P/l48-cli.txt 2>&1; echo "== cli rc=$?"; tail -6 $P/l48-cli.txt; }
