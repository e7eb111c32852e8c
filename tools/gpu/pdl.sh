#!/bin/bash
# GPU run for programmatic dependent launch (issue J's decode target): the kernel GPU tests with
# PDL on (the default on sm_90), `bench --chunk 8 --decode 16` on the tiny fixture and the
# 30B-A3B shape cut to $LAYERS layers (default 8) with PDL on and off (FALSIFIER_CUDA_PDL=0),
# direct launches, nsys per-kernel times when nsys is present, and compute-sanitizer memcheck
# and racecheck on a Q4_K_M MoE. Writes $OUT/pdl.tgz. Binaries from tools/gpu/pack.sh in .gpu/.
set -u
mkdir -p /work && for w in main wt-gpu; do [ -e /work/$w ] || ln -sfn "$PWD" /work/$w; done
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export FALSIFIER_COMMIT=$(cat .gpu/COMMIT)
F=.gpu/falsifier; E=/tmp/pdl; rm -rf $E; mkdir -p $E
LAYERS=${LAYERS:-8}; M=/tmp/a3b-l$LAYERS.gguf
snap() { (cd /tmp && tar czf $OUT/pdl.tgz pdl); }
{ echo "commit: $(cat .gpu/COMMIT)"; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader; echo "nsys: $(command -v nsys) ncu: $(command -v ncu)"; } | tee $E/card.txt
( /usr/bin/time -f "gen %e s" $F gen-model --preset qwen3-30b-a3b --quant q4_k_m --layers $LAYERS --seed 1 --out $M > $E/gen.txt 2>&1 ) &
GEN=$!
for t in ${TESTS:-merged_launches_equal_separate_ones cuda_schedules_match_cpu_full_forward traced_equals_untraced_and_runs_repeat_bitwise cuda_matches_cpu_reference_clean_and_faulted planted_faults_first_diverge_at_their_stage wide_matmuls_cover_every_tile_position grouped_matmul_kernels_match_host}; do
  timeout 200 .gpu/lib-tests --include-ignored --test-threads 1 --exact backend::cuda::gpu_tests::$t > $E/test-$t.txt 2>&1
  echo "test $t rc=$? $(grep 'test result' $E/test-$t.txt | sed 's/; 0 measured.*finished/ in/')"; grep -E "panicked" $E/test-$t.txt | head -3
done
snap
B="bench --backend cuda --tokens-count 32 --chunk 8 --decode 16 --runs ${RUNS:-5}"
per() { grep -o 'per token untraced [0-9.]* ms, traced (every stage) [0-9.]* ms' $1; }
T=fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf
$F $B $T > $E/tiny-pdl.txt 2>&1; echo "tiny pdl: $(per $E/tiny-pdl.txt)"
FALSIFIER_CUDA_PDL=0 $F $B $T > $E/tiny-nopdl.txt 2>&1; echo "tiny no pdl: $(per $E/tiny-nopdl.txt)"
TM=/tmp/tiny-moe-q4km.gguf
$F gen-model --preset tiny-moe --quant q4_k_m --seed 3 --hidden 256 --heads 4 --kv-heads 2 --head-dim 64 --expert-ffn 256 --vocab 512 --layers 3 --out $TM > $E/gen-tiny.txt 2>&1
for tool in memcheck racecheck; do
  timeout 60 compute-sanitizer --tool $tool $F trace $TM --backend cuda --tokens 81,119,101,110,51,77,111,69,5,9,12 --chunk 3 --decode 4 --stages logits --out /tmp/san.safetensors > $E/sanitizer-$tool-graph.txt 2>&1
  echo "sanitizer $tool tiny-moe q4_k_m graph rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $E/sanitizer-$tool-graph.txt)"
done
wait $GEN; echo "gen rc=$? $(tail -1 $E/gen.txt)"
$F $B $M > $E/a3b-pdl.txt 2>&1; echo "a3b L=$LAYERS pdl: $(per $E/a3b-pdl.txt) $(grep -o 'bandwidth [0-9.]* ms' $E/a3b-pdl.txt) $(grep -o 'floor = [0-9.]*x' $E/a3b-pdl.txt)"
FALSIFIER_CUDA_PDL=0 $F $B $M > $E/a3b-nopdl.txt 2>&1; echo "a3b L=$LAYERS no pdl: $(per $E/a3b-nopdl.txt)"
FALSIFIER_CUDA_GRAPHS=0 $F $B $M > $E/a3b-pdl-direct.txt 2>&1; echo "a3b L=$LAYERS pdl, direct launches: $(per $E/a3b-pdl-direct.txt)"
FALSIFIER_CUDA_FUSED=0 $F $B $M > $E/a3b-separate.txt 2>&1; echo "a3b L=$LAYERS pdl, merging off: $(per $E/a3b-separate.txt)"
snap
P32=151644,872,198,7985,264,3974,3378,304,13027,151645,9,17,300,12,77,1024,5,31,8191,64,3,999,22,511,7,2000,41,6,1500,88,13,700
if command -v nsys > /dev/null; then
  for v in 1 0; do
    FALSIFIER_CUDA_PDL=$v nsys profile --cuda-graph-trace=node -o /tmp/nsys-$v --force-overwrite true $F trace $M --backend cuda --tokens $P32 --chunk 8 --decode 16 --stages logits --out /tmp/n.safetensors > $E/nsys-$v-run.txt 2>&1
    nsys stats --report cuda_gpu_kern_sum --format csv /tmp/nsys-$v.nsys-rep > $E/nsys-pdl$v.csv 2>&1
    echo "--- nsys pdl=$v (top 16: total ns, instances, avg ns, name)"; grep -E '^[0-9.]+,' $E/nsys-pdl$v.csv | awk -F, '{printf "%12s %6s %10s %s\n", $2, $3, $4, $9}' | head -16
  done
fi
snap
