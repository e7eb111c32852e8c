#!/usr/bin/env python3
"""What a decode step's launch structure costs with no work in it (a diagnostic, not a model).

Copies the kernel sources from SRC to DST with every one-token decode kernel returning right
after its pdl_wait() (attn_norm + q/k/v, attention, output projection, ffn_norm + router +
routing, expert gate/up, expert down + combine) and no L2 prefetches anywhere: the same
launches, grids, programmatic dependent launch and graph as the real step, no loads, no
arithmetic. Benched through FALSIFIER_CUDA_KERNELS=DST (tools/gpu/decode.sh VARIANTS=empty), the
per-token time is the floor that launching alone sets; its outputs are garbage.

    python3 tools/gpu/empty-kernels.py src/backend/cuda/kernels /tmp/kernels-empty

With kernel names after DST (qkv, qkv_mix, route, proj, gate_up, down, attn) only those are
emptied and every prefetch stays: what the step would cost if those launches' work were folded
away (their launches and waits kept), with garbage downstream of them (a one-token step's
routing then reads the buffers' stale picks, still k experts a token).
"""
import pathlib
import re
import sys

KERNELS_BY_NAME = {"qkv": "matmulwn_##NAME(", "qkv_mix": "matmulwn_mix_##NAME(",
                   "route": "matmulwn_route_##NAME(", "proj": "matmulwr_##NAME(",
                   "gate_up": "gate_up_##NAME(", "down": "down_combine_##NAME(",
                   "attn": "attn_decode_qk##SUF("}
DECODE_KERNELS = list(KERNELS_BY_NAME.values())


def empty(text, path, kernels=DECODE_KERNELS, keep_prefetches=False):
    for name in kernels:
        at = text.find(name)
        if at < 0:
            continue
        wait = text.find("pdl_wait();", at)
        if wait < 0:
            sys.exit(f"{path}: no pdl_wait() after {name}")
        text = text[:wait] + "pdl_wait(); return;" + text[wait + len("pdl_wait();"):]
    if keep_prefetches:
        return text
    # prefetches become no-ops (the asm statements that issue them)
    return re.sub(r'asm volatile\("prefetch\.global\.L2 \[%0\];" ::"l"\(([^)]*)\)\);', r"(void)(\1);", text)


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    unknown = [n for n in sys.argv[3:] if n not in KERNELS_BY_NAME]
    if unknown:
        sys.exit(f"unknown kernel name {unknown[0]!r}; names: {', '.join(KERNELS_BY_NAME)}")
    kernels = [KERNELS_BY_NAME[n] for n in sys.argv[3:]] or DECODE_KERNELS
    dst.mkdir(parents=True, exist_ok=True)
    found = 0
    for f in sorted(src.iterdir()):
        text = f.read_text()
        out = empty(text, f, kernels, keep_prefetches=len(sys.argv) > 3)
        found += sum(name in text for name in kernels)
        (dst / f.name).write_text(out)
    if found != len(kernels):
        sys.exit(f"{src}: found {found} of the {len(kernels)} decode kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
