#!/bin/bash
# Short GPU evidence run for `falsifier promote`: the contracts with a GPU required, and the
# self-tests with every fault planted on CUDA. Same setup as evidence.sh; output in $OUT/run.tgz.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export FALSIFIER_COMMIT=$(cat .gpu/COMMIT)
E=/tmp/run-evidence; rm -rf $E; mkdir -p $E
{ echo "commit: $FALSIFIER_COMMIT"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } | tee $E/card.txt
.gpu/falsifier run contracts --require-gpu --report-dir $E/run > $E/run.txt 2>&1
echo "run rc=$? $(tail -1 $E/run.txt)"
.gpu/falsifier run contracts/harness-self-test.yaml --candidate cuda --report-dir $E/selftest-cuda > $E/selftest-cuda.txt 2>&1
echo "selftest-cuda rc=$? $(tail -1 $E/selftest-cuda.txt)"
(cd /tmp && tar czf $OUT/run.tgz run-evidence)
