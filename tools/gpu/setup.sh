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
