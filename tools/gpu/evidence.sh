#!/bin/bash
# GPU evidence run, on the GPU host (see DEVELOPERS notes in README "GPU runs"):
#   .gpu/ holds falsifier, falsify (the test target) and lib-tests (the library's test binary),
#   built here with `cargo build --release` and `cargo test --release --no-run`, plus COMMIT.
# Writes everything under $OUT/evidence.tgz.
set -u
# test binaries find contracts and fixtures under the path they were built in
mkdir -p /work && [ -e /work/main ] || ln -sfn "$PWD" /work/main
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export FALSIFIER_COMMIT=$(cat .gpu/COMMIT)   # the GPU host has the tree but no git history
F=.gpu/falsifier; E=/tmp/evidence; rm -rf $E; mkdir -p $E
{ echo "commit: $(cat .gpu/COMMIT)"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } | tee $E/card.txt
MOE=81,119,101,110,51,77,111,69
# snapshot after every step, so a run cut short still brings back what it did
snap() { (cd /tmp && tar czf $OUT/evidence.tgz evidence); }

# 0. the GPU tests of the library (every kernel variant against the CPU / host / gguf-py)
.gpu/lib-tests --include-ignored --test-threads 1 backend::cuda::gpu_tests --skip bench_prefill > $E/gpu-tests.txt 2>&1
echo "gpu tests rc=$? $(grep 'test result' $E/gpu-tests.txt)"
snap
# 0b. the CLI tests, where a machine with a GPU is the interesting case (a GPU trial with its
#     device hidden must be skipped, never passed); they find the binary where it was built
if [ -x .gpu/cli-tests ]; then
  mkdir -p target/release && cp .gpu/falsifier target/release/falsifier
  .gpu/cli-tests --test-threads 2 > $E/cli-tests.txt 2>&1
  echo "cli tests rc=$? $(grep 'test result' $E/cli-tests.txt)"
fi
# 1. the falsify test target, every non-heavy trial, GPU required
FALSIFY_REQUIRE_GPU=1 FALSIFY_REPORT_DIR=$E/falsify-reports .gpu/falsify > $E/falsify.txt 2>&1
echo "falsify rc=$? $(grep 'test result' $E/falsify.txt)"
snap
# 2. falsifier run over all contracts (the combined report is promote's evidence)
$F run contracts --require-gpu --report-dir $E/run > $E/run.txt 2>&1
echo "run rc=$? $(tail -1 $E/run.txt)"
snap
# 3. the self-test contracts with every fault planted on the CUDA candidate
$F run contracts/harness-self-test.yaml --candidate cuda --report-dir $E/selftest-cuda > $E/selftest-cuda.txt 2>&1
echo "selftest-cuda rc=$? $(tail -1 $E/selftest-cuda.txt)"
snap
# 4. compute-sanitizer on a fixture run (Q8_0 and F32 MoE, all stages captured)
for tool in memcheck racecheck; do
  for m in qwen3moe-tiny-f32 qwen3moe-tiny-q8_0; do
    compute-sanitizer --tool $tool $F trace fixtures/qwen3moe-tiny/$m.gguf --backend cuda --tokens $MOE --out /tmp/san.safetensors > $E/sanitizer-$tool-$m.txt 2>&1
    echo "sanitizer $tool $m rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $E/sanitizer-$tool-$m.txt)"
  done
done
# 4b. the same tools on the kernel tests that cover every matmul variant (vector, each row
#     tile, split-K, grouped with gather and swap) and both attention paths
for tool in memcheck racecheck; do
  for t in grouped_matmul_kernels_match_host wide_matmuls_cover_every_tile_position device_decoders_match_gguf_py tiled_attention_matches_per_query_kernels blocked_attention_equals_whole; do
    compute-sanitizer --tool $tool .gpu/lib-tests --include-ignored --exact backend::cuda::gpu_tests::$t > $E/sanitizer-$tool-$t.txt 2>&1
    echo "sanitizer $tool $t rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $E/sanitizer-$tool-$t.txt)"
  done
done
snap
[ "${BENCH:-1}" = 1 ] || exit 0
# 5. prefill timings: tiny MoE, and the 30B-A3B shape cut to 4 and 8 layers (per-layer cost is
#    the difference; the full model's time is extrapolated from it, and said so in BENCHMARKS.md)
FALSIFIER_BENCH_MODEL=fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf FALSIFIER_BENCH_T=8,32,512 \
  .gpu/lib-tests --include-ignored --nocapture --exact backend::cuda::gpu_tests::bench_prefill > $E/bench-tiny.txt 2>&1
echo "bench tiny rc=$?"; grep -iE "T=|floor|ms" $E/bench-tiny.txt | head -20
snap
for L in 4 8; do
  /usr/bin/time -f "gen %e s" timeout 150 $F gen-model --preset qwen3-30b-a3b --quant q4_k_m --layers $L --seed 1 --out /tmp/a3b-l$L.gguf > $E/gen-l$L.txt 2>&1
  echo "gen L=$L rc=$? $(tail -1 $E/gen-l$L.txt)"
  [ -f /tmp/a3b-l$L.gguf ] || continue
  FALSIFIER_BENCH_MODEL=/tmp/a3b-l$L.gguf FALSIFIER_BENCH_T=32,512 \
    .gpu/lib-tests --include-ignored --nocapture --exact backend::cuda::gpu_tests::bench_prefill > $E/bench-a3b-l$L.txt 2>&1
  echo "bench a3b L=$L rc=$?"; grep -iE "T=|floor|ms" $E/bench-a3b-l$L.txt | head -20
  snap
done
snap
