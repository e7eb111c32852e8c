#!/usr/bin/env python3
"""ggml's own encodings of the 48 test rows in IQ4_NL, IQ4_XS and MXFP4, for quantize.rs's test.

The rows are the `input` of fixtures/quant-encode-ggml.safetensors (48 x 256 values: gaussian,
one-signed, outliers, exact ties, zeros, constants; scales 1 to 1e-5). Each is encoded by
`ggml_quantize_chunk(type, src, dst, 0, 48, 256, imatrix=NULL)` from the libggml-base shared
library that llama-cpp-python installs, called through ctypes: the path llama-quantize takes
(quantize_iq4_nl / quantize_iq4_xs with no importance matrix, quantize_row_mxfp4_ref).

Output: quant-encode-ggml-iq.safetensors with `input` (float32 [48, 256]) and one uint8 key per
type (IQ4_NL, IQ4_XS, MXFP4: the 48 rows' blocks, row after row); the ggml version and commit in
the metadata (key `ggml`).
Run:  pip install llama-cpp-python numpy safetensors && python3 make_iq_encode.py [--out DIR]
"""
import argparse
import ctypes
import glob
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pyreq import need  # noqa: E402

need("numpy", "safetensors", ("llama_cpp", "llama-cpp-python"))

import numpy as np  # noqa: E402
import llama_cpp  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TYPES = {"IQ4_NL": (20, 32, 18), "IQ4_XS": (23, 256, 136), "MXFP4": (39, 32, 17)}


def libggml():
    pkg = os.path.dirname(llama_cpp.__file__)
    found = sorted(glob.glob(os.path.join(pkg, "lib", "libggml-base.so*")))
    if not found:
        sys.exit(f"no libggml-base.so under {pkg}/lib")
    lib = ctypes.CDLL(found[0])
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_version.restype = ctypes.c_char_p
    lib.ggml_commit.restype = ctypes.c_char_p
    return lib, found[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.normpath(os.path.join(HERE, "..", "..", "fixtures")))
    a = ap.parse_args()
    x = load_file(os.path.join(HERE, "..", "..", "fixtures", "quant-encode-ggml.safetensors"))["input"]
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n = x.shape
    lib, path = libggml()
    out = {"input": x}
    for name, (tid, bv, bb) in TYPES.items():
        dst = np.zeros(rows * n // bv * bb, dtype=np.uint8)
        size = lib.ggml_quantize_chunk(tid, x.ctypes.data, dst.ctypes.data, 0, rows, n, None)
        assert size == dst.size, (name, size, dst.size)
        out[name] = dst
    version = lib.ggml_version().decode()
    commit = lib.ggml_commit().decode()
    # one metadata key: safetensors writes several in a random order, and the file should
    # regenerate byte for byte
    meta = {"ggml": f"ggml {version} (commit {commit}), {os.path.basename(path)} of llama-cpp-python "
                    f"{llama_cpp.__version__}: ggml_quantize_chunk(type, input, dst, 0, 48, 256, NULL)"}
    os.makedirs(a.out, exist_ok=True)
    dest = os.path.join(a.out, "quant-encode-ggml-iq.safetensors")
    save_file(out, dest, metadata=meta)
    print("wrote", dest, meta)


if __name__ == "__main__":
    main()
