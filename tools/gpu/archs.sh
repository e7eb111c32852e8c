#!/bin/bash
# GPU run for the architecture description (llama, Mixtral, qwen2, qwen2moe): the library's GPU
# tests, the falsify target and every contract with the GPU required, the self-test and
# architecture contracts with faults planted on CUDA, and prefill timings of real shapes.
# .gpu/ filled by tools/gpu/pack.sh. Writes $OUT/archs.tgz after every step.
set -u
mkdir -p /work && [ -e /work/main ] || ln -sfn "$PWD" /work/main
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export FALSIFIER_COMMIT=$(cat .gpu/COMMIT)
F=.gpu/falsifier; E=/tmp/archs; rm -rf $E; mkdir -p $E
snap() { (cd /tmp && tar czf $OUT/archs.tgz archs); }
{ echo "commit: $(cat .gpu/COMMIT)"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } > $E/card.txt
.gpu/lib-tests --include-ignored --test-threads 1 --nocapture backend::cuda::gpu_tests --skip bench_prefill > $E/gpu-tests.txt 2>&1
echo "gpu tests rc=$? $(grep 'test result' $E/gpu-tests.txt)"; grep -A2 panicked $E/gpu-tests.txt | head -6; snap
FALSIFY_REQUIRE_GPU=1 .gpu/falsify > $E/falsify.txt 2>&1
echo "falsify rc=$? $(grep 'test result' $E/falsify.txt)"
$F run contracts --require-gpu --report-dir $E/run > $E/run.txt 2>&1
echo "run rc=$? $(tail -1 $E/run.txt)"; grep -E "^(FAIL|ERROR)" $E/run.txt | head -5; rm -rf $E/run/trials
$F run contracts/harness-self-test.yaml contracts/architectures-forward.yaml --candidate cuda --report-dir $E/selftest-cuda > $E/selftest-cuda.txt 2>&1
echo "selftest-cuda rc=$? $(tail -1 $E/selftest-cuda.txt)"; grep -E "^(FAIL|ERROR)" $E/selftest-cuda.txt | head -5; rm -rf $E/selftest-cuda/trials; snap
# HEAVY=1: the real shapes end to end, CUDA against the CPU reference at every stage (T = 32;
# FALSIFY-ARCH-HEAVY-001: llama3-8b and qwen2.5-7b whole, Mixtral-8x7B and Qwen2-57B-A14B at 4
# layers; about 4 minutes of generation on the host's 16 cores, cached in /tmp/falsifier-models)
if [ "${HEAVY:-0}" = 1 ]; then
  FALSIFIER_MODEL_CACHE=/tmp/falsifier-models $F run contracts/architectures-forward.yaml --include-heavy --filter FALSIFY-ARCH-HEAVY --require-gpu --report-dir $E/heavy > $E/heavy.txt 2>&1
  echo "heavy rc=$? $(tail -1 $E/heavy.txt)"; rm -rf $E/heavy/trials; snap
fi
[ "${BENCH:-1}" = 1 ] || exit 0
for spec in "llama3-8b" "qwen2-57b-a14b --layers 4" "mixtral-8x7b --layers 4"; do
  set -- $spec; name=$1; M=/tmp/$name.gguf
  ( time $F gen-model --preset $spec --quant q4_k_m --seed 1 --out $M ) > $E/gen-$name.txt 2>&1
  echo "gen $name rc=$? $(grep real $E/gen-$name.txt)"
  $F bench $M --backend cuda --tokens-count 32,512 --runs 3 > $E/bench-$name.txt 2>&1
  echo "bench $name rc=$?"; grep -E "T=|untraced" $E/bench-$name.txt | head -4
  rm -f $M; snap
done
