#!/bin/bash
set -u
mkdir -p /work && [ -e /work/main ] || ln -sfn "$PWD" /work/main
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
P=$OUT/perf; mkdir -p $P; K=src/backend/cuda/kernels; F=.gpu/falsifier
nvidia-smi --query-gpu=name --format=csv,noheader
M=/tmp/a3b-l4.gguf
$F gen-model --preset qwen3-30b-a3b --quant q4_k_m --layers 4 --seed 1 --out $M > /dev/null 2>&1 &
cat $K/common.cuh $K/matmul.cu $K/ops.cu $K/attention.cu $K/moe.cu > /tmp/kernels.cu
nvcc -arch=sm_90 -std=c++17 -cubin -Xptxas -v /tmp/kernels.cu -o /tmp/kernels.cubin > $P/ptxas.txt 2>&1; echo "ptxas rc=$?"
grep -A3 -E "entry function '(matmult_q4_k|matmul_q4_k_64)'" $P/ptxas.txt | grep -oE "function '[a-z0-9_]+'|Used [0-9]+ registers|[0-9]+ bytes spill stores" | paste -sd' '
for t in wide_matmuls_cover_every_tile_position grouped_matmul_kernels_match_host device_decoders_match_gguf_py; do
  .gpu/lib-tests --include-ignored --exact backend::cuda::gpu_tests::$t > $P/t-$t.txt 2>&1; echo "$t rc=$?"; grep -E "panicked" -A3 $P/t-$t.txt | head -5; done
wait
B="--include-ignored --nocapture --exact backend::cuda::gpu_tests::bench_prefill"
show() { grep -E "^bench T=512: untraced" $1 | cut -c1-60; awk '/^bench T=512 untraced profile/{f=1;next} /^bench/{f=0} f' $1 | grep -E "ffn_out" | head -4; }
n=0
for v in "" "MT_MIN_BLOCKS=3" "MT_MIN_BLOCKS=5" "MM_MIN_BLOCKS=3"; do
  n=$((n+1)); D=/tmp/var-$n; rm -rf $D; mkdir -p $D; cp $K/* $D/
  { for def in ${v//,/ }; do echo "#define ${def/=/ }"; done; cat $K/matmul.cu; } > $D/matmul.cu
  for ek in tiled64 tall; do
    FALSIFIER_CUDA_EXPERT_KERNEL=$ek FALSIFIER_BENCH_PROFILE=1 FALSIFIER_CUDA_KERNELS=$D FALSIFIER_BENCH_MODEL=$M FALSIFIER_BENCH_T=512 .gpu/lib-tests $B > $P/l4-$n-$ek.txt 2>&1
    echo "== [$v] experts $ek rc=$?"; show $P/l4-$n-$ek.txt
  done
done
FALSIFIER_CUDA_PLAIN_KERNEL=tall FALSIFIER_BENCH_PROFILE=1 FALSIFIER_BENCH_MODEL=$M FALSIFIER_BENCH_T=512 .gpu/lib-tests $B > $P/l4-plain-tall.txt 2>&1
echo "== plain tall"; grep -E "^bench T=512: untraced" $P/l4-plain-tall.txt | cut -c1-60; awk '/^bench T=512 untraced profile/{f=1;next} /^bench/{f=0} f' $P/l4-plain-tall.txt | grep -E "logits|q_proj|attn_out"
