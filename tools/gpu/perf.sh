#!/bin/bash
# Kernel work on the GPU host: the GPU tests (correctness of every kernel variant), then prefill
# timings with a per-launch profile on the tiny fixture and the 30B-A3B shape cut to $LAYERS
# layers (default 4; 48 is the whole model: ~4 min to generate there). Same .gpu/ setup as
# evidence.sh. Output: $OUT/perf/*.txt (and printed).
set -u
mkdir -p /work && [ -e /work/main ] || ln -sfn "$PWD" /work/main
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export FALSIFIER_COMMIT=$(cat .gpu/COMMIT)
F=.gpu/falsifier; P=$OUT/perf; mkdir -p $P
LAYERS=${LAYERS:-4}; TS=${TS:-32,512}; TESTS=${TESTS:-1}; VARIANTS=${VARIANTS:-}
{ echo "commit: $FALSIFIER_COMMIT"; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader; } | tee $P/card.txt
# registers and spills of the matmul kernels (nvcc builds the same source NVRTC compiles)
K=src/backend/cuda/kernels
cat $K/common.cuh $K/route.cuh $K/matmul.cu $K/ops.cu $K/attention.cu $K/moe.cu > /tmp/kernels.cu
nvcc -arch=sm_90 -std=c++17 -cubin -Xptxas -v /tmp/kernels.cu -o /tmp/kernels.cubin > $P/ptxas.txt 2>&1
echo "ptxas rc=$?"
grep -A3 -E "entry function '(matmul[vw]?_q4_k(_[0-9]+)?|matmul[vw]?_q6_k(_[0-9]+)?)'" $P/ptxas.txt | grep -oE "function '[a-z0-9_]+'|Used [0-9]+ registers|[0-9]+ bytes spill stores" | paste -sd' ' | sed "s/ function/\nfunction/g"; echo
if [ "$TESTS" = 1 ]; then
  .gpu/lib-tests --include-ignored --test-threads 1 backend::cuda::gpu_tests --skip bench_prefill > $P/gpu-tests.txt 2>&1
  echo "gpu tests rc=$? $(grep 'test result' $P/gpu-tests.txt)"; grep -E "FAILED|panicked" $P/gpu-tests.txt | head -20
fi
FALSIFIER_BENCH_PROFILE=1 FALSIFIER_BENCH_MODEL=fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf FALSIFIER_BENCH_T=8,32,512 \
  .gpu/lib-tests --include-ignored --nocapture --exact backend::cuda::gpu_tests::bench_prefill > $P/bench-tiny.txt 2>&1
echo "bench tiny rc=$?"; grep -A2 -E "^bench T=[0-9]+: untraced" $P/bench-tiny.txt
M=/tmp/a3b-l$LAYERS.gguf
[ -f $M ] || { /usr/bin/time -f "gen %e s" $F gen-model --preset qwen3-30b-a3b --quant q4_k_m --layers $LAYERS --seed 1 --out $M > $P/gen-l$LAYERS.txt 2>&1; echo "gen rc=$? $(tail -1 $P/gen-l$LAYERS.txt)"; }
FALSIFIER_BENCH_PROFILE=1 FALSIFIER_BENCH_MODEL=$M FALSIFIER_BENCH_T=$TS \
  .gpu/lib-tests --include-ignored --nocapture --exact backend::cuda::gpu_tests::bench_prefill > $P/bench-a3b-l$LAYERS.txt 2>&1
echo "bench a3b L=$LAYERS rc=$?"; grep -A2 -E "^bench(:| T=[0-9]+: untraced)" $P/bench-a3b-l$LAYERS.txt
for t in ${TS//,/ }; do
  echo "--- profile T=$t untraced (top 14)"; awk "/^bench T=$t untraced profile/{f=1;next} /^bench/{f=0} f" $P/bench-a3b-l$LAYERS.txt | head -15
done
# kernel variants: VARIANTS="MM_MIN_BLOCKS=1,MV_MIN_BLOCKS=2 ..." (defines prepended to matmul.cu)
n=0
for v in $VARIANTS; do
  n=$((n+1)); D=/tmp/var-$n; rm -rf $D; mkdir -p $D; cp $K/* $D/
  { for def in ${v//,/ }; do echo "#define ${def/=/ }"; done; cat $K/matmul.cu; } > $D/matmul.cu
  FALSIFIER_CUDA_KERNELS=$D FALSIFIER_BENCH_MODEL=$M FALSIFIER_BENCH_T=$TS \
    .gpu/lib-tests --include-ignored --nocapture --exact backend::cuda::gpu_tests::bench_prefill > $P/bench-variant-$n.txt 2>&1
  echo "variant $n ($v) rc=$?"; grep -A2 -E "^bench T=[0-9]+: untraced" $P/bench-variant-$n.txt
done
# the same bench with another build's test binary, on this machine (A/B of kernel changes)
if [ -x .gpu/base/lib-tests ]; then
  FALSIFIER_BENCH_MODEL=$M FALSIFIER_BENCH_T=$TS .gpu/base/lib-tests --include-ignored --nocapture --exact backend::cuda::gpu_tests::bench_prefill > $P/bench-base-l$LAYERS.txt 2>&1
  echo "base build rc=$?"; grep -A2 -E "^bench T=[0-9]+: untraced" $P/bench-base-l$LAYERS.txt
fi
# hardware counters of one expert matmul at the longest prompt (NCU=1; ncu works on the
# Firecracker hosts, with the clocks left alone)
if [ "${NCU:-0}" = 1 ]; then
  T1=${TS##*,}
  FALSIFIER_BENCH_MODEL=$M FALSIFIER_BENCH_T=$T1 timeout 240 ncu --clock-control none --kernel-name regex:'matmul_q4_k_(32|64)' --launch-skip 2 --launch-count 1 \
    --section SpeedOfLight --section Occupancy --section WarpStateStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
    .gpu/lib-tests --include-ignored --nocapture --exact backend::cuda::gpu_tests::bench_prefill > $P/ncu-t$T1.txt 2>&1
  echo "ncu rc=$?"; grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Issue Slots Busy|Stall|One or More Eligible|Shared Memory|L1/TEX Hit|FMA" $P/ncu-t$T1.txt | head -30
fi
