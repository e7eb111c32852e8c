#!/bin/bash
# Where a decode step's time goes under overlap (tools/gpu/timeline.py), on the GPU host: the
# 30B-A3B shape cut to $LAYERS layers (default 8), `bench --chunk 8 --decode 16` with
# FALSIFIER_CUDA_TIMELINE for each of $VARIANTS (setup.sh's variant(); default "base") and,
# to show what the notes cost, without. BASE=1: also the base build (.gpu/base/falsifier, when
# sent), $ROUNDS times alternating with this one (default 2), plain and with the timeline.
# $TESTS: GPU tests (setup.sh's gpu_tests) while the model generates, under $TEST_VARIANT. Writes
# $OUT/timeline.tgz. Binaries from tools/gpu/pack.sh in .gpu/.
set -u
. tools/gpu/setup.sh
F=.gpu/falsifier; E=/tmp/timeline; rm -rf $E; mkdir -p $E
LAYERS=${LAYERS:-8}
snap() { (cd /tmp && tar czf $OUT/timeline.tgz timeline); }
{ echo "binaries: $(cat .gpu/COMMIT) base: $(cat .gpu/base/COMMIT 2>/dev/null)"; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader; } | tee $E/card.txt
M=/tmp/a3b-l$LAYERS.gguf
( /usr/bin/time -f "gen %e s" $F gen-model --preset qwen3-30b-a3b --quant q4_k_m --layers $LAYERS --seed 1 --out $M > $E/gen.txt 2>&1 ) &
GEN=$!
# (TEST_VARIANT=NAME: the tests under that kernel-source variant)
[ -n "${TESTS:-}" ] && variant ${TEST_VARIANT:-base} gpu_tests
wait $GEN; echo "gen rc=$? $(tail -1 $E/gen.txt)"
snap
B="bench --backend cuda --tokens-count 32 --chunk 8 --decode 16 --runs ${RUNS:-3}"
# (name, binary) pairs: this build under each variant, and the base build
timed() {  # name command...
  local n=$1; shift
  "$@" $B $M > $E/plain-$n.txt 2>&1; echo "$n plain: $(per $E/plain-$n.txt)"
}
for r in $(seq ${ROUNDS:-1}); do
  for v in ${VARIANTS:-base}; do timed $v-$r variant $v $F; done
  if [ "${BASE:-0}" = 1 ] && [ -x .gpu/base/falsifier ]; then timed basebuild-$r .gpu/base/falsifier; fi
done
for v in ${VARIANTS:-base}; do timeline_notes $v variant $v $F; snap; done
if [ "${BASE:-0}" = 1 ] && [ -x .gpu/base/falsifier ]; then timeline_notes basebuild .gpu/base/falsifier; fi
snap
