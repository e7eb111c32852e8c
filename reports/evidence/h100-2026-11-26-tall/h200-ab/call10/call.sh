#!/bin/bash
set -u
mkdir -p /work && [ -e /work/main ] || ln -sfn "$PWD" /work/main
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
export FALSIFIER_COMMIT=$(cat .gpu/COMMIT)
P=$OUT/perf; mkdir -p $P; F=.gpu/falsifier
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $P/card.txt
( $F gen-model --preset qwen3-30b-a3b --quant q4_k_m --layers 4 --seed 1 --out /tmp/a3b-l4.gguf > /dev/null 2>&1 ) &
.gpu/lib-tests --include-ignored --test-threads 1 backend::cuda::gpu_tests --skip bench_prefill > $P/gpu-tests.txt 2>&1
echo "gpu tests rc=$? $(grep 'test result' $P/gpu-tests.txt)"; grep -E "panicked" -A3 $P/gpu-tests.txt | head
for t in wide_matmuls_cover_every_tile_position grouped_matmul_kernels_match_host; do
  compute-sanitizer --tool memcheck .gpu/lib-tests --include-ignored --exact backend::cuda::gpu_tests::$t > $P/san-memcheck-$t.txt 2>&1
  echo "memcheck $t rc=$? $(grep -E 'ERROR SUMMARY' $P/san-memcheck-$t.txt)"; done
wait
FALSIFIER_BENCH_PROFILE=1 FALSIFIER_BENCH_MODEL=/tmp/a3b-l4.gguf FALSIFIER_BENCH_T=32,512 .gpu/lib-tests --include-ignored --nocapture --exact backend::cuda::gpu_tests::bench_prefill > $P/l4.txt 2>&1
echo "== L4"; grep -E "^bench T=[0-9]+: untraced" $P/l4.txt | cut -c1-80; awk '/^bench T=512 untraced profile/{f=1;next} /^bench/{f=0} f' $P/l4.txt | head -8
