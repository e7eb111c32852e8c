//! Text prompts: falsifier's tokenizer (src/model/tokenizer.rs, built from a GGUF's own metadata)
//! against transformers' ids for the same file and string (fixtures/tokenizer-golden.json, made
//! by tools/golden/make_tokenizer_golden.py), on the golden fixtures' byte-level tokenizers and on
//! real ones (Llama 3, Qwen2, Llama 2 SentencePiece, GPT-2); and bad tokenizer metadata.

use std::io::Read;
use std::path::{Path, PathBuf};

use falsifier::model::gguf::{GgufFile, GgufWriter, MetaValue};
use falsifier::model::tokenizer::GgufTokenizer;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Open a fixture GGUF, gunzipping `.gguf.gz` in memory (the real vocabularies are stored
/// compressed; fixtures/README.md).
fn open(rel: &str) -> GgufFile {
    let path = root().join(rel);
    if rel.ends_with(".gz") {
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap())
            .read_to_end(&mut bytes)
            .unwrap();
        GgufFile::from_bytes(rel, bytes).unwrap()
    } else {
        GgufFile::open(&path).unwrap()
    }
}

fn golden() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("fixtures/tokenizer-golden.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn every_golden_string_tokenizes_as_transformers_does() {
    let g = golden();
    let strings: Vec<&str> = g["strings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(strings.len() >= 60, "{} strings", strings.len());
    let sets = g["tokenizers"].as_array().unwrap();
    assert_eq!(sets.len(), 7);
    let mut wrong = Vec::new();
    let mut checked = 0;
    for set in sets {
        let file = set["file"].as_str().unwrap();
        let tok = GgufTokenizer::from_gguf(&open(file))
            .unwrap()
            .unwrap_or_else(|| panic!("{file}: no tokenizer"));
        let expected = set["ids"].as_array().unwrap();
        assert_eq!(expected.len(), strings.len(), "{file}");
        for (s, want) in strings.iter().zip(expected) {
            let want = ids(want);
            let got = tok.encode(s).unwrap();
            checked += 1;
            if got != want {
                wrong.push(format!("{file}: {s:?}\n  want {want:?}\n  got  {got:?}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {checked} differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn pieces_spell_the_text_back() {
    // Llama 3 (byte-level) and Llama 2 (SentencePiece): a position's piece is the text its token
    // stands for, leading space included; the pieces of a prompt concatenate to the prompt.
    for (file, bos) in [
        ("fixtures/tokenizers/ggml-vocab-llama-bpe.gguf.gz", None),
        (
            "fixtures/tokenizers/ggml-vocab-llama-spm.gguf.gz",
            Some("<s>"),
        ),
    ] {
        let tok = GgufTokenizer::from_gguf(&open(file)).unwrap().unwrap();
        let text = "Hello world\n\tdigits 12345 and 日本";
        let ids = tok.encode(text).unwrap();
        let pieces = tok.pieces(&ids).unwrap();
        let mut joined: String = pieces.concat();
        if let Some(b) = bos {
            assert_eq!(pieces[0], b, "{file}");
            joined = joined[b.len()..].to_string();
        }
        let joined = joined.strip_prefix(' ').unwrap_or(&joined); // SentencePiece's own prefix
        assert_eq!(joined, text, "{file}: {pieces:?}");
        assert!(pieces.iter().any(|p| p == " world"), "{file}: {pieces:?}");
        assert_eq!(tok.piece(u32::MAX), None);
    }
}

/// The golden llama3-tiny fixture with some tokenizer keys replaced or dropped.
fn patched(patch: &[(&str, Option<MetaValue>)]) -> GgufFile {
    let model = GgufFile::open(&root().join("fixtures/llama3-tiny/llama3-tiny-f32.gguf")).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in model.metadata() {
        if !patch.iter().any(|(p, _)| p == k) {
            w.add_kv(k, v.clone());
        }
    }
    for (k, v) in patch {
        if let Some(v) = v {
            w.add_kv(k, v.clone());
        }
    }
    for t in model.tensors() {
        w.add_tensor(&t.name, t.dims.clone(), t.ty).unwrap();
    }
    let mut out = Vec::new();
    w.write_to(&mut out, |i, sink| {
        let t = &model.tensors()[i];
        sink.write_all(model.tensor_data(t))
            .map_err(|e| falsifier::Error::internal(e.to_string()))
    })
    .unwrap();
    GgufFile::from_bytes("bad-tokenizer.gguf", out).unwrap()
}

#[test]
fn bad_tokenizer_metadata_is_an_error_naming_file_and_key() {
    let s = |v: &str| Some(MetaValue::String(v.into()));
    // (keys to replace, or drop with None; the key the error must name; what it must say)
    type Case<'a> = (Vec<(&'a str, Option<MetaValue>)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("tokenizer.ggml.model", s("wordpiece"))],
            "tokenizer.ggml.model",
            "`wordpiece` is not supported",
        ),
        (
            vec![("tokenizer.ggml.pre", s("deepseek-llm"))],
            "tokenizer.ggml.pre",
            "`deepseek-llm` is not supported",
        ),
        (
            vec![("tokenizer.ggml.merges", None)],
            "tokenizer.ggml.merges",
            "missing",
        ),
        (
            vec![("tokenizer.ggml.merges", s("Ġ Ġ"))],
            "tokenizer.ggml.merges",
            "want an array of strings",
        ),
        (
            vec![(
                "tokenizer.ggml.merges",
                Some(MetaValue::Array(vec![MetaValue::String("Ġ nope".into())])),
            )],
            "tokenizer.ggml.tokens",
            "cannot build the tokenizer",
        ),
        (
            vec![("tokenizer.ggml.bos_token_id", Some(MetaValue::U32(1 << 20)))],
            "tokenizer.ggml.bos_token_id",
            "past the vocabulary",
        ),
        (
            vec![("tokenizer.ggml.add_bos_token", Some(MetaValue::Bool(true)))],
            "tokenizer.ggml.bos_token_id",
            "missing",
        ),
        (
            vec![(
                "tokenizer.ggml.token_type",
                Some(MetaValue::Array(vec![MetaValue::I32(1)])),
            )],
            "tokenizer.ggml.token_type",
            "1 entries for 272 tokens",
        ),
    ];
    for (patch, key, what) in cases {
        let f = patched(&patch);
        let e = GgufTokenizer::from_gguf(&f).unwrap_err().to_string();
        assert!(
            e.contains("bad-tokenizer.gguf") && e.contains(key) && e.contains(what),
            "{patch:?}: {e}"
        );
    }
    // No tokenizer at all (or `none`, as small synthetic models write) is not an error.
    assert!(
        GgufTokenizer::from_gguf(&patched(&[("tokenizer.ggml.model", s("none"))]))
            .unwrap()
            .is_none()
    );
    assert!(
        GgufTokenizer::from_gguf(&patched(&[("tokenizer.ggml.model", None)]))
            .unwrap()
            .is_none()
    );
}

#[test]
fn golden_file_records_its_versions() {
    let g = golden();
    for k in ["transformers", "tokenizers", "llama_cpp_python"] {
        assert!(g["versions"][k].is_string(), "{k}");
    }
    assert!(Path::new(&root().join("tools/golden/make_tokenizer_golden.py")).exists());
}

/// A hand-made SentencePiece vocabulary without merges (fuzz/seeds/gguf/tokenizer-spm.gguf,
/// written by tests/fuzz_replay.rs): the merges come from the scores, byte fallback spells the
/// newline. Expected ids are transformers 5.24.0's for the same file.
#[test]
fn small_sentencepiece_vocabulary_matches_transformers() {
    let f = GgufFile::open(&root().join("fuzz/seeds/gguf/tokenizer-spm.gguf")).unwrap();
    let tok = GgufTokenizer::from_gguf(&f).unwrap().unwrap();
    for (text, want) in [
        ("ab a", vec![1, 264, 262]),
        (" ab", vec![1, 264]),
        ("abc", vec![1, 264, 102]),
        ("<s>a", vec![1, 1, 260]),
        ("b\nab", vec![1, 259, 261, 13, 263]),
    ] {
        assert_eq!(tok.encode(text).unwrap(), want, "{text:?}");
    }
    assert_eq!(tok.piece(13).as_deref(), Some("\n"));
    assert_eq!(tok.piece(264).as_deref(), Some(" ab"));
}

/// With `tokenizer.ggml.add_bos_token = true` a byte-level tokenizer prepends BOS, as
/// transformers does (checked by hand: "Hello world" gives [128000, 9906, 1917] there with the
/// Llama 3 vocabulary so patched); the rest of each sequence is the golden one.
#[test]
fn add_bos_token_prepends_bos_to_a_byte_level_tokenizer() {
    let file = "fixtures/tokenizers/ggml-vocab-llama-bpe.gguf.gz";
    let src = open(file);
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata() {
        w.add_kv(k, v.clone());
    }
    w.add_kv("tokenizer.ggml.add_bos_token", MetaValue::Bool(true));
    let mut bytes = Vec::new();
    w.write_to(&mut bytes, |_, _| Ok(())).unwrap();
    let tok = GgufTokenizer::from_gguf(&GgufFile::from_bytes("bos.gguf", bytes).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(tok.encode("Hello world").unwrap(), [128000, 9906, 1917]);
    let g = golden();
    let set = g["tokenizers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["file"] == file)
        .unwrap();
    for (s, want) in g["strings"]
        .as_array()
        .unwrap()
        .iter()
        .zip(set["ids"].as_array().unwrap())
    {
        let mut want = ids(want);
        want.insert(0, 128000);
        assert_eq!(tok.encode(s.as_str().unwrap()).unwrap(), want, "{s}");
    }
}
