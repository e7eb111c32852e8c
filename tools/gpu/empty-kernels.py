#!/usr/bin/env python3
"""What a decode step's launch structure costs with no work in it (a diagnostic, not a model).

Copies the kernel sources from SRC to DST with every one-token decode kernel returning right
after its pdl_wait() (attn_norm + q/k/v, attention, output projection, ffn_norm + router +
routing, expert gate/up, expert down + combine) and no L2 prefetches anywhere: the same
launches, grids, programmatic dependent launch and graph as the real step, no loads, no
arithmetic. Benched through FALSIFIER_CUDA_KERNELS=DST (tools/gpu/decode.sh VARIANTS=empty), the
per-token time is the floor that launching alone sets; its outputs are garbage.

    python3 tools/gpu/empty-kernels.py src/backend/cuda/kernels /tmp/kernels-empty
"""
import pathlib
import re
import sys

DECODE_KERNELS = ["matmulwn_##NAME(", "matmulwn_mix_##NAME(", "matmulwn_route_##NAME(", "matmulwr_##NAME(",
                  "gate_up_##NAME(", "down_combine_##NAME(", "attn_decode_qk##SUF("]


def empty(text, path):
    for name in DECODE_KERNELS:
        at = text.find(name)
        if at < 0:
            continue
        wait = text.find("pdl_wait();", at)
        if wait < 0:
            sys.exit(f"{path}: no pdl_wait() after {name}")
        text = text[:wait] + "pdl_wait(); return;" + text[wait + len("pdl_wait();"):]
    # prefetches become no-ops (the asm statements that issue them)
    return re.sub(r'asm volatile\("prefetch\.global\.L2 \[%0\];" ::"l"\(([^)]*)\)\);', r"(void)(\1);", text)


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    dst.mkdir(parents=True, exist_ok=True)
    found = 0
    for f in sorted(src.iterdir()):
        text = f.read_text()
        out = empty(text, f)
        found += sum(name in text for name in DECODE_KERNELS)
        (dst / f.name).write_text(out)
    if found != len(DECODE_KERNELS):
        sys.exit(f"{src}: found {found} of the {len(DECODE_KERNELS)} decode kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
