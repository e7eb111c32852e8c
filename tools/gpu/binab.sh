#!/bin/bash
# A/B of two builds' decode steps on the GPU host, for changes that touch the host's launches
# (kernel-only changes: tools/gpu/decode.sh). New binaries in .gpu/ (tools/gpu/pack.sh), the
# base build's falsifier in .gpu/base/falsifier (either may be
# sent as NAME.xz: unpacked here). Runs the kernel GPU tests with the new
# binaries, compute-sanitizer memcheck and racecheck on a Q4_K_M MoE (f32 and f16 caches, the
# graph path), then `bench --chunk 8 --decode 16` of the 30B-A3B shape cut to $LAYERS layers
# (default 8), base and new alternating $ROUNDS times (default 2), and with NCU=1 the decode
# kernels' times in place (Nsight Compute, caches not flushed between kernels, so each kernel
# finds L2 as the one before left it). Writes $OUT/binab.tgz.
set -u
. tools/gpu/setup.sh
F=.gpu/falsifier; FB=.gpu/base/falsifier; E=/tmp/binab; rm -rf $E; mkdir -p $E
LAYERS=${LAYERS:-8}; M=/tmp/a3b-l$LAYERS.gguf
snap() { (cd /tmp && tar czf $OUT/binab.tgz binab); }
{ echo "new: $(cat .gpu/COMMIT) base: $(cat .gpu/base/COMMIT 2>/dev/null)"; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader; } | tee $E/card.txt
( /usr/bin/time -f "gen %e s" $F gen-model --preset qwen3-30b-a3b --quant q4_k_m --layers $LAYERS --seed 1 --out $M > $E/gen.txt 2>&1 ) &
GEN=$!
gpu_tests merged_launches_equal_separate_ones cuda_schedules_match_cpu_full_forward traced_equals_untraced_and_runs_repeat_bitwise cuda_matches_cpu_reference_clean_and_faulted planted_faults_first_diverge_at_their_stage
snap
gen_tiny_moe
for tool in memcheck racecheck; do
  for kv in f32 f16; do
    timeout 60 compute-sanitizer --tool $tool $F trace $TM --backend cuda --tokens $TOK --chunk 3 --decode 4 --kv-cache $kv --stages logits --out /tmp/san.safetensors > $E/sanitizer-$tool-$kv-graph.txt 2>&1
    echo "sanitizer $tool kv $kv graph rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $E/sanitizer-$tool-$kv-graph.txt)"
  done
  timeout 60 compute-sanitizer --tool $tool $F trace $TM --backend cuda --tokens $TOK --chunk 3 --decode 4 --out /tmp/san.safetensors > $E/sanitizer-$tool-traced.txt 2>&1
  echo "sanitizer $tool traced rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $E/sanitizer-$tool-traced.txt)"
done
snap
wait $GEN; echo "gen rc=$? $(tail -1 $E/gen.txt)"
B="bench --backend cuda --tokens-count 32 --chunk 8 --decode 16 --runs ${RUNS:-7}"
# $VARIANTS: base, new, or new:VAR=VALUE (the new binary under that environment setting)
for r in $(seq ${ROUNDS:-2}); do
  for v in ${VARIANTS:-base new}; do
    bin=$F; [ "$v" = base ] && bin=$FB
    env=""; case $v in new:*) env=${v#new:};; esac
    tag=$(echo "$v" | tr ':=/.' '----')
    env $env $bin $B $M > $E/a3b-$tag-$r.txt 2>&1; echo "a3b L=$LAYERS $v $r: $(per $E/a3b-$tag-$r.txt)"
  done
done
snap
if [ "${NCU:-0}" = 1 ]; then
  P32=151644,872,198,7985,264,3974,3378,304,13027,151645,9,17,300,12,77,1024,5,31,8191,64,3,999,22,511,7,2000,41,6,1500,88,13,700
  FALSIFIER_CUDA_GRAPHS=0 timeout 240 ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum,lts__t_sector_hit_rate.pct \
    --launch-skip ${SKIP:-400} --launch-count ${COUNT:-200} --print-summary per-kernel $F trace $M --backend cuda --tokens $P32 --chunk 8 --decode 16 --stages logits --out /tmp/n.safetensors > $E/ncu-warm.txt 2>&1
  echo "ncu (caches kept) rc=$?"; grep -E "^  [a-z_0-9]+|gpu__time_duration|dram__bytes_read|lts__t_sector_hit" $E/ncu-warm.txt | head -60
fi
snap
# NCU_DETAIL=1: Nsight Compute's detailed sections (stall reasons, issue slots, memory
# throughput) for two launches of each one-token decode kernel of the new binaries
if [ "${NCU_DETAIL:-0}" = 1 ]; then
  P32=151644,872,198,7985,264,3974,3378,304,13027,151645,9,17,300,12,77,1024,5,31,8191,64,3,999,22,511,7,2000,41,6,1500,88,13,700
  FALSIFIER_CUDA_GRAPHS=0 timeout 300 ncu --clock-control none --cache-control none --set detailed \
    --section WarpStateStats --section SchedulerStats --section Occupancy \
    -k "regex:^(gate_up_q4_k|down_combine_q[46]_k|matmulwn_q4_k|matmulwr_q4_k|attn_decode_qk|matmulwn_route_f32)$" \
    --launch-skip ${DSKIP:-24} --launch-count ${DCOUNT:-14} $F trace $M --backend cuda --tokens $P32 --chunk 8 --decode 16 --stages logits --out /tmp/n.safetensors > $E/ncu-detail.txt 2>&1
  echo "ncu detail rc=$? $(grep -c 'Section: Warp State' $E/ncu-detail.txt) kernels"
  snap
fi
