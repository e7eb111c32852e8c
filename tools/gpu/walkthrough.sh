#!/bin/bash
# GPU run for README's walkthrough (a split IQ4_XS GGUF with a text prompt) and the split-file
# check on CUDA: the commands a user types, their output kept as evidence. .gpu/ filled by
# tools/gpu/pack.sh. Writes $OUT/walk.tgz after every step.
set -u
mkdir -p /work && [ -e /work/main ] || ln -sfn "$PWD" /work/main
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export FALSIFIER_COMMIT=$(cat .gpu/COMMIT)
F=$PWD/.gpu/falsifier; E=/tmp/walk; W=/tmp/w; rm -rf $E $W; mkdir -p $E $W
snap() { (cd /tmp && tar czf $OUT/walk.tgz walk); }
{ echo "commit: $(cat .gpu/COMMIT)"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } > $E/card.txt
step() { echo "\$ falsifier $*" >> $E/walkthrough.txt; ( cd $W && time $F "$@" ) >> $E/walkthrough.txt 2>&1; echo "rc=$?" >> $E/walkthrough.txt; }
# a split file on CUDA against the whole file: bit-equal at every stage
G="--preset tiny-qwen2moe --quant iq4_xs --seed 2 --hidden 256 --head-dim 64 --expert-ffn 256"
$F gen-model $G --out /tmp/whole.gguf > /dev/null
$F gen-model $G --split-max-size 300000 --out /tmp/s.gguf > $E/split.txt 2>&1
TOK=81,119,101,110,50,45,77,111,69
$F trace /tmp/whole.gguf --backend cuda --tokens $TOK --out /tmp/whole.safetensors >> $E/split.txt 2>&1
$F trace /tmp/s-00001-of-*.gguf --backend cuda --tokens $TOK --out /tmp/s.safetensors >> $E/split.txt 2>&1
NO_COLOR=1 $F diff /tmp/whole.safetensors /tmp/s.safetensors --threshold default=1e-30 --report-dir $E/split-diff >> $E/split.txt 2>&1
echo "split rc=$? $(grep -E '^(HOLDS|FAILS)' $E/split.txt | head -1)"; snap
# the walkthrough
P="The quick brown fox jumps over the lazy dog."
export NO_COLOR=1
step gen-model --preset llama3-8b --layers 4 --quant iq4_xs --seed 1 --split-max-size 1G --out llama3-8b-l4-iq4_xs.gguf
S=$(cd $W && ls llama3-8b-l4-iq4_xs-00001-of-*.gguf)
step inspect $S --tokens-count 32,512
step trace $S --backend cpu --prompt "$P" --out cpu.safetensors
step trace $S --backend cuda --prompt "$P" --out cuda.safetensors
step diff cpu.safetensors cuda.safetensors --report-dir $E/walk-cpu-vs-cuda
echo "walk parity: $(grep -E '^(HOLDS|FAILS)' $E/walkthrough.txt | tail -1)"; snap
step gen-model --preset llama3-8b --layers 4 --quant bf16 --seed 1 --out llama3-8b-l4-bf16.gguf
step diff llama3-8b-l4-bf16.gguf $S --prompt "$P" --kld 0.1 --top1 0.8 --report-dir $E/walk-drift
echo "walk drift: $(grep -E '^drift (HOLDS|FAILS)' $E/walkthrough.txt | tail -1)"; snap
ls -la $W >> $E/walkthrough.txt; snap
