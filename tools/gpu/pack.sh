#!/bin/bash
# Fill .gpu/ with the binaries a GPU run needs, built from the current tree (see README "GPU
# runs"): falsifier, the falsify and cli test targets, and lib-tests (the library's test binary,
# the one that holds backend::cuda::gpu_tests). Each is the newest build of its target, so an
# older binary left in target/release/deps is never sent; debug info is stripped to fit the
# device tool's 64 MiB. Writes .gpu/COMMIT (the tree must be committed).
set -euo pipefail
cd "$(dirname "$0")/../.."
# the test binaries find their fixtures under the path they were built in, which setup.sh
# links to the copy on the GPU host: only these two
case "$PWD" in /work/main|/work/wt-gpu) ;; *) echo "build in /work/main or /work/wt-gpu (setup.sh links those), not $PWD" >&2; exit 2;; esac
[ -z "$(git status --porcelain --untracked-files=no)" ] || { echo "commit first: .gpu/COMMIT names HEAD" >&2; exit 2; }
cargo build --release
cargo test --release --no-run 2>/dev/null
newest() {  # newest executable target/release/deps/$1-* for which `--list` shows $2
  for t in $(ls -t target/release/deps/"$1"-* | grep -v '\.d$'); do
    # grep reads the whole listing: with -q it would stop early and pipefail would see SIGPIPE
    [ -x "$t" ] && "$t" --list 2>/dev/null | grep -- "$2" >/dev/null && { echo "$t"; return; }
  done
  echo "no test binary $1 listing $2" >&2; exit 2
}
rm -rf .gpu && mkdir .gpu
cp target/release/falsifier .gpu/falsifier
cp "$(newest falsifier backend::cuda::gpu_tests)" .gpu/lib-tests
cp "$(newest falsify FALSIFY-)" .gpu/falsify
cp "$(newest cli ': test')" .gpu/cli-tests
strip --strip-debug .gpu/falsifier .gpu/lib-tests .gpu/falsify .gpu/cli-tests
git rev-parse HEAD > .gpu/COMMIT
ls -la .gpu
