#!/bin/bash
# GPU run for issue I (the GGUF files people have): the new block types' decoders and matmuls
# against gguf-py, their matmul timings, CUDA/CPU parity on generated IQ4_NL, IQ4_XS-mix and
# MXFP4 models (C-BLOCK-TYPES) and on a real shape in the IQ4_XS mix, a split file traced on
# CUDA against the whole file, compute-sanitizer, and every contract (nothing regressed).
# .gpu/ filled by tools/gpu/pack.sh. Writes $OUT/blocks.tgz after every step.
set -u
mkdir -p /work && [ -e /work/main ] || ln -sfn "$PWD" /work/main
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export FALSIFIER_COMMIT=$(cat .gpu/COMMIT)
F=.gpu/falsifier; E=/tmp/blocks; rm -rf $E; mkdir -p $E
snap() { (cd /tmp && tar czf $OUT/blocks.tgz blocks); }
{ echo "commit: $(cat .gpu/COMMIT)"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } > $E/card.txt
T="device_decoders_match_gguf_py wide_matmuls_cover_every_tile_position grouped_matmul_kernels_match_host bench_matmul_types"
.gpu/lib-tests --include-ignored --test-threads 1 --nocapture --exact $(for t in $T; do echo backend::cuda::gpu_tests::$t; done) > $E/gpu-tests.txt 2>&1
echo "gpu tests rc=$? $(grep 'test result' $E/gpu-tests.txt)"; grep -A3 panicked $E/gpu-tests.txt | head -8; grep "bench matmul" $E/gpu-tests.txt; snap
$F run contracts/block-types.yaml --require-gpu --report-dir $E/blocks-run > $E/blocks-run.txt 2>&1
echo "block-types rc=$? $(tail -1 $E/blocks-run.txt)"; grep -E "^(FAIL|ERROR)" $E/blocks-run.txt | head; rm -rf $E/blocks-run/trials; snap
# a split file on CUDA against the whole file (bit-equal: the same bytes, mapped per shard)
$F gen-model --preset tiny-qwen2moe --quant iq4_xs --seed 2 --hidden 256 --head-dim 64 --expert-ffn 256 --out /tmp/w.gguf > /dev/null
$F gen-model --preset tiny-qwen2moe --quant iq4_xs --seed 2 --hidden 256 --head-dim 64 --expert-ffn 256 --split-max-size 300000 --out /tmp/s.gguf > $E/split-gen.txt 2>&1
ls -la /tmp/s-*.gguf >> $E/split-gen.txt
TOK=81,119,101,110,50,45,77,111,69
$F trace /tmp/w.gguf --backend cuda --tokens $TOK --out /tmp/w.safetensors > $E/split.txt 2>&1
$F trace /tmp/s-00001-of-*.gguf --backend cuda --tokens $TOK --out /tmp/s.safetensors >> $E/split.txt 2>&1
$F diff /tmp/w.safetensors /tmp/s.safetensors --threshold default=1e-30 --report-dir $E/split-diff >> $E/split.txt 2>&1
echo "split rc=$? $(grep -E 'HOLDS|FAILS' $E/split.txt | head -1)"; snap
# a real shape in llama.cpp's IQ4_XS mix: Llama-3-8B layers (4 of 32), CUDA against CPU, T = 32
( time $F gen-model --preset llama3-8b --quant iq4_xs --seed 1 --layers 4 --out /tmp/l8.gguf ) > $E/l8-gen.txt 2>&1
T32=$(seq -s, 1 37 1184)
$F trace /tmp/l8.gguf --backend cpu --tokens $T32 --out /tmp/l8-cpu.safetensors > $E/l8.txt 2>&1
$F trace /tmp/l8.gguf --backend cuda --tokens $T32 --out /tmp/l8-cuda.safetensors >> $E/l8.txt 2>&1
$F diff /tmp/l8-cpu.safetensors /tmp/l8-cuda.safetensors --report-dir $E/l8-diff >> $E/l8.txt 2>&1
echo "llama3-8b iq4_xs l4 rc=$? $(grep -E 'HOLDS|FAILS' $E/l8.txt | head -1)"; rm -f /tmp/l8-*.safetensors; snap
for tool in memcheck; do
  for m in /tmp/w.gguf; do
    compute-sanitizer --tool $tool $F trace $m --backend cuda --tokens $TOK --out /tmp/san.safetensors > $E/sanitizer-$tool-trace.txt 2>&1
    echo "sanitizer $tool trace rc=$? $(grep -E 'ERROR SUMMARY' $E/sanitizer-$tool-trace.txt)"
  done
  compute-sanitizer --tool $tool .gpu/lib-tests --include-ignored --test-threads 1 --exact backend::cuda::gpu_tests::device_decoders_match_gguf_py > $E/sanitizer-$tool-decoders.txt 2>&1
  echo "sanitizer $tool decoders rc=$? $(grep -E 'ERROR SUMMARY' $E/sanitizer-$tool-decoders.txt)"
done
snap
[ "${ALL:-1}" = 1 ] || exit 0
$F run contracts --require-gpu --report-dir $E/run > $E/run.txt 2>&1
echo "run rc=$? $(tail -1 $E/run.txt)"; grep -E "^(FAIL|ERROR)" $E/run.txt | head -5; rm -rf $E/run/trials; snap
