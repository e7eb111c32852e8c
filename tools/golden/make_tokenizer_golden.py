#!/usr/bin/env python3
"""Golden token ids for text prompts: what transformers' tokenizer, built from a GGUF file's own
tokenizer metadata (`AutoTokenizer.from_pretrained(dir, gguf_file=name)`), gives for each
(tokenizer, string) pair. tests/tokenizer.rs checks falsifier's ids against every one.

    python3 -m pip install torch transformers tokenizers gguf numpy
    python3 tools/golden/make_tokenizer_golden.py [--llamacpp /path/to/python-with-llama_cpp]

Tokenizers: the byte-level ones of the golden fixtures (fixtures/*/), and llama.cpp's vocab-only
GGUFs of real models (fixtures/tokenizers/*.gguf.gz: Llama 3, Qwen2, Llama 2 SentencePiece,
GPT-2). Strings: llama.cpp's own tokenizer test strings (the `.inp` file shipped beside those
vocabularies, kept in this script's output) and awkward ones of ours.

With --llamacpp, llama.cpp's tokenizer (llama-cpp-python, vocab_only) is run as a second oracle:
its ids are recorded beside transformers' and every disagreement is listed in the output (BOS
aside: where the file has no `add_bos_token` key the two defaults differ; see
src/model/tokenizer.rs). The Rust test checks transformers' ids only.
"""

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

sys.path.insert(0, os.path.join(ROOT, "tools"))
from pyreq import need  # noqa: E402

need("torch", "transformers", "tokenizers", "gguf", "numpy")

import gguf  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

# Tokenizer files, relative to the repository root. One fixture per distinct tokenizer kind.
TOKENIZERS = [
    "fixtures/llama3-tiny/llama3-tiny-f32.gguf",  # byte-level, pre llama-bpe, 272 tokens
    "fixtures/qwen2-tiny/qwen2-tiny-f32.gguf",  # byte-level, pre qwen2, 272 tokens
    "fixtures/qwen3-tiny/qwen3-tiny-f32.gguf",  # byte-level, pre qwen2, 260 tokens
    "fixtures/tokenizers/ggml-vocab-llama-bpe.gguf.gz",  # Llama 3
    "fixtures/tokenizers/ggml-vocab-qwen2.gguf.gz",  # Qwen2
    "fixtures/tokenizers/ggml-vocab-llama-spm.gguf.gz",  # Llama 2 / Mistral SentencePiece
    "fixtures/tokenizers/ggml-vocab-gpt-2.gguf.gz",  # GPT-2 (pre gpt-2: the default split)
]

LLAMA_TEST_SPLIT = "\n__ggml_vocab_test__\n"
LLAMA_TEST_STRINGS = os.path.join(os.path.dirname(__file__), "llamacpp_vocab_test.inp")

AWKWARD = [
    "",
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "日本語のテキストと中文文本",  # CJK
    "emoji 🦙🔥👩‍👩‍👧 flags 🇫🇷",  # emoji, ZWJ sequence, regional indicators
    "e\u0301 a\u0308 combining marks, and precomposed é ä",  # combining marks
    "spaces     runs  and\ttabs\t\tand\nnewlines\n\n\nend",
    "   leading and trailing   ",
    "\n\nstarts with newlines",
    "digits 1 12 123 1234 12345 1234567890 3.14159 -42",
    "<|begin_of_text|>Hello<|eot_id|>",  # Llama 3 control tokens
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",  # Qwen / golden fixtures
    "<s>[INST] hi [/INST]</s>",  # Llama 2
    "<|endoftext|> after end",
    "a<|im_start|>b",
    "I'm sure it's they'll we've I'D YOU'RE",
    "mixed: Ünïcödé ñ ß Ωμέγα Привет مرحبا שלום नमस्ते",
    "\u00a0non-breaking\u2003em\u3000ideographic spaces",
    "control \u0001\u0007 chars and \u200b zero width",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 outside the BMP 𠀀",
    "x" * 64,
]


def read_llama_strings():
    with open(LLAMA_TEST_STRINGS, encoding="utf-8") as f:
        text = f.read()
    parts = text.split(LLAMA_TEST_SPLIT)
    if parts and parts[-1] in ("", "\n"):
        parts.pop()
    return parts


def materialise(rel, tmp):
    """A plain .gguf path for `rel` (gunzipped into `tmp` when compressed)."""
    path = os.path.join(ROOT, rel)
    if not rel.endswith(".gz"):
        return path
    out = os.path.join(tmp, os.path.basename(rel)[: -len(".gz")])
    with gzip.open(path, "rb") as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return out


def transformers_ids(path, strings):
    """transformers' ids for each string, and whether it prepends BOS."""
    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    return [tok(s)["input_ids"] for s in strings], bool(getattr(tok, "add_bos_token", False))


def vocab_info(path):
    """(number of tokens, bos id or None) as the file states them."""
    rd = gguf.GGUFReader(path)
    n = len(rd.fields["tokenizer.ggml.tokens"].contents())
    bos = rd.fields.get("tokenizer.ggml.bos_token_id")
    return n, (int(bos.contents()) if bos is not None else None)


LLAMACPP_SNIPPET = r"""
import json, sys
from llama_cpp import Llama
path, strings = json.load(sys.stdin)
m = Llama(model_path=path, vocab_only=True, verbose=False)
import llama_cpp
print(json.dumps({"version": llama_cpp.__version__,
                  "ids": [m.tokenize(s.encode("utf-8"), add_bos=True, special=True) for s in strings]}))
"""


def llamacpp_ids(python, path, strings):
    out = subprocess.run([python, "-c", LLAMACPP_SNIPPET], input=json.dumps([path, strings]),
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "fixtures", "tokenizer-golden.json"))
    ap.add_argument("--llamacpp", help="a python interpreter with llama-cpp-python installed")
    args = ap.parse_args()

    strings = read_llama_strings() + AWKWARD
    doc = {
        "made_by": "tools/golden/make_tokenizer_golden.py",
        "versions": {
            "python": platform.python_version(),
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "gguf": getattr(gguf, "__version__", "unknown"),
        },
        "strings": strings,
        "tokenizers": [],
    }
    disagreements = 0
    with tempfile.TemporaryDirectory() as tmp:
        for rel in TOKENIZERS:
            path = materialise(rel, tmp)
            ids, adds_bos = transformers_ids(path, strings)
            n_vocab, bos = vocab_info(path)
            entry = {"file": rel, "ids": ids}
            # transformers' GPT2Tokenizer keeps its default unknown token `<|endoftext|>` when the
            # file names none, and where the vocabulary lacks that token adds it as a new id past
            # the vocabulary (Llama 3): an id no model can embed. Those strings expect what
            # llama.cpp gives instead (the text in plain pieces), BOS as transformers adds it.
            past = [i for i, x in enumerate(ids) if any(t >= n_vocab for t in x)]
            if past and not args.llamacpp:
                sys.exit(f"{rel}: transformers gives ids past the vocabulary for strings {past}; "
                         "run with --llamacpp to take llama.cpp's ids there")
            ll = llamacpp_ids(args.llamacpp, path, strings) if args.llamacpp else None
            if past:
                entry["transformers_past_vocab"] = {str(i): ids[i] for i in past}
                for i in past:
                    x = ll["ids"][i]
                    ids[i] = x[1:] if (not adds_bos and bos is not None and x[:1] == [bos]) else x
            if ll is not None:
                doc["versions"]["llama_cpp_python"] = ll["version"]
                entry["llamacpp_ids"] = ll["ids"]
                diff = [i for i, (a, b) in enumerate(zip(ids, ll["ids"])) if a != b]
                # BOS alone: the defaults differ where the file has no add_bos_token key.
                bos_only = [i for i in diff if ll["ids"][i][1:] == ids[i]]
                entry["llamacpp_disagrees"] = [i for i in diff if i not in bos_only]
                entry["llamacpp_bos_only"] = len(bos_only)
                disagreements += len(entry["llamacpp_disagrees"])
                print(f"{rel}: {len(strings)} strings; llama.cpp agrees on "
                      f"{len(strings) - len(diff)}, BOS only on {len(bos_only)}, "
                      f"differs on {entry['llamacpp_disagrees']}")
            else:
                print(f"{rel}: {len(strings)} strings")
            doc["tokenizers"].append(entry)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=None, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {args.out}" + (f" ({disagreements} transformers/llama.cpp disagreements)"
                                 if args.llamacpp else ""))


if __name__ == "__main__":
    main()
