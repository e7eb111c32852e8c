#!/bin/bash
# Decode-step kernel work on the GPU host (issue J's speed target): A/B of the kernel sources in
# the working tree (FALSIFIER_CUDA_KERNELS) against the ones built into the .gpu binaries (or
# .gpu/kernels-base when present), on the tiny fixture and the 30B-A3B shape cut to $LAYERS
# layers (default 4): the kernel GPU tests with the new sources, `bench --chunk 8 --decode 16`
# both ways ($ROUNDS alternations), with PROFILE=1 a per-kernel profile (nsys when present,
# else the event-timed one), with NCU=1 each decode kernel's duration per variant, and with
# NCU_DETAIL="v ..." Nsight Compute's stall and throughput sections of one layer, with SAN=1
# C-KV-CACHE on CUDA and compute-sanitizer (setup.sh's checks). Writes
# $OUT/decode.tgz. Binaries from tools/gpu/pack.sh in .gpu/ (any commit whose kernel launches
# match the sources).
set -u
. tools/gpu/setup.sh
F=.gpu/falsifier; E=/tmp/decode; rm -rf $E; mkdir -p $E
LAYERS=${LAYERS:-4}; NEW=$PWD/src/backend/cuda/kernels
snap() { (cd /tmp && tar czf $OUT/decode.tgz decode); }
{ echo "binaries: $(cat .gpu/COMMIT)"; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader; } | tee $E/card.txt
M=/tmp/a3b-l$LAYERS.gguf
( /usr/bin/time -f "gen %e s" $F gen-model --preset qwen3-30b-a3b --quant q4_k_m --layers $LAYERS --seed 1 --out $M > $E/gen.txt 2>&1 ) &
GEN=$!
base() { variant base "$@"; }
new() { variant new "$@"; }
# $VARIANTS (default "base new"): names for setup.sh's variant()
VARIANTS=${VARIANTS:-base new}
# (empty: the working tree's sources with the decode kernels emptied, tools/gpu/empty-kernels.py)
case " $VARIANTS " in *" empty "*) python3 tools/gpu/empty-kernels.py $NEW .gpu/kernels-empty;; esac
new gpu_tests merged_launches_equal_separate_ones grouped_matmul_kernels_match_host cuda_schedules_match_cpu_full_forward traced_equals_untraced_and_runs_repeat_bitwise cuda_matches_cpu_reference_clean_and_faulted
snap
# SAN=1: C-KV-CACHE on CUDA and the sanitizers (setup.sh's checks) with the new sources
if [ "${SAN:-0}" = 1 ]; then gen_tiny_moe; new checks; snap; fi
B="bench --backend cuda --tokens-count 32 --chunk 8 --decode 16 --runs ${RUNS:-5}"
T=fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf
base $F $B $T > $E/tiny-base.txt 2>&1; echo "tiny base: $(per $E/tiny-base.txt)"
new $F $B $T > $E/tiny-new.txt 2>&1; echo "tiny new:  $(per $E/tiny-new.txt)"
wait $GEN; echo "gen rc=$? $(tail -1 $E/gen.txt)"
# the variants alternating $ROUNDS times (default 2): the card's state drifts between calls
for r in $(seq ${ROUNDS:-2}); do
  for v in $VARIANTS; do
    variant $v $F $B $M > $E/a3b-$v-$r.txt 2>&1; echo "a3b L=$LAYERS $v $r: $(per $E/a3b-$v-$r.txt) $(grep -o 'bandwidth [0-9.]* ms' $E/a3b-$v-$r.txt)"
  done
done
snap
P32=151644,872,198,7985,264,3974,3378,304,13027,151645,9,17,300,12,77,1024,5,31,8191,64,3,999,22,511,7,2000,41,6,1500,88,13,700
if [ "${PROFILE:-0}" = 1 ] && command -v nsys > /dev/null; then
  for v in base new; do
    $v nsys profile -o /tmp/nsys-$v --force-overwrite true $F trace $M --backend cuda --tokens $P32 --chunk 8 --decode 16 --stages logits --out /tmp/n.safetensors > $E/nsys-$v-run.txt 2>&1
    nsys stats --report cuda_gpu_kern_sum --format csv /tmp/nsys-$v.nsys-rep > $E/nsys-$v.csv 2>&1
    echo "--- nsys $v (top 16: total ns, instances, avg ns, name)"; grep -E '^[0-9.]+,' $E/nsys-$v.csv | awk -F, '{printf "%12s %6s %10s %s\n", $2, $3, $4, $9}' | head -16
  done
elif [ "${PROFILE:-0}" = 1 ]; then
  new env FALSIFIER_CUDA_PROFILE=1 $F trace $M --backend cuda --tokens $P32 --chunk 8 --decode 16 --stages logits --out /tmp/n.safetensors > $E/profile-new.txt 2>&1
  head -30 $E/profile-new.txt
fi
snap
# NCU=1: each one-token decode kernel's duration under each of $NCU_VARIANTS (default
# $VARIANTS) (Nsight Compute, $DCOUNT launches after the first $DSKIP of those kernels; caches
# not flushed, as in the real run)
if [ "${NCU:-0}" = 1 ]; then
  for v in ${NCU_VARIANTS:-$VARIANTS}; do
    variant $v timeout 150 ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum \
      -k "regex:^(gate_up_q4_k|down_combine_q[46]_k|matmulwn_q[46]_k|matmulwr_q4_k|attn_decode_qk|matmulwn_route_f32)$" \
      --launch-skip ${DSKIP:-48} --launch-count ${DCOUNT:-96} --csv --page raw \
      $F trace $M --backend cuda --tokens $P32 --chunk 8 --decode 16 --stages logits --out /tmp/n.safetensors > $E/ncu-$v.csv 2>$E/ncu-$v.err
    echo "--- ncu $v (kernel: launches, mean us)" | tee $E/ncu-$v.txt
    python3 - $E/ncu-$v.csv <<'PY' | tee -a $E/ncu-$v.txt
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 5]
h = rows[0]; k = h.index("Kernel Name"); d = h.index("gpu__time_duration.sum")
to_us = {"ns": 1e-3, "us": 1.0, "ms": 1e3}[rows[1][d][:2]]  # the units row ("ns" or "nsecond")
t = collections.defaultdict(list)
for r in rows[2:]:
    try: t[r[k]].append(float(r[d].replace(",", "")))
    except ValueError: pass
for name, v in sorted(t.items()):
    us = [x * to_us for x in v]
    print(f"  {name:24} {len(v):4} {sum(us) / len(us):7.2f}")
PY
    rm -f $E/ncu-$v.csv  # (the summary above is what comes back)
  done
fi
snap
# NCU_DETAIL="v1 v2": for each named variant, Nsight Compute's throughput, occupancy, scheduler
# and warp-stall sections of one layer's decode kernels (the first 7 launches after $DSKIP):
# whether a kernel waits on memory, on barriers or on its own instructions
for v in ${NCU_DETAIL:-}; do
  variant $v timeout 200 ncu --clock-control none --cache-control none \
    --section SpeedOfLight --section Occupancy --section SchedulerStats --section WarpStateStats \
    --section MemoryWorkloadAnalysis --section LaunchStats \
    -k "regex:^(gate_up_q4_k|down_combine_q[46]_k|matmulwn_q[46]_k|matmulwr_q4_k|attn_decode_qk|matmulwn_route_f32)$" \
    --launch-skip ${DSKIP:-48} --launch-count 7 --page details \
    $F trace $M --backend cuda --tokens $P32 --chunk 8 --decode 16 --stages logits --out /tmp/n.safetensors > $E/ncu-detail-$v.txt 2>&1
  echo "ncu detail $v rc=$? $(grep -c 'Section: Warp State' $E/ncu-detail-$v.txt) kernels"
done
snap
