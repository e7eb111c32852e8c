#!/bin/bash
# trace both HF fixtures with tools/trace_transformers.py, the GGUFs with the CPU reference, diff.
export CUDA_VISIBLE_DEVICES=
G=.gpu-engines; W=$(mktemp -d)
python3 -c "import sys,torch,transformers,safetensors;print('python',sys.version.split()[0],'torch',torch.__version__,'transformers',transformers.__version__,'safetensors',safetensors.__version__)" | tee $W/versions.txt
for m in qwen3moe-tiny qwen3-tiny; do
  TOK=$(python3 -c "import json;print(','.join(map(str,json.load(open('fixtures/$m/manifest.json'))['tokens'])))")
  echo "== $m tokens $TOK" | tee -a $W/commands.txt
  ( set -x; time python3 $G/trace_transformers.py --model fixtures/$m/hf_model --tokens $TOK --out $W/$m-transformers.safetensors --check fixtures/$m/activations-f32.safetensors ) > $W/$m-check.txt 2>&1; echo "check rc=$?"; grep -E "wrote|check against|^  [a-z].*>|real" $W/$m-check.txt
  ( set -x; $G/falsifier trace fixtures/$m/$m-f32.gguf --backend cpu --tokens $TOK --stages all --out $W/$m-cpu.safetensors ) 2>&1 | tail -2
  ( set -x; $G/falsifier diff $W/$m-transformers.safetensors $W/$m-cpu.safetensors --report-dir $W/$m-transformers-vs-cpu-f32 ) 2>&1 | tail -6; echo "diff rc=${PIPESTATUS[0]}"
  ( set -x; $G/falsifier trace fixtures/$m/$m-q8_0.gguf --backend cpu --tokens $TOK --stages all --out $W/$m-cpu-q8.safetensors ) 2>&1 | tail -1
  ( set -x; $G/falsifier diff $W/$m-transformers.safetensors $W/$m-cpu-q8.safetensors --report-dir $W/$m-transformers-vs-cpu-q8_0 ) 2>&1 | tail -4
done
tar czf $OUT/transformers-evidence.tgz -C $W .
ls -la $W
