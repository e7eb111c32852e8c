#!/bin/bash
# GPU check of the per-type kernel modules: the time a cold process takes to open a model (the
# driver JIT of only the types it uses), every type's module through the decoder test, and every
# contract (nothing regressed). Writes $OUT/modules.tgz.
set -u
mkdir -p /work && [ -e /work/main ] || ln -sfn "$PWD" /work/main
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export FALSIFIER_COMMIT=$(cat .gpu/COMMIT)
F=.gpu/falsifier; E=/tmp/modules; rm -rf $E; mkdir -p $E
snap() { (cd /tmp && tar czf $OUT/modules.tgz modules); }
{ echo "commit: $(cat .gpu/COMMIT)"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } > $E/card.txt
TOK=81,119,101,110,50,45,77,111,69
for q in q4_k_m iq4_xs mxfp4; do
  $F gen-model --preset tiny-llama --quant $q --seed 1 --hidden 256 --head-dim 64 --ffn 256 --out /tmp/m-$q.gguf > /dev/null
  for run in cold warm; do
    ( time $F trace /tmp/m-$q.gguf --backend cuda --tokens $TOK --out /tmp/t.safetensors ) >> $E/open-times.txt 2>&1
    echo "$q $run: $(grep -E 'traced' $E/open-times.txt | tail -1)"
  done
done
snap
.gpu/lib-tests --include-ignored --test-threads 1 --exact backend::cuda::gpu_tests::device_decoders_match_gguf_py backend::cuda::gpu_tests::traced_equals_untraced_and_runs_repeat_bitwise > $E/gpu-tests.txt 2>&1
echo "gpu tests rc=$? $(grep 'test result' $E/gpu-tests.txt)"; grep -A3 panicked $E/gpu-tests.txt | head; snap
$F run contracts --require-gpu --report-dir $E/run > $E/run.txt 2>&1
echo "run rc=$? $(tail -1 $E/run.txt)"; grep -E "^(FAIL|ERROR)" $E/run.txt | head -5; rm -rf $E/run/trials; snap
