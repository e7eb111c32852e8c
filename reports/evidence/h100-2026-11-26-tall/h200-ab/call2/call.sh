#!/bin/bash
set -u
mkdir -p /work && [ -e /work/main ] || ln -sfn "$PWD" /work/main
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
P=$OUT/perf; mkdir -p $P; M=/tmp/a3b-l4.gguf; K=src/backend/cuda/kernels
nvidia-smi --query-gpu=name --format=csv,noheader
for t in wide_matmuls_cover_every_tile_position grouped_matmul_kernels_match_host device_decoders_match_gguf_py; do
  .gpu/lib-tests --include-ignored --exact backend::cuda::gpu_tests::$t > $P/t-$t.txt 2>&1; echo "$t rc=$?"; done
.gpu/falsifier gen-model --preset qwen3-30b-a3b --quant q4_k_m --layers 4 --seed 1 --out $M > /dev/null 2>&1; echo gen rc=$?
B="--include-ignored --nocapture --exact backend::cuda::gpu_tests::bench_prefill"
FALSIFIER_BENCH_PROFILE=1 FALSIFIER_BENCH_MODEL=$M FALSIFIER_BENCH_T=512 .gpu/base/lib-tests $B > $P/base.txt 2>&1
FALSIFIER_BENCH_PROFILE=1 FALSIFIER_BENCH_MODEL=$M FALSIFIER_BENCH_T=512 .gpu/lib-tests $B > $P/new.txt 2>&1
for f in base new; do echo "== $f"; grep -E "^bench T=512: untraced" $P/$f.txt; awk '/^bench T=512 untraced profile/{f=1;next} /^bench/{f=0} f' $P/$f.txt | head -12; done
n=0
for v in "MW_PREFETCH=0,MW_MIN_BLOCKS=3" "MW_PREFETCH=0,MW_MIN_BLOCKS=4" "MW_PREFETCH=0,MW_MIN_BLOCKS=2"; do
  n=$((n+1)); D=/tmp/var-$n; rm -rf $D; mkdir -p $D; cp $K/* $D/
  { for def in ${v//,/ }; do echo "#define ${def/=/ }"; done; cat $K/matmul.cu; } > $D/matmul.cu
  FALSIFIER_BENCH_PROFILE=1 FALSIFIER_CUDA_KERNELS=$D FALSIFIER_BENCH_MODEL=$M FALSIFIER_BENCH_T=512 .gpu/lib-tests $B > $P/var-$n.txt 2>&1
  echo "== variant $v rc=$?"; grep -E "^bench T=512: untraced" $P/var-$n.txt; awk '/^bench T=512 untraced profile/{f=1;next} /^bench/{f=0} f' $P/var-$n.txt | head -8
done
S="--section SpeedOfLight --section Occupancy --section WarpStateStats --section ComputeWorkloadAnalysis --section LaunchStats --section InstructionStats"
FALSIFIER_BENCH_MODEL=$M FALSIFIER_BENCH_T=512 timeout 200 ncu --clock-control none --kernel-name matmul_q4_k_64 --launch-skip 4 --launch-count 2 $S .gpu/lib-tests $B > $P/ncu-q4k.txt 2>&1; echo "ncu rc=$?"
FALSIFIER_BENCH_MODEL=$M FALSIFIER_BENCH_T=512 timeout 200 ncu --clock-control none --kernel-name matmul_q6_k_64 --launch-skip 4 --launch-count 1 $S .gpu/lib-tests $B > $P/ncu-q6k.txt 2>&1; echo "ncu rc=$?"
FALSIFIER_BENCH_MODEL=$M FALSIFIER_BENCH_T=512 timeout 200 ncu --clock-control none --kernel-name matmul_q6_k_64 --launch-skip 4 --launch-count 1 $S .gpu/base/lib-tests $B > $P/ncu-q6k-base.txt 2>&1; echo "ncu rc=$?"
for f in ncu-q4k ncu-q6k ncu-q6k-base; do echo "== $f"; grep -E "matmul_q|Grid Size|Duration|Compute \(SM\) Throughput|Achieved Occupancy|Registers Per|Issue Slots Busy|No Eligible|Stall|Warp Cycles Per Issued|Executed Ipc A|Theoretical Occ|Block Limit Reg|FMA|LSU|ALU" $P/$f.txt | head -40; done
