#!/usr/bin/env bash
# Regenerate every golden set under fixtures/ (needs torch, transformers, gguf, safetensors, numpy).
# Usage: tools/golden/make_all.sh OUTDIR   (then copy OUTDIR/* into fixtures/)
set -u
out=${1:?usage: make_all.sh OUTDIR}
here=$(dirname "$0")
mkdir -p "$out"
run() { name=$1; shift; echo "== $name"; python3 "$@" --out "$out/$name" 2>&1 | grep -v Warning | tail -6; }
run qwen3-tiny          "$here/make_qwen3_golden.py" --quants F32,Q8_0
run qwen3-mha-long      "$here/make_qwen3_golden.py" --quants F32 --seed 5 --hidden 80 --layers 3 --heads 6 --kv-heads 6 --head-dim 24 --ffn 160 --text "Multi-head attention with a longer prompt: 0123456789."
run qwen3-t1            "$here/make_qwen3_golden.py" --quants F32 --tokens 65
run qwen3moe-gqa4-top4  "$here/make_qwen3moe_golden.py" --quants F32 --hidden 96 --layers 2 --heads 8 --kv-heads 2 --head-dim 16 --experts 16 --top-k 4 --moe-ff 48 --text "GQA 4:1 with top-4 routing over sixteen experts!"
run qwen3moe-mqa-top3   "$here/make_qwen3moe_golden.py" --quants F32 --seed 3 --hidden 64 --layers 2 --heads 2 --kv-heads 1 --head-dim 64 --experts 4 --top-k 3 --moe-ff 40 --text "MQA, head_dim 64, top-3"
run qwen3moe-t1         "$here/make_qwen3moe_golden.py" --quants F32 --tokens 81
# the llama and qwen2 families (architectures the backends do not run yet)
for v in llama2 llama3 mistral mixtral; do run $v-tiny "$here/make_llama_golden.py" --variant $v; done
for v in qwen2 qwen2moe; do run $v-tiny "$here/make_qwen2_golden.py" --variant $v; done
