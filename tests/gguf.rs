//! GGUF reader tests: the golden fixtures against their manifest, and malformed input (every
//! truncation, byte flips, hand-built bad files), which must give errors naming the file, never
//! a panic.

use std::path::{Path, PathBuf};

use falsifier::model::GgmlType;
use falsifier::model::gguf::{GgufFile, MetaValue};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/qwen3moe-tiny")
        .join(name)
}

fn manifest() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn fixtures_match_manifest() {
    let m = manifest();
    let files = m["files"].as_object().unwrap();
    assert!(files.len() >= 2);
    for entry in files.values() {
        let f = GgufFile::open(&fixture(entry["gguf"].as_str().unwrap())).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.alignment(), 32);
        assert_eq!(f.file_len(), entry["gguf_bytes"].as_u64().unwrap());
        assert_eq!(f.sha256_hex(), entry["gguf_sha256"].as_str().unwrap());
        let want = entry["tensors"].as_array().unwrap();
        assert_eq!(f.tensors().len(), want.len());
        for (t, w) in f.tensors().iter().zip(want) {
            assert_eq!(t.name, w["name"].as_str().unwrap());
            assert_eq!(t.ty.name(), w["type"].as_str().unwrap(), "{}", t.name);
            let ne: Vec<u64> = w["ggml_ne"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            assert_eq!(t.dims, ne, "{}", t.name);
            assert_eq!(t.offset % 32, 0);
            assert_eq!(f.tensor_data(t).len() as u64, t.nbytes);
            assert_eq!(f.tensor(&t.name), Some(t));
        }
        // spot-check metadata against the HF config
        let cfg = &m["config"];
        assert_eq!(
            f.get("general.architecture").unwrap().as_str(),
            Some("qwen3moe")
        );
        assert_eq!(
            f.get("qwen3moe.block_count").unwrap().as_u64(),
            cfg["num_hidden_layers"].as_u64()
        );
        assert_eq!(
            f.get("qwen3moe.expert_count").unwrap().as_u64(),
            cfg["num_local_experts"].as_u64()
        );
        let eps = f.get("qwen3moe.attention.layer_norm_rms_epsilon").unwrap();
        assert!((eps.as_f64().unwrap() - 1e-6).abs() < 1e-12);
        let tokens = f.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
        assert_eq!(tokens.len() as u64, cfg["vocab_size"].as_u64().unwrap());
        assert_eq!(tokens[0].as_str(), Some("Ā"));
        assert_eq!(
            f.get("tokenizer.ggml.add_bos_token"),
            Some(&MetaValue::Bool(false))
        );
        assert_eq!(f.metadata().len(), 26);
        assert_eq!(f.metadata()[0].0, "general.architecture");
    }
}

#[test]
fn f32_tensor_data_is_the_weights() {
    let f = GgufFile::open(&fixture("qwen3moe-tiny-f32.gguf")).unwrap();
    let t = f.tensor("blk.0.attn_norm.weight").unwrap();
    assert_eq!(t.ty, GgmlType::F32);
    assert_eq!((t.row_len(), t.n_rows(), t.n_elements()), (64, 1, 64));
    let e = f.tensor("blk.0.ffn_down_exps.weight").unwrap();
    assert_eq!(
        (e.row_len(), e.n_rows(), e.n_elements()),
        (32, 512, 32 * 64 * 8)
    );
    let data = f.tensor_data(t);
    let vals: Vec<f32> = data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    // norm gains from the golden script are finite and not all equal
    assert!(vals.iter().all(|v| v.is_finite()));
    assert!(vals.iter().any(|v| *v != vals[0]));
}

fn expect_err(label: &str, bytes: Vec<u8>, needle: &str) {
    match GgufFile::from_bytes(label, bytes) {
        Ok(_) => panic!("{label}: parsed, want an error containing {needle:?}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with(label),
                "{label}: error does not name the file: {msg}"
            );
            assert!(msg.contains(needle), "{label}: want {needle:?} in: {msg}");
            assert_eq!(e.kind, falsifier::ErrorKind::Input);
        }
    }
}

#[test]
fn every_header_truncation_is_an_error() {
    let bytes = std::fs::read(fixture("qwen3moe-tiny-q8_0.gguf")).unwrap();
    let f = GgufFile::from_bytes("full", bytes.clone()).unwrap();
    let header = f.data_start() as usize;
    let data_end = f
        .tensors()
        .iter()
        .map(|t| f.data_start() + t.offset + t.nbytes)
        .max()
        .unwrap() as usize;
    let data_lens = (header..data_end).step_by(997).chain([data_end - 1]);
    for n in (0..header).chain(data_lens) {
        let label = format!("cut-{n}.gguf");
        let r = std::panic::catch_unwind(|| GgufFile::from_bytes(&label, bytes[..n].to_vec()));
        match r {
            Err(_) => panic!("panic on a file truncated to {n} bytes"),
            Ok(Ok(_)) => panic!("a file truncated to {n} bytes parsed"),
            Ok(Err(e)) => assert!(e.to_string().starts_with(&label), "{e}"),
        }
    }
    // cutting only the final padding leaves every tensor whole
    assert!(GgufFile::from_bytes("pad", bytes[..data_end].to_vec()).is_ok());
}

#[test]
fn byte_flips_in_the_header_never_panic() {
    let bytes = std::fs::read(fixture("qwen3moe-tiny-q8_0.gguf")).unwrap();
    let header = GgufFile::from_bytes("full", bytes.clone())
        .unwrap()
        .data_start() as usize;
    let (mut ok, mut err) = (0, 0);
    for i in 0..header {
        let orig = bytes[i];
        for v in [orig ^ 0x01, orig ^ 0x80, 0xff, 0x00] {
            if v == orig {
                continue;
            }
            let mut b = bytes.clone();
            b[i] = v;
            match std::panic::catch_unwind(move || GgufFile::from_bytes("flip", b)) {
                Err(_) => panic!("panic with byte {i} set to {v:#04x}"),
                Ok(Ok(_)) => ok += 1,
                Ok(Err(e)) => {
                    assert!(e.to_string().starts_with("flip"), "{e}");
                    err += 1
                }
            }
        }
    }
    // flips inside strings and values parse; flips in lengths and counts do not
    assert!(ok > 0 && err > 0, "ok {ok} err {err}");
}

/// A minimal GGUF image built by hand, independent of the crate's writer, so that each
/// malformed case can change one thing.
struct Img {
    version: u32,
    kv: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u32, u64)>,
    data_len: usize,
    alignment: usize,
}

impl Img {
    fn new() -> Img {
        Img {
            version: 3,
            kv: vec![("general.architecture".into(), 8, gstr("qwen3"))],
            tensors: vec![
                ("a".into(), vec![4, 2], 0, 0), // 32 bytes of f32
                ("b".into(), vec![32], 8, 32),  // one Q8_0 block: 34 bytes
                ("c".into(), vec![8], 0, 96),   // 32 bytes
            ],
            data_len: 128,
            alignment: 32,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(self.version.to_le_bytes());
        b.extend((self.tensors.len() as u64).to_le_bytes());
        b.extend((self.kv.len() as u64).to_le_bytes());
        for (k, t, v) in &self.kv {
            b.extend(gstr(k));
            b.extend(t.to_le_bytes());
            b.extend(v);
        }
        for (n, dims, ty, off) in &self.tensors {
            b.extend(gstr(n));
            b.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(ty.to_le_bytes());
            b.extend(off.to_le_bytes());
        }
        while !b.len().is_multiple_of(self.alignment) {
            b.push(0);
        }
        b.extend((0..self.data_len).map(|i| i as u8));
        b
    }
}

fn gstr(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend(s.as_bytes());
    b
}

#[test]
fn hand_built_image_parses() {
    let f = GgufFile::from_bytes("img", Img::new().bytes()).unwrap();
    assert_eq!(f.tensors().len(), 3);
    assert_eq!(f.tensor("b").unwrap().nbytes, 34);
    assert_eq!(f.tensor_data(f.tensor("c").unwrap())[0], 96);
    assert_eq!(
        f.get("general.architecture").unwrap().as_str(),
        Some("qwen3")
    );
    let mut v2 = Img::new();
    v2.version = 2;
    assert_eq!(GgufFile::from_bytes("v2", v2.bytes()).unwrap().version(), 2);
}

#[test]
fn malformed_images_are_errors() {
    let mut b = Img::new().bytes();
    b[0] = b'X';
    expect_err("magic", b, "not a GGUF file");

    for (v, needle) in [
        (1, "version 1"),
        (4, "version 4"),
        (0x0300_0000, "big-endian"),
    ] {
        let mut img = Img::new();
        img.version = v;
        expect_err("version", img.bytes(), needle);
    }

    let mut img = Img::new();
    img.kv.push(("x".into(), 13, vec![0; 4]));
    expect_err("vtype", img.bytes(), "unknown metadata value type 13");

    let mut img = Img::new();
    img.kv.push((
        "x".into(),
        9,
        [99u32.to_le_bytes().to_vec(), 0u64.to_le_bytes().to_vec()].concat(),
    ));
    expect_err("etype", img.bytes(), "unknown array element type 99");

    let mut img = Img::new();
    img.tensors[1].2 = 4; // Q4_2, removed from ggml
    expect_err("ggml-type", img.bytes(), "unknown ggml type id 4");

    let mut img = Img::new();
    img.tensors[2].3 = 100;
    expect_err("misaligned", img.bytes(), "not a multiple of the alignment");

    let mut img = Img::new();
    img.tensors[2].3 = 32; // on top of b
    expect_err("overlap", img.bytes(), "overlap");

    let mut img = Img::new();
    img.tensors[2].3 = 128; // one past the data
    expect_err("range", img.bytes(), "runs past the end of the file");

    let mut img = Img::new();
    img.tensors[2].1 = vec![1 << 32, 1 << 32];
    expect_err("overflow", img.bytes(), "overflow");

    let mut img = Img::new();
    img.tensors[2].1 = vec![u64::MAX];
    expect_err("ne-max", img.bytes(), "overflow");

    let mut img = Img::new();
    img.tensors[2].0 = "a".into();
    expect_err("dup-tensor", img.bytes(), "duplicate tensor name 'a'");

    let mut img = Img::new();
    img.kv
        .push(("general.architecture".into(), 8, gstr("qwen3moe")));
    expect_err(
        "dup-key",
        img.bytes(),
        "duplicate metadata key 'general.architecture'",
    );

    let mut img = Img::new();
    img.kv
        .push(("general.alignment".into(), 4, 48u32.to_le_bytes().to_vec()));
    expect_err("align", img.bytes(), "power of two");
    let mut img = Img::new();
    img.kv
        .push(("general.alignment".into(), 4, 0u32.to_le_bytes().to_vec()));
    expect_err("align0", img.bytes(), "power of two");
    let mut img = Img::new();
    img.kv
        .push(("general.alignment".into(), 10, 32u64.to_le_bytes().to_vec()));
    expect_err("align-ty", img.bytes(), "want u32");

    let mut img = Img::new();
    img.tensors[2].1 = vec![8, 1, 1, 1, 1];
    expect_err("ndims", img.bytes(), "5 dimensions");

    let mut img = Img::new();
    img.tensors[1].1 = vec![16, 2]; // Q8_0 rows of 16
    expect_err(
        "block",
        img.bytes(),
        "not a multiple of Q8_0's block size 32",
    );

    let mut img = Img::new();
    img.kv.push((
        "x".into(),
        8,
        [2u64.to_le_bytes().to_vec(), vec![0xc3, 0x28]].concat(),
    ));
    expect_err("utf8-value", img.bytes(), "not valid UTF-8");
    let mut img = Img::new();
    img.tensors[0].0 = "\u{fffd}".into();
    let mut b = img.bytes();
    let at = b
        .windows(3)
        .position(|w| w == "\u{fffd}".as_bytes())
        .unwrap();
    b[at] = 0xff;
    expect_err("utf8-name", b, "not valid UTF-8");

    let mut img = Img::new();
    img.kv.push(("x".into(), 7, vec![2]));
    expect_err("bool", img.bytes(), "neither 0 nor 1");
}

#[test]
fn huge_counts_are_errors_not_allocations() {
    // n_kv = 2^60 with a short file
    let mut b = Img::new().bytes();
    b[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes());
    expect_err(
        "nkv",
        b,
        "metadata count 1152921504606846976 is implausible",
    );
    let mut b = Img::new().bytes();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    expect_err("ntensors", b, "tensor count");
    let mut img = Img::new();
    img.kv.push((
        "x".into(),
        9,
        [
            4u32.to_le_bytes().to_vec(),
            (1u64 << 50).to_le_bytes().to_vec(),
        ]
        .concat(),
    ));
    expect_err("array", img.bytes(), "array length");
    let mut img = Img::new();
    img.kv
        .push(("x".into(), 8, u64::MAX.to_le_bytes().to_vec()));
    expect_err("string", img.bytes(), "runs past the end");
    // arrays of arrays nested past any real file
    let mut nested = Vec::new();
    for _ in 0..64 {
        nested.extend(9u32.to_le_bytes());
        nested.extend(1u64.to_le_bytes());
    }
    nested.extend(4u32.to_le_bytes());
    nested.extend(0u64.to_le_bytes());
    let mut img = Img::new();
    img.kv.push(("x".into(), 9, nested));
    expect_err("nested", img.bytes(), "nested deeper");
}

#[test]
fn open_names_missing_file() {
    let e = GgufFile::open(Path::new("/nonexistent/model.gguf")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/model.gguf"));
}

#[test]
fn gen_model_cli_writes_a_loadable_model() {
    use falsifier::model::config::ModelConfig;
    let dir = std::env::temp_dir().join(format!("falsifier-gen-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("m.gguf");
    let bin = env!("CARGO_BIN_EXE_falsifier");
    let run = |args: &[&str]| std::process::Command::new(bin).args(args).output().unwrap();
    let o = run(&[
        "gen-model",
        "--preset",
        "tiny-moe",
        "--quant",
        "q8_0",
        "--seed",
        "4",
        "--layers",
        "2",
        "--experts",
        "4",
        "--top-k",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let f = GgufFile::open(&out).unwrap();
    let c = ModelConfig::from_gguf(&f).unwrap();
    assert_eq!((c.n_layers, c.n_experts, c.n_experts_used), (2, 4, 3));
    c.validate_tensors(&f).unwrap();
    let o = run(&[
        "gen-model",
        "--preset",
        "nope",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown preset"));
    let o = run(&[
        "gen-model",
        "--preset",
        "tiny-moe",
        "--quant",
        "q3_k",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The golden q8_0 fixture with metadata keys replaced, written to a temp file.
fn edited_fixture(tag: &str, edits: &[(&str, MetaValue)]) -> PathBuf {
    use falsifier::model::gguf::GgufWriter;
    let f = GgufFile::open(&fixture("qwen3moe-tiny-q8_0.gguf")).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata() {
        let v = edits.iter().find(|(e, _)| e == k).map_or(v, |(_, e)| e);
        w.add_kv(k, v.clone());
    }
    for t in f.tensors() {
        w.add_tensor(&t.name, t.dims.clone(), t.ty).unwrap();
    }
    let dir = std::env::temp_dir().join(format!("falsifier-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{tag}.gguf"));
    w.write_file(&path, |i, sink| {
        sink.write_all(f.tensor_data(&f.tensors()[i]))
            .map_err(|e| falsifier::Error::internal(e.to_string()))
    })
    .unwrap();
    path
}

/// Issue 11 items 14 and 17, end to end: `trace` and `lint` on a GGUF whose counts are absurd
/// exit 2 at once with the key named (a block_count of 2^32 - 1 aborted `trace` on a 2.6 TB
/// allocation and grew `lint` until it died; head_count = key_length = 2^32 overflowed).
#[test]
fn absurd_gguf_counts_exit_2_at_once() {
    let bin = env!("CARGO_BIN_EXE_falsifier");
    let big = MetaValue::U64(1 << 32);
    let cases = [
        (
            "layers-u32max",
            vec![("qwen3moe.block_count", MetaValue::U32(u32::MAX))],
            "key 'qwen3moe.block_count': 4294967295 layers, but the file's 39 tensors hold at most 3",
        ),
        (
            "layers-2e63",
            vec![("qwen3moe.block_count", MetaValue::U64(1 << 63))],
            "key 'qwen3moe.block_count': 9223372036854775808 layers",
        ),
        (
            "heads-2e32",
            vec![
                ("qwen3moe.attention.head_count", big.clone()),
                ("qwen3moe.attention.key_length", big.clone()),
                ("qwen3moe.attention.value_length", big),
            ],
            "head_count x head_dim = 4294967296 x 4294967296 overflows",
        ),
    ];
    for (tag, edits, msg) in cases {
        let model = edited_fixture(tag, &edits);
        let start = std::time::Instant::now();
        let o = std::process::Command::new(bin)
            .args(["trace", model.to_str().unwrap(), "--tokens", "1,2"])
            .args(["--out", model.with_extension("st").to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{tag}: {err}");
        assert!(err.contains(msg) && err.contains(tag), "{tag}: {err}");
        let contract = model.with_extension("yaml");
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("contracts/harness-self-test.yaml"),
        )
        .unwrap()
        .replace(
            "fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf",
            model.to_str().unwrap(),
        );
        std::fs::write(&contract, text).unwrap();
        let o = std::process::Command::new(bin)
            .args(["lint", contract.to_str().unwrap()])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout) + String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{tag}: {out}");
        assert!(out.contains(msg), "{tag}: {out}");
        assert!(start.elapsed().as_secs_f64() < 30.0, "{tag}: slow");
    }
}
