#!/bin/bash
# Where a decode step's time goes under overlap (tools/gpu/timeline.py), on the GPU host: the
# 30B-A3B shape cut to $LAYERS layers (default 8), `bench --chunk 8 --decode 16` with
# FALSIFIER_CUDA_TIMELINE for each of $VARIANTS (setup.sh's variant(); default "base") and,
# to show what the notes cost, once without. Writes $OUT/timeline.tgz. Binaries from
# tools/gpu/pack.sh in .gpu/.
set -u
. tools/gpu/setup.sh
F=.gpu/falsifier; E=/tmp/timeline; rm -rf $E; mkdir -p $E
LAYERS=${LAYERS:-8}
snap() { (cd /tmp && tar czf $OUT/timeline.tgz timeline); }
{ echo "binaries: $(cat .gpu/COMMIT)"; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader; } | tee $E/card.txt
M=/tmp/a3b-l$LAYERS.gguf
/usr/bin/time -f "gen %e s" $F gen-model --preset qwen3-30b-a3b --quant q4_k_m --layers $LAYERS --seed 1 --out $M > $E/gen.txt 2>&1
echo "gen rc=$? $(tail -1 $E/gen.txt)"
B="bench --backend cuda --tokens-count 32 --chunk 8 --decode 16 --runs ${RUNS:-3}"
for v in ${VARIANTS:-base}; do
  variant $v $F $B $M > $E/plain-$v.txt 2>&1; echo "$v plain: $(per $E/plain-$v.txt)"
  variant $v env FALSIFIER_CUDA_TIMELINE=$E/tl-$v.csv $F $B $M > $E/timed-$v.txt 2>&1
  echo "$v with notes: $(per $E/timed-$v.txt)"
  python3 tools/gpu/timeline.py $E/tl-$v.csv | tee $E/summary-$v.txt
  xz -T4 -6 $E/tl-$v.csv
  snap
done
