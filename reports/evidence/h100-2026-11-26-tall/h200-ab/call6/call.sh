#!/bin/bash
set -u
mkdir -p /work && [ -e /work/main ] || ln -sfn "$PWD" /work/main
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
export FALSIFIER_COMMIT=$(cat .gpu/COMMIT)
P=$OUT/perf; mkdir -p $P; F=.gpu/falsifier; K=src/backend/cuda/kernels
nvidia-smi --query-gpu=name --format=csv,noheader
( $F gen-model --preset qwen3-30b-a3b --quant q4_k_m --layers 48 --seed 1 --out /tmp/a3b-l48.gguf > $P/gen-l48.txt 2>&1 ) &
GEN=$!
cat $K/common.cuh $K/matmul.cu $K/ops.cu $K/attention.cu $K/moe.cu > /tmp/kernels.cu
nvcc -arch=sm_90 -std=c++17 -cubin -Xptxas -v /tmp/kernels.cu -o /tmp/kernels.cubin > $P/ptxas.txt 2>&1; echo "ptxas rc=$?"
grep -A3 -E "entry function '(matmult_q4_k_(64|128)|attn_[a-z_]+)'" $P/ptxas.txt | grep -oE "function '[a-z0-9_]+'|Used [0-9]+ registers|[0-9]+ bytes spill stores" | paste -sd' ' | sed "s/ function/\nfunction/g"; echo
.gpu/lib-tests --include-ignored --test-threads 1 backend::cuda::gpu_tests --skip bench_prefill > $P/gpu-tests.txt 2>&1
echo "gpu tests rc=$? $(grep 'test result' $P/gpu-tests.txt)"; grep -E "panicked" -A3 $P/gpu-tests.txt | head
for tool in memcheck racecheck; do for t in wide_matmuls_cover_every_tile_position tiled_attention_matches_per_query_kernels; do
  compute-sanitizer --tool $tool .gpu/lib-tests --include-ignored --exact backend::cuda::gpu_tests::$t > $P/san-$tool-$t.txt 2>&1
  echo "sanitizer $tool $t rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $P/san-$tool-$t.txt)"; done; done
M=/tmp/a3b-l4.gguf
$F gen-model --preset qwen3-30b-a3b --quant q4_k_m --layers 4 --seed 1 --out $M > /dev/null 2>&1
B="--include-ignored --nocapture --exact backend::cuda::gpu_tests::bench_prefill"
show() { grep -E "^bench T=[0-9]+: untraced" $1 | cut -c1-70; awk '/^bench T=512 untraced profile/{f=1;next} /^bench/{f=0} f' $1 | head -${2:-12}; }
FALSIFIER_BENCH_PROFILE=1 FALSIFIER_BENCH_MODEL=$M FALSIFIER_BENCH_T=512 .gpu/lib-tests $B > $P/l4-default.txt 2>&1
echo "== L4 default"; show $P/l4-default.txt 14
FALSIFIER_CUDA_PLAIN_KERNEL=tall128 FALSIFIER_CUDA_EXPERT_KERNEL=tall128 FALSIFIER_BENCH_PROFILE=1 FALSIFIER_BENCH_MODEL=$M FALSIFIER_BENCH_T=512 .gpu/lib-tests $B > $P/l4-tall128.txt 2>&1
echo "== L4 tall128 everywhere"; show $P/l4-tall128.txt 8
wait $GEN; echo "gen48 done at ${SECONDS}s"
M=/tmp/a3b-l48.gguf
FALSIFIER_BENCH_PROFILE=1 FALSIFIER_BENCH_MODEL=$M FALSIFIER_BENCH_T=32,512 timeout 120 .gpu/lib-tests $B > $P/l48-default.txt 2>&1
echo "== L48 default rc=$?"; grep -A2 -E "^bench T=[0-9]+: untraced" $P/l48-default.txt | cut -c1-200; awk '/^bench T=512 untraced profile/{f=1;next} /^bench/{f=0} f' $P/l48-default.txt | head -24
echo "at ${SECONDS}s"
[ $SECONDS -lt 480 ] && { FALSIFIER_CUDA_PLAIN_KERNEL=tall128 FALSIFIER_BENCH_MODEL=$M FALSIFIER_BENCH_T=512 timeout 60 .gpu/lib-tests $B > $P/l48-plain128.txt 2>&1; echo "== L48 plain tall128"; grep -E "^bench T=512: untraced" $P/l48-plain128.txt | cut -c1-70; }
[ $SECONDS -lt 530 ] && { FALSIFIER_CUDA_EXPERT_KERNEL=tall128 FALSIFIER_BENCH_MODEL=$M FALSIFIER_BENCH_T=512 timeout 60 .gpu/lib-tests $B > $P/l48-exp128.txt 2>&1; echo "== L48 experts tall128"; grep -E "^bench T=512: untraced" $P/l48-exp128.txt | cut -c1-70; }
