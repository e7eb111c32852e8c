#!/bin/bash
# Per-kernel GPU time of decode steps, measured by Nsight Compute (each kernel replayed alone, so
# no launch gaps and no overlap): the 30B-A3B shape cut to $LAYERS layers (default 8), launched
# one by one (FALSIFIER_CUDA_GRAPHS=0), kernels $SKIP .. $SKIP + $COUNT of a
# `trace --chunk 8 --decode 16` (past the prefill chunks: decode steps only), summed per kernel;
# then the full sections of the kernels named in $DETAIL. Writes $OUT/ncu.tgz.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
F=.gpu/falsifier; E=/tmp/ncu; rm -rf $E; mkdir -p $E
LAYERS=${LAYERS:-8}; M=/tmp/a3b-l$LAYERS.gguf
snap() { (cd /tmp && tar czf $OUT/ncu.tgz ncu); }
[ -f $M ] || $F gen-model --preset qwen3-30b-a3b --quant q4_k_m --layers $LAYERS --seed 1 --out $M > $E/gen.txt 2>&1
P32=151644,872,198,7985,264,3974,3378,304,13027,151645,9,17,300,12,77,1024,5,31,8191,64,3,999,22,511,7,2000,41,6,1500,88,13,700
R="trace $M --backend cuda --tokens $P32 --chunk 8 --decode 16 --stages logits --out /tmp/n.safetensors"
FALSIFIER_CUDA_GRAPHS=0 timeout 300 ncu --clock-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum,sm__warps_active.avg.pct_of_peak_sustained_active \
  --launch-skip ${SKIP:-600} --launch-count ${COUNT:-400} --print-summary per-kernel $F $R > $E/summary.txt 2>&1
echo "summary rc=$?"; grep -E "^  [a-z_0-9]+|gpu__time_duration|dram__bytes_read" $E/summary.txt | head -90
snap
for k in ${DETAIL:-moe_route1 gate_up_q4_k down_combine_q6_k matmulw_q4_k}; do
  FALSIFIER_CUDA_GRAPHS=0 timeout 120 ncu --clock-control none --kernel-name $k --launch-skip 20 --launch-count 1 \
    --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats --section SchedulerStats --section MemoryWorkloadAnalysis \
    $F $R > $E/detail-$k.txt 2>&1
  echo "--- $k rc=$?"; grep -E "Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Grid Size|Block Size|Stall|Warp Cycles Per Issued|Issued Warp|No Eligible|Theoretical Occ" $E/detail-$k.txt | head -24
done
snap
