#!/usr/bin/env bash
# Prove the 8-value device decoders bit-exact against the 1-value ones, and the i-quant,
# ternary and MXFP4 ones against gguf-py's vectors, on the host.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
"${CXX:-c++}" -std=c++17 -O2 -ffp-contract=off -o "$out/dq8_check" "$here/dq8_check.cpp"
"$out/dq8_check" "$here/../../fixtures/iq-vectors.safetensors"
"${CXX:-c++}" -std=c++17 -fsyntax-only -Wall -Werror -Wno-unused-function -Wno-unknown-pragmas -Wno-sign-compare \
    "$here/syntax_check.cpp"
"${CXX:-c++}" -std=c++17 -O1 -DFALSIFIER_HOST_MAIN -w -o "$out/host_main" "$here/syntax_check.cpp"
"$out/host_main"
"${CXX:-c++}" -std=c++17 -O1 -DFALSIFIER_DOT_MAIN -w -o "$out/dot_main" "$here/syntax_check.cpp"
"$out/dot_main"
echo "kernel sources: host syntax check ok"
