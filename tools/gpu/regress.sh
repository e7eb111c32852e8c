#!/bin/bash
# GPU regression run after a kernel change, on the GPU host (binaries from tools/gpu/pack.sh in
# .gpu/): every GPU test but the benches and the long ones tools/gpu/kv.sh runs, then every
# contract with the GPU required. Writes $OUT/final.tgz.
set -u
mkdir -p /work && for w in main wt-gpu; do [ -e /work/$w ] || ln -sfn "$PWD" /work/$w; done
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export FALSIFIER_COMMIT=$(cat .gpu/COMMIT)
E=/tmp/final; rm -rf $E; mkdir -p $E
snap() { (cd /tmp && tar czf $OUT/final.tgz final); }
{ echo "commit: $(cat .gpu/COMMIT)"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } > $E/card.txt
timeout 330 .gpu/lib-tests --include-ignored --test-threads 1 backend::cuda::gpu_tests --skip bench_ --skip device_decoders_match_gguf_py --skip wide_matmuls_cover --skip cuda_schedules_match > $E/gpu-tests.txt 2>&1
echo "gpu tests rc=$? $(grep 'test result' $E/gpu-tests.txt)"; grep -E "^test .*(FAILED|ok)$" $E/gpu-tests.txt | tail -20
snap
timeout 200 .gpu/falsifier run contracts --require-gpu --report-dir $E/run > $E/run.txt 2>&1
echo "run rc=$? $(tail -2 $E/run.txt)"
snap
