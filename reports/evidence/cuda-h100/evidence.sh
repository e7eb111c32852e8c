#!/bin/bash
# CUDA trials on the device: unit/GPU tests, then CPU-vs-CUDA traces and diff reports.
set -u
mkdir -p /work && ln -sfn $PWD /work/wt-cuda
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export FALSIFIER_CUDA_KERNELS=$PWD/.gpu/kernels
F=.gpu/falsifier
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
.gpu/cuda-lib-tests --include-ignored --test-threads 1 --nocapture cuda:: > $OUT/tests.txt 2>&1
echo "gpu tests rc=$?"; grep -E "^test |test result" $OUT/tests.txt
grep -A3 panicked $OUT/tests.txt | head -20
E=/tmp/evidence; mkdir -p $E
$F gen-model --preset tiny-moe --quant q4_k_m --hidden 256 --head-dim 64 --expert-ffn 256 --vocab 512 --seed 7 --out /tmp/syn-moe-q4km.gguf > /dev/null
$F gen-model --preset tiny-dense --quant q4_k_m --hidden 256 --head-dim 64 --ffn 512 --vocab 512 --seed 7 --out /tmp/syn-dense-q4km.gguf > /dev/null
MOE=81,119,101,110,51,77,111,69; DENSE=81,119,101,110,51,32,100,101,110,115,101
SYN=$(seq -s, 3 21 500)
while read name model toks; do
  for b in cpu cuda; do
    $F trace $model --backend $b --tokens $toks --out $E/$name-$b.safetensors > $E/$name-$b.log 2>&1 || { echo "$name $b trace failed"; cat $E/$name-$b.log; }
  done
  mkdir -p $E/$name; $F diff $E/$name-cpu.safetensors $E/$name-cuda.safetensors --labels cpu,cuda --report-dir $E/$name > $E/$name/diff.txt 2>&1
  echo "$name: diff rc=$? $(head -c 300 $E/$name/diff.txt | tr '\n' ' ')"
done <<LIST
qwen3moe-tiny-f32 fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf $MOE
qwen3moe-tiny-q8_0 fixtures/qwen3moe-tiny/qwen3moe-tiny-q8_0.gguf $MOE
qwen3-tiny-f32 fixtures/qwen3-tiny/qwen3-tiny-f32.gguf $DENSE
qwen3-tiny-q8_0 fixtures/qwen3-tiny/qwen3-tiny-q8_0.gguf $DENSE
synthetic-moe-q4_k_m /tmp/syn-moe-q4km.gguf $SYN
synthetic-dense-q4_k_m /tmp/syn-dense-q4km.gguf $SYN
LIST
rm -f $E/*.safetensors
(cd /tmp && tar czf $OUT/evidence.tgz evidence)
