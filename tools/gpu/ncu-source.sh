#!/bin/bash
# Where the time of a few decode kernels goes, instruction by instruction: Nsight Compute's
# source counters (warp stall samples per SASS line) for one launch each of the kernels in
# $KERNELS, on the 30B-A3B shape cut to $LAYERS layers (default 8), kernel sources from the
# working tree. Writes $OUT/ncu-source.tgz (the reports and the per-line CSVs).
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export FALSIFIER_CUDA_KERNELS=$PWD/src/backend/cuda/kernels
F=.gpu/falsifier; E=/tmp/ncu-source; rm -rf $E; mkdir -p $E
LAYERS=${LAYERS:-8}; M=/tmp/a3b-l$LAYERS.gguf
[ -f $M ] || $F gen-model --preset qwen3-30b-a3b --quant q4_k_m --layers $LAYERS --seed 1 --out $M > $E/gen.txt 2>&1
P32=151644,872,198,7985,264,3974,3378,304,13027,151645,9,17,300,12,77,1024,5,31,8191,64,3,999,22,511,7,2000,41,6,1500,88,13,700
R="trace $M --backend cuda --tokens $P32 --chunk 8 --decode 16 --stages logits --out /tmp/n.safetensors"
for k in ${KERNELS:-moe_route1 down_combine_q6_k gate_up_q4_k}; do
  FALSIFIER_CUDA_GRAPHS=0 timeout 150 ncu --clock-control none --kernel-name $k --launch-skip 20 --launch-count 1 \
    --section SourceCounters --section WarpStateStats --section SpeedOfLight --import-source no -o $E/$k $F $R > $E/run-$k.txt 2>&1
  ncu -i $E/$k.ncu-rep --page source --csv --print-source sass > $E/src-$k.csv 2>&1
  ncu -i $E/$k.ncu-rep --page details > $E/details-$k.txt 2>&1
  echo "--- $k: $(grep -E '^\s+Duration' $E/details-$k.txt | head -1)"
  python3 - "$E/src-$k.csv" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
hdr = next((i for i, r in enumerate(rows) if any('Source' == c or 'Address' in c for c in r)), None)
if hdr is None:
    print(open(sys.argv[1]).read()[:1500]); sys.exit()
h = rows[hdr]
def col(name):
    for i, c in enumerate(h):
        if c.startswith(name): return i
    return None
src = col('Source'); samp = col('Warp Stall Sampling (All') or col('Warp Stall Sampling')
print('columns:', [c for c in h][:12])
data = [r for r in rows[hdr + 1:] if len(r) == len(h)]
def num(x):
    try: return float(x.replace(',', ''))
    except: return 0.0
tot = sum(num(r[samp]) for r in data) or 1
top = sorted(data, key=lambda r: -num(r[samp]))[:25]
for r in top: print(f"{100*num(r[samp])/tot:5.1f}%  {r[src][:110]}")
PY
  (cd /tmp && tar czf $OUT/ncu-source.tgz ncu-source)  # (after each kernel: a cut-off run keeps what it has)
done
