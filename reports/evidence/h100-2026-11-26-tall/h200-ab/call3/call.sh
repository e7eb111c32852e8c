#!/bin/bash
set -u
mkdir -p /work && [ -e /work/main ] || ln -sfn "$PWD" /work/main
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
export FALSIFIER_COMMIT=$(cat .gpu/COMMIT)
P=$OUT/perf; mkdir -p $P; K=src/backend/cuda/kernels; F=.gpu/falsifier
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $P/card.txt
# the 48-layer model generates in the background while the tests and 4-layer runs go on
( /usr/bin/time -f "gen %e s" $F gen-model --preset qwen3-30b-a3b --quant q4_k_m --layers 48 --seed 1 --out /tmp/a3b-l48.gguf > $P/gen-l48.txt 2>&1 ) &
GEN=$!
cat $K/common.cuh $K/matmul.cu $K/ops.cu $K/attention.cu $K/moe.cu > /tmp/kernels.cu
nvcc -arch=sm_90 -std=c++17 -cubin -Xptxas -v /tmp/kernels.cu -o /tmp/kernels.cubin > $P/ptxas.txt 2>&1; echo "ptxas rc=$?"
grep -A3 -E "entry function '(matmul[vw]?_q4_k(_[0-9]+)?|matmul[vw]?_q6_k(_[0-9]+)?)'" $P/ptxas.txt | grep -oE "function '[a-z0-9_]+'|Used [0-9]+ registers|[0-9]+ bytes spill stores" | paste -sd' ' | sed "s/ function/\nfunction/g"; echo
.gpu/lib-tests --include-ignored --test-threads 1 backend::cuda::gpu_tests --skip bench_prefill > $P/gpu-tests.txt 2>&1
echo "gpu tests rc=$? $(grep 'test result' $P/gpu-tests.txt)"; grep -E "FAILED|panicked" $P/gpu-tests.txt | head
M=/tmp/a3b-l4.gguf
$F gen-model --preset qwen3-30b-a3b --quant q4_k_m --layers 4 --seed 1 --out $M > /dev/null 2>&1; echo gen4 rc=$?
B="--include-ignored --nocapture --exact backend::cuda::gpu_tests::bench_prefill"
show() { grep -E "^bench T=512: untraced" $1; awk '/^bench T=512 untraced profile/{f=1;next} /^bench/{f=0} f' $1 | head -${2:-9}; }
FALSIFIER_BENCH_PROFILE=1 FALSIFIER_BENCH_MODEL=$M FALSIFIER_BENCH_T=512 .gpu/lib-tests $B > $P/l4-default.txt 2>&1
echo "== L4 default"; show $P/l4-default.txt 16
for ek in tiled64 wide64 tiled32; do
  FALSIFIER_CUDA_EXPERT_KERNEL=$ek FALSIFIER_BENCH_PROFILE=1 FALSIFIER_BENCH_MODEL=$M FALSIFIER_BENCH_T=512 .gpu/lib-tests $B > $P/l4-exp-$ek.txt 2>&1
  echo "== L4 experts $ek"; show $P/l4-exp-$ek.txt 6
done
n=0
for v in MW_MIN_WARPS=8 MW_MIN_WARPS=16; do
  n=$((n+1)); D=/tmp/var-$n; rm -rf $D; mkdir -p $D; cp $K/* $D/
  { for def in ${v//,/ }; do echo "#define ${def/=/ }"; done; cat $K/matmul.cu; } > $D/matmul.cu
  FALSIFIER_BENCH_PROFILE=1 FALSIFIER_CUDA_KERNELS=$D FALSIFIER_BENCH_MODEL=$M FALSIFIER_BENCH_T=512 .gpu/lib-tests $B > $P/l4-var-$n.txt 2>&1
  echo "== L4 variant $v rc=$?"; show $P/l4-var-$n.txt 8
done
wait $GEN; echo "gen48: $(tail -1 $P/gen-l48.txt)"
M=/tmp/a3b-l48.gguf
[ -f $M ] || exit 0
FALSIFIER_BENCH_PROFILE=1 FALSIFIER_BENCH_MODEL=$M FALSIFIER_BENCH_T=32,512 timeout 200 .gpu/lib-tests $B > $P/l48-default.txt 2>&1
echo "== L48 default rc=$?"; grep -A2 -E "^bench(:| T=[0-9]+: untraced)" $P/l48-default.txt; show $P/l48-default.txt 24
timeout 150 $F bench $M --backend cuda --tokens-count 32,512 --runs 5 > $P/l48-cli.txt 2>&1; echo "== cli rc=$?"; cat $P/l48-cli.txt | tail -12
