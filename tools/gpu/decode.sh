#!/bin/bash
# Decode-step kernel work on the GPU host (issue J's speed target): A/B of the kernel sources in
# the working tree (FALSIFIER_CUDA_KERNELS) against the ones built into the .gpu binaries (or
# .gpu/kernels-base when present), on the tiny fixture and the 30B-A3B shape cut to $LAYERS
# layers (default 4): the kernel GPU tests with the new sources, `bench --chunk 8 --decode 16`
# both ways, a per-kernel profile (nsys when present, else the event-timed one) and, with NCU=1,
# hardware counters of the decode matmuls. Writes $OUT/decode.tgz. Binaries from
# tools/gpu/pack.sh in .gpu/ (any commit whose kernel launches match the sources).
set -u
mkdir -p /work && for w in main wt-gpu; do [ -e /work/$w ] || ln -sfn "$PWD" /work/$w; done
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export FALSIFIER_COMMIT=$(cat .gpu/COMMIT)
F=.gpu/falsifier; E=/tmp/decode; rm -rf $E; mkdir -p $E
LAYERS=${LAYERS:-4}; NEW=$PWD/src/backend/cuda/kernels
snap() { (cd /tmp && tar czf $OUT/decode.tgz decode); }
{ echo "binaries: $(cat .gpu/COMMIT)"; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader; } | tee $E/card.txt
M=/tmp/a3b-l$LAYERS.gguf
( /usr/bin/time -f "gen %e s" $F gen-model --preset qwen3-30b-a3b --quant q4_k_m --layers $LAYERS --seed 1 --out $M > $E/gen.txt 2>&1 ) &
GEN=$!
base() { if [ -d .gpu/kernels-base ]; then FALSIFIER_CUDA_KERNELS=$PWD/.gpu/kernels-base "$@"; else "$@"; fi; }
new() { FALSIFIER_CUDA_KERNELS=$NEW "$@"; }
for t in ${TESTS:-wide_matmuls_cover_every_tile_position grouped_matmul_kernels_match_host device_decoders_match_gguf_py cuda_schedules_match_cpu_full_forward traced_equals_untraced_and_runs_repeat_bitwise cuda_matches_cpu_reference_clean_and_faulted}; do
  new timeout 300 .gpu/lib-tests --include-ignored --test-threads 1 --exact backend::cuda::gpu_tests::$t > $E/test-$t.txt 2>&1
  echo "test $t rc=$? $(grep 'test result' $E/test-$t.txt)"; grep -E "panicked|assert" $E/test-$t.txt | head -3
done
snap
B="bench --backend cuda --tokens-count 32 --chunk 8 --decode 16 --runs ${RUNS:-5}"
T=fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf
base $F $B $T > $E/tiny-base.txt 2>&1; echo "tiny base: $(grep -o 'per token untraced [0-9.]* ms, traced (every stage) [0-9.]* ms' $E/tiny-base.txt)"
new $F $B $T > $E/tiny-new.txt 2>&1; echo "tiny new:  $(grep -o 'per token untraced [0-9.]* ms, traced (every stage) [0-9.]* ms' $E/tiny-new.txt)"
wait $GEN; echo "gen rc=$? $(tail -1 $E/gen.txt)"
base $F $B $M > $E/a3b-base.txt 2>&1; echo "a3b L=$LAYERS base: $(grep -o 'per token untraced [0-9.]* ms, traced (every stage) [0-9.]* ms' $E/a3b-base.txt) $(grep -o 'bandwidth [0-9.]* ms' $E/a3b-base.txt)"
new $F $B $M > $E/a3b-new.txt 2>&1; echo "a3b L=$LAYERS new:  $(grep -o 'per token untraced [0-9.]* ms, traced (every stage) [0-9.]* ms' $E/a3b-new.txt)"
snap
P32=151644,872,198,7985,264,3974,3378,304,13027,151645,9,17,300,12,77,1024,5,31,8191,64,3,999,22,511,7,2000,41,6,1500,88,13,700
if command -v nsys > /dev/null; then
  for v in base new; do
    $v nsys profile -o /tmp/nsys-$v --force-overwrite true $F trace $M --backend cuda --tokens $P32 --chunk 8 --decode 16 --stages logits --out /tmp/n.safetensors > $E/nsys-$v-run.txt 2>&1
    nsys stats --report cuda_gpu_kern_sum --format csv /tmp/nsys-$v.nsys-rep > $E/nsys-$v.csv 2>&1
    echo "--- nsys $v (top 16: total ns, instances, avg ns, name)"; grep -E '^[0-9.]+,' $E/nsys-$v.csv | awk -F, '{printf "%12s %6s %10s %s\n", $2, $3, $4, $9}' | head -16
  done
else
  new env FALSIFIER_CUDA_PROFILE=1 $F trace $M --backend cuda --tokens $P32 --chunk 8 --decode 16 --stages logits --out /tmp/n.safetensors > $E/profile-new.txt 2>&1
  head -30 $E/profile-new.txt
fi
snap
if [ "${NCU:-0}" = 1 ]; then
  new timeout 200 ncu --clock-control none --kernel-name regex:'matmulw_q4_k' --launch-skip 40 --launch-count 3 \
    --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats \
    $F trace $M --backend cuda --tokens $P32 --chunk 8 --decode 16 --stages logits --out /tmp/n.safetensors > $E/ncu.txt 2>&1
  echo "ncu rc=$?"; grep -E "Duration|Memory Throughput|DRAM Throughput|Achieved Occupancy|Registers Per|Grid Size|Stall Long|Warp Cycles Per Issued" $E/ncu.txt | head -30
fi
snap
