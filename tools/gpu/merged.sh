#!/bin/bash
# GPU run for the decode-step work of issue J (merged one-token launches, matmulw streaming
# 16-byte pieces, programmatic dependent launch, norms folded into the matvecs): the GPU tests that prove the kernels (merged = separate bit for bit, every
# matmul kernel against the host, schedules against the CPU full forward, faults); decode
# timings of the 30B-A3B shape ($LAYERS layers, default 48) with merging on and off
# (FALSIFIER_CUDA_FUSED=0), launched one by one, without programmatic dependent launch
# (FALSIFIER_CUDA_PDL=0), and an event-timed per-kernel profile; that shape under CUDA
# --chunk 8 --decode 16 against the CPU full forward; C-KV-CACHE with the candidate on CUDA;
# compute-sanitizer on a Q4_K_M MoE (the merged kernels' types) under a schedule and on the
# graph path. Writes
# $OUT/merged.tgz. Binaries from tools/gpu/pack.sh in .gpu/. WAVE_AB=1: also FALSIFIER_CUDA_WAVE=0;
# NCU_DETAIL=1: stall reasons of the decode kernels (Nsight Compute). EMPTY=1: the launch floor
# (the decode kernels emptied, tools/gpu/empty-kernels.py). TEST_VARIANT=NAME: the tests, checks,
# the first bench and the CPU comparison under setup.sh's variant NAME (e.g. new: the working
# tree's kernel sources); VARIANTS="a b ...": the 30B-A3B bench under each, $ROUNDS times
# alternating (default 1). TIMELINE="v ...": where the step's time goes (tools/gpu/timeline.py)
# under each variant v (basebuild: .gpu/base/falsifier). BASE_ROUNDS=n: the base build and this
# one alternating n times. The variants onefma and loads (tools/gpu/free-dots.py: the Q4_K/Q6_K
# dots cut to one FMA a weight, or to their loads; diagnostics) are made from the tree's kernel
# sources when .gpu/ does not bring them.
set -u
. tools/gpu/setup.sh
F=.gpu/falsifier; E=/tmp/merged; rm -rf $E; mkdir -p $E
LAYERS=${LAYERS:-48}; M=/tmp/a3b.gguf
snap() { (cd /tmp && tar czf $OUT/merged.tgz merged); }
tv() { if [ -n "${TEST_VARIANT:-}" ]; then variant $TEST_VARIANT "$@"; else "$@"; fi; }
[ -z "${TEST_VARIANT:-}" ] || echo "tests, checks, first bench and CPU comparison: variant $TEST_VARIANT" | tee $E/variant.txt
{ echo "commit: $(cat .gpu/COMMIT)"; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader; } | tee $E/card.txt
P32=151644,872,198,7985,264,3974,3378,304,13027,151645,9,17,300,12,77,1024,5,31,8191,64,3,999,22,511,7,2000,41,6,1500,88,13,700
( /usr/bin/time -f "gen %e s" $F gen-model --preset qwen3-30b-a3b --quant q4_k_m --layers $LAYERS --seed 1 --out $M > $E/gen.txt 2>&1 ) &
GEN=$!
tv gpu_tests merged_launches_equal_separate_ones router_cluster_handoff_equals_last_block_one wide_matmuls_cover_every_tile_position grouped_matmul_kernels_match_host cuda_schedules_match_cpu_full_forward traced_equals_untraced_and_runs_repeat_bitwise cuda_matches_cpu_reference_clean_and_faulted planted_faults_first_diverge_at_their_stage
snap
gen_tiny_moe
# LEAN=1: the checks while the model generates (no tiny benches then: the generation holds the
# host's cores), and of the 30B-A3B benches only this build, the base build and the other kernels
if [ "${LEAN:-0}" = 1 ]; then tv checks; snap; fi
B="bench --backend cuda --tokens-count 32 --chunk 8 --decode 16 --runs 5"
if [ "${LEAN:-0}" != 1 ]; then
  $F $B fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf > $E/tiny-bench.txt 2>&1; echo "tiny merged: $(per $E/tiny-bench.txt)"
  $F $B $TM > $E/tinyq4-bench.txt 2>&1; echo "tiny q4_k_m merged: $(per $E/tinyq4-bench.txt)"
  FALSIFIER_CUDA_FUSED=0 $F $B $TM > $E/tinyq4-bench-separate.txt 2>&1; echo "tiny q4_k_m separate: $(per $E/tinyq4-bench-separate.txt)"
fi
wait $GEN; echo "gen rc=$? $(tail -1 $E/gen.txt)"
if [ -f $M ]; then
  tv $F $B $M > $E/a3b-bench.txt 2>&1; echo "a3b merged: $(per $E/a3b-bench.txt) $(grep -o 'bandwidth [0-9.]* ms' $E/a3b-bench.txt) $(grep -o 'floor = [0-9.]*x' $E/a3b-bench.txt)"
  snap
  for v in ${VARIANTS:-} ${TIMELINE:-}; do
    case $v in onefma|loads) [ -d .gpu/kernels-$v ] || python3 tools/gpu/free-dots.py $v src/backend/cuda/kernels .gpu/kernels-$v;; esac
  done
  for r in $(seq ${ROUNDS:-1}); do
    for v in ${VARIANTS:-}; do
      variant $v $F $B $M > $E/a3b-bench-$v-$r.txt 2>&1; echo "a3b variant $v $r: $(per $E/a3b-bench-$v-$r.txt)"
    done
  done
  snap
  # the base build (.gpu/base/falsifier, when sent) on the same model, then this one again
  # (BASE_ROUNDS=n: base, this build, n times alternating)
  if [ -x .gpu/base/falsifier ]; then
    for r in $(seq ${BASE_ROUNDS:-1}); do
      .gpu/base/falsifier $B $M > $E/a3b-bench-base-$r.txt 2>&1; echo "a3b base $(cat .gpu/base/COMMIT 2>/dev/null) $r: $(per $E/a3b-bench-base-$r.txt)"
      if [ "${LEAN:-0}" != 1 ] || [ "${BASE_ROUNDS:-1}" -gt 1 ]; then
        $F $B $M > $E/a3b-bench-again-$r.txt 2>&1; echo "a3b merged again $r: $(per $E/a3b-bench-again-$r.txt)"
      fi
    done
  fi
  # launches that stride (matmulwn) with a block per row group instead, then this build again
  if [ "${WAVE_AB:-0}" = 1 ]; then
    FALSIFIER_CUDA_WAVE=0 $F $B $M > $E/a3b-bench-nowave.txt 2>&1; echo "a3b a block per row group (FALSIFIER_CUDA_WAVE=0): $(per $E/a3b-bench-nowave.txt)"
    $F $B $M > $E/a3b-bench-4.txt 2>&1; echo "a3b merged again: $(per $E/a3b-bench-4.txt)"
  fi
  # kernel sources of another commit (.gpu/kernels-prev, when sent) with these binaries
  if [ -d .gpu/kernels-prev ]; then
    variant prev $F $B $M > $E/a3b-bench-kernels-prev.txt 2>&1; echo "a3b kernels $(cat .gpu/kernels-prev/COMMIT 2>/dev/null): $(per $E/a3b-bench-kernels-prev.txt)"
    [ "${LEAN:-0}" = 1 ] || { $F $B $M > $E/a3b-bench-3.txt 2>&1; echo "a3b merged third: $(per $E/a3b-bench-3.txt)"; }
  fi
  # EMPTY=1: the same step with every one-token decode kernel emptied (tools/gpu/empty-kernels.py):
  # what launching alone costs
  if [ "${EMPTY:-0}" = 1 ]; then
    python3 tools/gpu/empty-kernels.py src/backend/cuda/kernels /tmp/kernels-empty
    FALSIFIER_CUDA_KERNELS=/tmp/kernels-empty $F $B $M > $E/a3b-bench-empty.txt 2>&1; echo "a3b decode kernels emptied (launch floor): $(per $E/a3b-bench-empty.txt)"
  fi
  if [ "${LEAN:-0}" != 1 ]; then
    FALSIFIER_CUDA_FUSED=0 $F $B $M > $E/a3b-bench-separate.txt 2>&1; echo "a3b separate: $(per $E/a3b-bench-separate.txt)"
    FALSIFIER_CUDA_GRAPHS=0 $F $B $M > $E/a3b-bench-direct.txt 2>&1; echo "a3b merged, direct launches: $(per $E/a3b-bench-direct.txt)"
    FALSIFIER_CUDA_PDL=0 $F $B $M > $E/a3b-bench-nopdl.txt 2>&1; echo "a3b merged, no programmatic dependent launch: $(per $E/a3b-bench-nopdl.txt)"
    FALSIFIER_CUDA_PROFILE=1 $F trace $M --backend cuda --tokens $P32 --chunk 8 --decode 16 --stages logits --out /tmp/p.safetensors > $E/a3b-profile.txt 2>&1
    head -24 $E/a3b-profile.txt
  fi
  snap
  # TIMELINE="v ...": setup.sh's timeline_notes under each kernel-source variant v
  # ("basebuild": the base build's binary)
  for v in ${TIMELINE:-}; do
    if [ "$v" = basebuild ]; then timeline_notes $v .gpu/base/falsifier; else timeline_notes $v variant $v $F; fi
    snap
  done
  /usr/bin/time -f "cpu trace %e s" $F trace $M --backend cpu --tokens $P32 --out /tmp/a3b-cpu.safetensors > $E/a3b-cpu.txt 2>&1
  tv /usr/bin/time -f "cuda trace %e s" $F trace $M --backend cuda --tokens $P32 --chunk 8 --decode 16 --out /tmp/a3b-cuda.safetensors > $E/a3b-cuda.txt 2>&1
  $F diff /tmp/a3b-cpu.safetensors /tmp/a3b-cuda.safetensors --report-dir $E/a3b-diff > $E/a3b-diff.txt 2>&1
  echo "a3b diff rc=$? $(grep -iE 'verdict|summary|holds|match' $E/a3b-diff.txt | head -3)"
  # NCU_DETAIL=1: Nsight Compute's detailed sections (stall reasons, issue slots, memory
  # throughput) for two launches of each one-token decode kernel
  if [ "${NCU_DETAIL:-0}" = 1 ]; then
    FALSIFIER_CUDA_GRAPHS=0 timeout 150 ncu --clock-control none --cache-control none --set detailed \
      --section WarpStateStats --section SchedulerStats --section Occupancy \
      -k "regex:^(gate_up_q4_k|down_combine_q[46]_k|matmulwn_q4_k|matmulwr_q4_k|attn_decode_qk|matmulwn_route_f32)$" \
      --launch-skip ${DSKIP:-24} --launch-count ${DCOUNT:-14} $F trace $M --backend cuda --tokens $P32 --chunk 8 --decode 16 --stages logits --out /tmp/n.safetensors > $E/ncu-detail.txt 2>&1
    echo "ncu detail rc=$? $(grep -c 'Section: Warp State' $E/ncu-detail.txt) kernels"
    snap
  fi
fi
snap
if [ "${LEAN:-0}" != 1 ]; then tv checks; fi
snap
