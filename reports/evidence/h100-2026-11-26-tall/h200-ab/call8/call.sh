#!/bin/bash
set -u
mkdir -p /work && [ -e /work/main ] || ln -sfn "$PWD" /work/main
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
export FALSIFIER_COMMIT=$(cat .gpu/COMMIT)
P=$OUT/perf; mkdir -p $P; F=.gpu/falsifier; K=src/backend/cuda/kernels
( $F gen-model --preset qwen3-30b-a3b --quant q4_k_m --layers 48 --seed 1 --out /tmp/a3b-l48.gguf > $P/gen-l48.txt 2>&1 ) &
GEN=$!
.gpu/lib-tests --include-ignored --test-threads 1 backend::cuda::gpu_tests --skip bench_prefill > $P/gpu-tests.txt 2>&1
echo "gpu tests rc=$? $(grep 'test result' $P/gpu-tests.txt)"; grep -E "panicked" -A3 $P/gpu-tests.txt | head
D=/tmp/var-narrow; rm -rf $D; mkdir -p $D; cp $K/* $D/; { echo "#define LD8_WIDE 0"; cat $K/common.cuh; } > $D/common.cuh
M=/tmp/a3b-l4.gguf
$F gen-model --preset qwen3-30b-a3b --quant q4_k_m --layers 4 --seed 1 --out $M > /dev/null 2>&1
B="--include-ignored --nocapture --exact backend::cuda::gpu_tests::bench_prefill"
FALSIFIER_BENCH_PROFILE=1 FALSIFIER_BENCH_MODEL=$M FALSIFIER_BENCH_T=512 .gpu/lib-tests $B > $P/l4-default.txt 2>&1
echo "== L4 default"; grep -E "^bench T=512: untraced" $P/l4-default.txt | cut -c1-70; awk '/^bench T=512 untraced profile/{f=1;next} /^bench/{f=0} f' $P/l4-default.txt | head -14
FALSIFIER_CUDA_KERNELS=$D FALSIFIER_BENCH_PROFILE=1 FALSIFIER_BENCH_MODEL=$M FALSIFIER_BENCH_T=512 .gpu/lib-tests $B > $P/l4-noldwide.txt 2>&1
echo "== L4 LD8_WIDE=0"; grep -E "^bench T=512: untraced" $P/l4-noldwide.txt | cut -c1-70; awk '/^bench T=512 untraced profile/{f=1;next} /^bench/{f=0} f' $P/l4-noldwide.txt | head -8
wait $GEN; echo "gen48 at ${SECONDS}s"
M=/tmp/a3b-l48.gguf
FALSIFIER_BENCH_PROFILE=1 FALSIFIER_BENCH_MODEL=$M FALSIFIER_BENCH_T=32,512 timeout 150 .gpu/lib-tests $B > $P/l48-default.txt 2>&1
echo "== L48 rc=$?"; grep -A2 -E "^bench T=[0-9]+: untraced" $P/l48-default.txt | cut -c1-220; awk '/^bench T=512 untraced profile/{f=1;next} /^bench/{f=0} f' $P/l48-default.txt | head -16
FALSIFIER_CUDA_KERNELS=$D FALSIFIER_BENCH_MODEL=$M FALSIFIER_BENCH_T=512 timeout 60 .gpu/lib-tests $B > $P/l48-noldwide.txt 2>&1
echo "== L48 LD8_WIDE=0"; grep -E "^bench T=512: untraced" $P/l48-noldwide.txt | cut -c1-70
echo "at ${SECONDS}s"
