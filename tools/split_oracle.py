#!/usr/bin/env python3
"""Independent checks of a split GGUF model against the same model in one file.

    python3 tools/split_oracle.py --check gguf     --first M-00001-of-0000N.gguf --whole M.gguf
    python3 tools/split_oracle.py --check llamacpp --first M-00001-of-0000N.gguf --whole M.gguf

`gguf` (needs gguf-py and numpy): gguf-py's own reader opens every shard; each says it is
shard i of N (`split.no`, `split.count`) and counts all tensors (`split.tensors.count`); the
first shard holds the whole file's metadata; the shards' tensors, in order, are the whole
file's tensors with the same types, shapes and bytes.

`llamacpp` (needs llama-cpp-python): llama.cpp loads the model by its first shard, and its
logits over a prompt are bit-equal to those of the whole file.

Exit 0 when the checks hold, 1 when one fails, 2 when a package is missing.
"""
import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pyreq import need  # noqa: E402

SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")


def fail(msg):
    sys.stderr.write(f"split_oracle: {msg}\n")
    sys.exit(1)


def field_bytes(f):
    """A metadata field as its bytes on disk (key, type and value)."""
    return b"".join(p.tobytes() for p in f.parts)


def check_gguf(first, whole):
    need("numpy", "gguf")
    from gguf import GGUFReader

    m = re.fullmatch(r"(.*)-00001-of-(\d{5})\.gguf", first)
    if not m:
        fail(f"{first}: not named as a first shard (...-00001-of-NNNNN.gguf)")
    prefix, n = m.group(1), int(m.group(2))
    w = GGUFReader(whole)
    shards = [GGUFReader(f"{prefix}-{i + 1:05d}-of-{n:05d}.gguf") for i in range(n)]
    total = sum(len(r.tensors) for r in shards)
    for i, r in enumerate(shards):
        got = [r.fields[k].parts[-1][0] if k in r.fields else None for k in SPLIT_KEYS]
        if got != [i, n, total]:
            fail(f"shard {i + 1}: {SPLIT_KEYS} = {got}, want {[i, n, total]}")
    whole_keys = {k: field_bytes(f) for k, f in w.fields.items() if not k.startswith("GGUF.")}
    first_keys = {k: field_bytes(f) for k, f in shards[0].fields.items()
                  if not k.startswith("GGUF.") and k not in SPLIT_KEYS}
    if whole_keys != first_keys:
        diff = sorted(k for k in whole_keys.keys() | first_keys.keys()
                      if whole_keys.get(k) != first_keys.get(k))
        fail(f"first shard's metadata differ from the whole file's at {diff[:5]}")
    for i, r in enumerate(shards[1:], start=2):
        extra = [k for k in r.fields if not k.startswith("GGUF.") and k not in SPLIT_KEYS]
        if extra:
            fail(f"shard {i} holds metadata beyond the split keys: {extra}")
    split_tensors = [t for r in shards for t in r.tensors]
    if [t.name for t in split_tensors] != [t.name for t in w.tensors]:
        fail("the shards' tensors are not the whole file's, in order")
    for a, b in zip(split_tensors, w.tensors):
        if a.tensor_type != b.tensor_type or list(a.shape) != list(b.shape):
            fail(f"tensor {a.name}: {a.tensor_type} {list(a.shape)} vs {b.tensor_type} {list(b.shape)}")
        if a.data.tobytes() != b.data.tobytes():
            fail(f"tensor {a.name}: bytes differ")
    print(f"gguf-py: {n} shards, {total} tensors, metadata and bytes equal to {os.path.basename(whole)}")


def check_llamacpp(first, whole, tokens):
    need("numpy", ("llama_cpp", "llama-cpp-python"))
    import numpy as np
    from llama_cpp import Llama

    def logits(path):
        m = Llama(model_path=path, n_ctx=64, logits_all=True, n_threads=1, verbose=False)
        m.eval(tokens)
        return np.array(m.scores[: len(tokens)]).copy()

    a, b = logits(first), logits(whole)
    if not np.isfinite(a).all() or not np.abs(a).max() > 0:
        fail(f"llama.cpp's logits of the split model are degenerate (max |x| {np.abs(a).max()})")
    if not np.array_equal(a, b):
        fail(f"llama.cpp's logits differ: max |split - whole| = {np.abs(a - b).max()}")
    print(f"llama.cpp: split and whole logits bit-equal over {len(tokens)} tokens, shape {a.shape}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", choices=["gguf", "llamacpp"], required=True)
    ap.add_argument("--first", required=True, help="the first shard, NAME-00001-of-0000N.gguf")
    ap.add_argument("--whole", required=True, help="the same model in one file")
    ap.add_argument("--tokens", default="1,2,3,4")
    a = ap.parse_args()
    if a.check == "gguf":
        check_gguf(a.first, a.whole)
    else:
        check_llamacpp(a.first, a.whole, [int(t) for t in a.tokens.split(",")])


if __name__ == "__main__":
    main()
