#!/bin/bash
# llama.cpp against the CPU reference for the architectures beyond Qwen3 (run by hand on a
# machine with llama-cpp-python; not in CI). For each golden fixture (F32) and each generated
# tiny preset (F32): trace with llama.cpp (tools/trace_llamacpp.py) and with the CPU reference,
# then `falsifier diff`. The real shapes, cut to one layer, must load and run in llama.cpp.
# PY: a python with llama_cpp, numpy, safetensors. Writes under $1 (default /tmp/llamacpp-archs).
set -u
PY=${PY:-python3}; F=${F:-target/release/falsifier}; O=${1:-/tmp/llamacpp-archs}; mkdir -p $O
tok() { python3 -c "import json;print(','.join(map(str,json.load(open('$1'))['tokens'])))"; }
for fam in qwen3moe qwen3 llama2 llama3 mistral mixtral qwen2 qwen2moe; do
  M=fixtures/$fam-tiny/$fam-tiny-f32.gguf; T=$(tok fixtures/$fam-tiny/manifest.json)
  $PY tools/trace_llamacpp.py --model $M --tokens $T --out $O/llama-$fam.safetensors > $O/llama-$fam.txt 2>&1
  $F trace $M --backend cpu --tokens $T --out $O/cpu-$fam.safetensors > /dev/null
  $F diff $O/cpu-$fam.safetensors $O/llama-$fam.safetensors --labels cpu,llama.cpp --report-dir $O/diff-$fam > $O/diff-$fam.txt 2>&1
  echo "$fam: $(grep 'did not provide' $O/llama-$fam.txt); diff rc=$? $(grep -m1 -E 'HOLDS|FAILS|Match' $O/diff-$fam.txt)"
done
T=81,119,101,110,51,77,111,69
for p in tiny-llama tiny-mixtral tiny-qwen2 tiny-qwen2moe; do
  M=$O/$p.gguf; $F gen-model --preset $p --quant f32 --seed 1 --out $M > /dev/null
  $PY tools/trace_llamacpp.py --model $M --tokens $T --out $O/llama-$p.safetensors > $O/llama-$p.txt 2>&1
  $F trace $M --backend cpu --tokens $T --out $O/cpu-$p.safetensors > /dev/null
  $F diff $O/cpu-$p.safetensors $O/llama-$p.safetensors --labels cpu,llama.cpp --report-dir $O/diff-$p > $O/diff-$p.txt 2>&1
  echo "$p: $(grep 'did not provide' $O/llama-$p.txt); diff rc=$? $(grep -m1 -E 'HOLDS|FAILS|Match' $O/diff-$p.txt)"
done
for p in llama3-8b mixtral-8x7b qwen2.5-7b qwen2-57b-a14b; do
  M=$O/$p-l1.gguf; $F gen-model --preset $p --quant q4_k_m --seed 1 --layers 1 --out $M > /dev/null
  $PY tools/trace_llamacpp.py --model $M --tokens 1,2,3,4 --out $O/llama-$p-l1.safetensors > $O/llama-$p-l1.txt 2>&1
  echo "$p (1 layer, Q4_K_M): llama.cpp rc=$? $(grep -m1 'tensors seen' $O/llama-$p-l1.txt)"
  rm -f $M $O/llama-$p-l1.safetensors
done
