# Sourced by the GPU-host scripts (binab.sh, merged.sh) from the repository root: the paths the
# tests expect, the CUDA libraries, the commit the binaries were built from, and the binaries
# sent xz-compressed to fit the device tool's 64 MiB (pack.sh, then xz) unpacked next to the
# archives.
mkdir -p /work && for w in main wt-gpu; do [ -e /work/$w ] || ln -sfn "$PWD" /work/$w; done
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export FALSIFIER_COMMIT=$(cat .gpu/COMMIT)
for z in .gpu/*.xz .gpu/base/*.xz; do
  [ -f "$z" ] && python3 -c "import lzma,sys,os; d=lzma.open(sys.argv[1]).read(); p=sys.argv[1][:-3]; open(p,'wb').write(d); os.chmod(p,0o755)" "$z"
done

# The GPU tests named in $TESTS (default: the arguments) of .gpu/lib-tests, a log each in $E,
# a line each on stdout.
gpu_tests() {
  for t in ${TESTS:-$*}; do
    timeout 200 .gpu/lib-tests --include-ignored --test-threads 1 --exact backend::cuda::gpu_tests::$t > $E/test-$t.txt 2>&1
    echo "test $t rc=$? $(grep 'test result' $E/test-$t.txt | sed 's/; 0 measured.*finished//')"; grep -E "panicked|bit for bit" $E/test-$t.txt | head -3
  done
}

# The tiny Q4_K_M MoE (the merged kernels' block types; 16 experts, so that the router's two
# blocks run as a cluster on sm_90) the sanitizer runs use, at $TM, and
# the 11 tokens they trace (--chunk 3 --decode 4: 7 prefilled in chunks of 3, then 4 steps).
TM=/tmp/tiny-moe-q4km.gguf
TOK=81,119,101,110,51,77,111,69,5,9,12
gen_tiny_moe() {
  $F gen-model --preset tiny-moe --quant q4_k_m --seed 3 --hidden 256 --heads 4 --kv-heads 2 --head-dim 64 --expert-ffn 256 --experts 16 --top-k 4 --vocab 512 --layers 3 --out $TM > $E/gen-tiny.txt 2>&1 || echo "tiny q4_k_m gen failed: $(tail -2 $E/gen-tiny.txt)"
}

# A bench log's per-token line: untraced and traced decode times.
per() { grep -o 'per token untraced [0-9.]* ms, traced (every stage) [0-9.]* ms' $1; }

# Run a command under kernel-source variant $1 (decode.sh, merged.sh): "base" the sources built
# into the binaries (or .gpu/kernels-base when sent), "new" the working tree's, NAME those in
# .gpu/kernels-NAME (the built-in ones without that folder); .gpu/env-NAME, when sent, holds
# VAR=value lines set for that variant alone (a switch such as FALSIFIER_CUDA_AHEAD=0).
variant() {
  local v=$1 k=; shift
  case $v in
    base) [ -d .gpu/kernels-base ] && k=$PWD/.gpu/kernels-base;;
    new) k=$PWD/src/backend/cuda/kernels;;
    *) [ -d .gpu/kernels-$v ] && k=$PWD/.gpu/kernels-$v;;
  esac
  ( if [ -f .gpu/env-$v ]; then set -a; . .gpu/env-$v; set +a; fi
    if [ -n "$k" ]; then export FALSIFIER_CUDA_KERNELS=$k; else unset FALSIFIER_CUDA_KERNELS; fi
    "$@" )
}

# C-KV-CACHE on CUDA and compute-sanitizer (memcheck, racecheck) on the tiny Q4_K_M MoE at $TM
# (gen_tiny_moe first), under a schedule and on the graph path; logs in $E, a line each.
checks() {
  timeout 120 $F run contracts/kv-cache.yaml --candidate cuda --require-gpu --report-dir $E/kv-cuda > $E/kv-cuda.txt 2>&1
  echo "kv-cache on cuda rc=$? $(tail -1 $E/kv-cuda.txt)"
  for tool in memcheck racecheck; do
    timeout 60 compute-sanitizer --tool $tool $F trace $TM --backend cuda --tokens $TOK --chunk 3 --decode 4 --out /tmp/san.safetensors > $E/sanitizer-$tool-q4km.txt 2>&1
    echo "sanitizer $tool tiny-moe q4_k_m rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $E/sanitizer-$tool-q4km.txt)"
    timeout 60 compute-sanitizer --tool $tool $F trace $TM --backend cuda --tokens $TOK --chunk 3 --decode 4 --stages logits --out /tmp/san.safetensors > $E/sanitizer-$tool-q4km-graph.txt 2>&1
    echo "sanitizer $tool tiny-moe q4_k_m graph rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $E/sanitizer-$tool-q4km-graph.txt)"
  done
}

# Bench $M ($B) with FALSIFIER_CUDA_TIMELINE under a command (a shell function such as
# `variant NAME $F`, or a binary), then tools/gpu/timeline.py's summary: timeline_notes NAME
# command... Leaves $E/summary-NAME.txt and the xz-compressed timeline.
timeline_notes() {
  local n=$1; shift
  ( export FALSIFIER_CUDA_TIMELINE=$E/tl-$n.csv; "$@" $B $M ) > $E/timed-$n.txt 2>&1
  echo "$n with the timeline: $(per $E/timed-$n.txt)"
  python3 tools/gpu/timeline.py $E/tl-$n.csv | tee $E/summary-$n.txt | head -${TIMELINE_LINES:-14}
  xz -T4 -6 $E/tl-$n.csv
}
