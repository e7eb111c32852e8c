#!/bin/bash
# GPU run for KV-cache schedules (issue J), on the GPU host: the schedule GPU tests and the
# attention kernel tests, C-KV-CACHE with every trial's candidate on CUDA, the sanitizers on
# scheduled runs, a per-kernel profile of decode steps, and the 30B-A3B shape (LAYERS layers,
# default 4) traced under --chunk 8 --decode 16 against the CPU full forward. Writes
# $OUT/kv.tgz. Binaries from tools/gpu/pack.sh in .gpu/.
set -u
# test binaries find fixtures under the path they were built in (/work/main or a worktree)
mkdir -p /work && for w in main wt-gpu; do [ -e /work/$w ] || ln -sfn "$PWD" /work/$w; done
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export FALSIFIER_COMMIT=$(cat .gpu/COMMIT)
F=.gpu/falsifier; E=/tmp/kv; rm -rf $E; mkdir -p $E
LAYERS=${LAYERS:-4}
{ echo "commit: $(cat .gpu/COMMIT)"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } | tee $E/card.txt
snap() { (cd /tmp && tar czf $OUT/kv.tgz kv); }
P32=151644,872,198,7985,264,3974,3378,304,13027,151645,9,17,300,12,77,1024,5,31,8191,64,3,999,22,511,7,2000,41,6,1500,88,13,700
# the 30B-A3B shape generated first, in the background, while the small runs use the card
( /usr/bin/time -f "gen %e s" $F gen-model --preset qwen3-30b-a3b --quant q4_k_m --layers $LAYERS --seed 1 --out /tmp/a3b.gguf > $E/gen.txt 2>&1 ) &
GEN=$!
# 1. GPU tests: schedules, attention kernels, and the earlier forward tests (no regressions)
for t in cuda_schedules_match_cpu_full_forward tiled_attention_matches_per_query_kernels blocked_attention_equals_whole blocked_attention_forward_equals_whole traced_equals_untraced_and_runs_repeat_bitwise golden_sets_match_per_stage teacher_forcing_replays_each_layer_from_the_reference planted_faults_first_diverge_at_their_stage ${EXTRA_TESTS:-}; do
  timeout 300 .gpu/lib-tests --include-ignored --test-threads 1 --exact backend::cuda::gpu_tests::$t > $E/test-$t.txt 2>&1
  echo "test $t rc=$? $(grep 'test result' $E/test-$t.txt)"
done
snap
# 2. C-KV-CACHE with the candidate on CUDA (every fault at its layer, stage and position)
$F run contracts/kv-cache.yaml --candidate cuda --require-gpu --report-dir $E/kv-cuda > $E/kv-cuda.txt 2>&1
echo "kv-cache on cuda rc=$? $(tail -1 $E/kv-cuda.txt)"
# ... and as contracted (its CUDA trials are the contracted pair: promote's evidence)
$F run contracts/kv-cache.yaml --require-gpu --report-dir $E/kv-contract > $E/kv-contract.txt 2>&1
echo "kv-cache as contracted rc=$? $(tail -1 $E/kv-contract.txt)"
snap
# 3. sanitizers on scheduled runs (chunked prefill over the cache, decode steps, f32 MoE and Q8_0)
for tool in memcheck racecheck; do
  for m in qwen3moe-tiny/qwen3moe-tiny-f32 qwen3-tiny/qwen3-tiny-q8_0; do
    compute-sanitizer --tool $tool $F trace fixtures/$m.gguf --backend cuda --tokens 81,119,101,110,51,77,111,69,5,9,12 --chunk 3 --decode 4 --out /tmp/san.safetensors > $E/sanitizer-$tool-$(basename $m).txt 2>&1
    echo "sanitizer $tool $m rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $E/sanitizer-$tool-$(basename $m).txt)"
  done
  # only logits kept: the decode steps replayed from a CUDA graph
  compute-sanitizer --tool $tool $F trace fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf --backend cuda --tokens 81,119,101,110,51,77,111,69,5,9,12 --chunk 3 --decode 4 --stages logits --out /tmp/san.safetensors > $E/sanitizer-$tool-graph.txt 2>&1
  echo "sanitizer $tool graph rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $E/sanitizer-$tool-graph.txt)"
done
snap
wait $GEN; echo "gen rc=$? $(tail -1 $E/gen.txt)"
if [ -f /tmp/a3b.gguf ]; then
  # 4. the 30B-A3B shape: CUDA under --chunk 8 --decode 16 against the CPU full forward
  /usr/bin/time -f "cpu trace %e s" $F trace /tmp/a3b.gguf --backend cpu --tokens $P32 --out /tmp/a3b-cpu.safetensors > $E/a3b-cpu.txt 2>&1
  /usr/bin/time -f "cuda trace %e s" $F trace /tmp/a3b.gguf --backend cuda --tokens $P32 --chunk 8 --decode 16 --out /tmp/a3b-cuda.safetensors > $E/a3b-cuda.txt 2>&1
  $F diff /tmp/a3b-cpu.safetensors /tmp/a3b-cuda.safetensors --report-dir $E/a3b-diff > $E/a3b-diff.txt 2>&1
  echo "a3b diff rc=$? $(grep -iE 'verdict|summary|holds|match' $E/a3b-diff.txt | head -3)"
  # 5. where a decode step's time goes (per kernel and stage), untraced
  FALSIFIER_CUDA_PROFILE=1 $F trace /tmp/a3b.gguf --backend cuda --tokens $P32 --decode 16 --stages logits --out /tmp/p.safetensors > $E/a3b-profile.txt 2>&1
  # 6. per-token decode time, replayed from a CUDA graph and (for comparison) launched one by one
  $F bench /tmp/a3b.gguf --backend cuda --tokens-count 32 --chunk 8 --decode 16 --runs 5 > $E/a3b-bench.txt 2>&1
  FALSIFIER_CUDA_GRAPHS=0 $F bench /tmp/a3b.gguf --backend cuda --tokens-count 32 --chunk 8 --decode 16 --runs 5 > $E/a3b-bench-direct.txt 2>&1
  grep -iE "T=|floor" $E/a3b-bench.txt $E/a3b-bench-direct.txt
  snap
fi
$F bench fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf --backend cuda --tokens-count 32 --chunk 8 --decode 16 --runs 5 > $E/tiny-bench.txt 2>&1
grep -iE "T=|floor" $E/tiny-bench.txt
FALSIFIER_CUDA_PROFILE=1 $F trace fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf --backend cuda --tokens $(seq -s, 1 7 217) --decode 16 --stages logits --out /tmp/p.safetensors > $E/tiny-profile.txt 2>&1 || true
snap
