//! The bodies of falsifier's fuzz targets: one function per reader of hostile input, taking the
//! fuzzer's bytes. The cargo-fuzz targets (`fuzz_targets/*.rs`) call them on nightly, and the
//! repository's `tests/fuzz_replay.rs` compiles this same file on stable Rust to replay the kept
//! corpus (`fuzz/regressions/<target>/`, `fuzz/seeds/<target>/`) in CI.
//!
//! Every function returns normally on any input: errors are the expected answer to bad bytes.
//! A panic, an abort, a hang or a memory blow-up is a defect. The asserts here are invariants a
//! successful read promises (sizes agree with shapes), so a wrong "Ok" is a finding too.
//!
//! Only `falsifier`'s public API and std are used, so the file builds in both crates.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use falsifier::backend::cpu::CpuBackend;
use falsifier::backend::{Backend, ForwardRequest};
use falsifier::contract::{Source, lint::lint};
use falsifier::diff::{DiffOptions, diff};
use falsifier::model::gguf::GgufFile;
use falsifier::model::quant::{dequantize, is_dequant_supported};
use falsifier::model::tokenizer::GgufTokenizer;
use falsifier::trace::CapturePlan;
use falsifier::trace::io::{TraceSource, open_source};
use falsifier::trace::tensor::ViewData;

/// A target's body: takes the fuzzer's bytes, returns on any input.
pub type Entry = fn(&[u8]);

/// Every target, by the name of its cargo-fuzz binary and its corpus folders.
pub const TARGETS: &[(&str, Entry)] = &[
    ("gguf", gguf),
    ("gguf_model", gguf_model),
    ("trace_safetensors", trace_safetensors),
    ("trace_npy", trace_npy),
    ("trace_aprt", trace_aprt),
    ("contract", contract),
];

/// Dequantize at most this many values per input: the reader bounds tensors by the input's
/// size, and this keeps one input's work small whatever the ratio of values to bytes.
const DEQUANT_BUDGET: u64 = 1 << 20;

/// GGUF reader: open from bytes (header, metadata, tensor table, data bounds), read every
/// metadata value and tensor info, and dequantize every tensor of a supported type.
pub fn gguf(data: &[u8]) {
    let Ok(f) = GgufFile::from_bytes("fuzz.gguf", data.to_vec()) else {
        return;
    };
    assert!(f.alignment().is_power_of_two());
    for (key, value) in f.metadata() {
        assert!(
            f.get(key).is_some(),
            "metadata key {key:?} not found by get"
        );
        let _ = (
            value.as_u64(),
            value.as_f64(),
            value.as_str(),
            value.type_name(),
        );
        if let Some(items) = value.as_array() {
            let _: Vec<Option<f64>> = items.iter().map(|v| v.as_f64()).collect();
        }
    }
    let mut budget = DEQUANT_BUDGET;
    for t in f.tensors() {
        assert!(f.tensor(&t.name).is_some(), "tensor {:?} not found", t.name);
        let bytes = f.tensor_data(t);
        assert_eq!(bytes.len() as u64, t.nbytes, "tensor {:?}", t.name);
        let _ = (t.row_len(), t.n_rows());
        let n = t.n_elements();
        if !is_dequant_supported(t.ty) || n > budget {
            continue;
        }
        budget -= n;
        let mut out = vec![0f32; n as usize];
        // the reader validated the size, so dequantizing must succeed
        dequantize(t.ty, bytes, &mut out)
            .unwrap_or_else(|e| panic!("validated tensor {:?} does not dequantize: {e}", t.name));
    }
    tokenizer(&f);
}

/// The tokenizer a GGUF's metadata describes (`--prompt`): built, then run on awkward text; an
/// id it gives must be inside the vocabulary and have a piece.
fn tokenizer(f: &GgufFile) {
    let Ok(Some(tok)) = GgufTokenizer::from_gguf(f) else {
        return;
    };
    for text in [
        "",
        "Hello world",
        " \t\n  日本 🦙 e\u{301} 12345",
        "<|im_start|><s>",
    ] {
        if let Ok(ids) = tok.encode(text) {
            for id in ids {
                assert!(
                    (id as usize) < tok.vocab_size(),
                    "id {id} past the vocabulary"
                );
                assert!(tok.piece(id).is_some(), "id {id} has no piece");
            }
        }
    }
}

/// GGUF model, as `falsifier trace` takes one: the CPU backend opens the file (model config from
/// the metadata, tensor shapes checked against it, weights loaded), then runs a two-token
/// forward capturing every stage. The work is bounded by the input: every shape the forward
/// uses has been checked against a tensor the file holds.
pub fn gguf_model(data: &[u8]) {
    let dir = Scratch::new();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, data).expect("writing the scratch file");
    let Ok(mut backend) = CpuBackend::open(&path) else {
        return;
    };
    let plan = CapturePlan::all();
    if let Ok(trace) = backend.forward(&ForwardRequest::new(&[0, 1], &plan)) {
        read_all(&trace);
    }
}

/// Safetensors trace file: the input is the file. Opened through `open_source` (the path the
/// CLI's `diff` takes), then every stage is read.
pub fn trace_safetensors(data: &[u8]) {
    let dir = Scratch::new();
    let path = dir.path().join("trace.safetensors");
    std::fs::write(&path, data).expect("writing the scratch file");
    if let Ok(source) = open_source(&path) {
        read_all(source.as_ref());
    }
}

/// Directory of `{key}.npy` files: the input is a packed directory (see [`unpack`]), opened
/// with `open_source` (a directory holding `.npy` files is read by `NpyDir`).
pub fn trace_npy(data: &[u8]) {
    let dir = Scratch::new();
    if !write_tree(dir.path(), data) {
        return;
    }
    // the CLI's way in: it tells npy from APRT by the directory's contents
    if let Ok(source) = open_source(dir.path()) {
        read_all(source.as_ref());
    }
}

/// Directory of APRT dumps (`layer-{N}/{stage}.bin`, `{stage}.bin`): a packed directory, opened
/// with `open_source` (a directory of dumps and no `.npy` file is read by `AprtDir`).
pub fn trace_aprt(data: &[u8]) {
    let dir = Scratch::new();
    if !write_tree(dir.path(), data) {
        return;
    }
    // the CLI's way in: it tells npy from APRT by the directory's contents
    if let Ok(source) = open_source(dir.path()) {
        read_all(source.as_ref());
    }
}

/// Contract parse and lint: the input is one contract file's text, linted as if it were
/// `contracts/fuzz-input.yaml` of this repository, so that relative model paths reach the
/// fixtures (and lint reads their shapes) as they do for the real contracts.
pub fn contract(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // read_sources refuses non-UTF-8 files before parsing
    };
    let source = Source {
        path: repo_root().join("contracts/fuzz-input.yaml"),
        text: text.to_string(),
    };
    let (_loaded, diags) = lint(std::slice::from_ref(&source));
    for d in &diags {
        assert!(d.pos.line >= 1 && d.pos.column >= 1, "diagnostic at {d}");
        let _ = d.to_string();
    }
}

/// Read every stage of a source, check that what it hands out agrees with itself, and diff it
/// against itself.
fn read_all(source: &dyn TraceSource) {
    let _ = (
        source.meta(),
        source.format(),
        source.location(),
        source.other_names(),
    );
    for key in source.keys() {
        let Ok(Some(view)) = source.get(&key) else {
            continue;
        };
        let len = match &view.data {
            ViewData::F32(v) => v.len(),
            ViewData::I32(v) => v.len(),
        };
        assert_eq!(len, view.len());
        if let Some(shape) = &view.shape {
            let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            assert_eq!(count, Some(len), "{key}: shape {shape:?} but {len} values");
        }
        let _ = view.to_owned_tensor();
    }
    // what `falsifier diff` does with a source: a trace compared with itself
    let _ = diff(source, source, &DiffOptions::default());
}

/// The repository root: the nearest ancestor of the compiling crate's manifest that holds both
/// `contracts/` and `fuzz/` (this crate is `fuzz/`; the replay test's crate is the root).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|d| d.join("contracts").is_dir() && d.join("fuzz").is_dir())
        .unwrap_or(manifest)
        .to_path_buf()
}

// ---- packed directories ----------------------------------------------------------------------

/// Separates the files of a packed directory.
pub const PACK_SEPARATOR: &[u8] = b"\n=====\n";
/// At most this many files per input (more are ignored): keeps one input's work small.
const PACK_MAX_FILES: usize = 32;

/// Split a packed directory into `(relative path, contents)`: files separated by
/// [`PACK_SEPARATOR`], each a name line (`name\n`) then the contents. Names are one or two
/// components of `[A-Za-z0-9._-]` (`layer-0/attn_norm.bin`), never `.` or `..`; a file with any
/// other name is dropped, so that the fuzzer never writes outside its scratch directory.
pub fn unpack(data: &[u8]) -> Vec<(String, &[u8])> {
    let mut files = Vec::new();
    let mut rest = data;
    while !rest.is_empty() && files.len() < PACK_MAX_FILES {
        let (chunk, next) = match find(rest, PACK_SEPARATOR) {
            Some(i) => (&rest[..i], &rest[i + PACK_SEPARATOR.len()..]),
            None => (rest, &[][..]),
        };
        rest = next;
        let Some(nl) = chunk.iter().position(|&b| b == b'\n') else {
            continue;
        };
        if let Ok(name) = std::str::from_utf8(&chunk[..nl])
            && safe_name(name)
        {
            files.push((name.to_string(), &chunk[nl + 1..]));
        }
    }
    files
}

/// The inverse of [`unpack`], for writing seed inputs.
pub fn pack(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (name, contents)) in files.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(PACK_SEPARATOR);
        }
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(contents);
    }
    out
}

fn safe_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 64
                && *p != "."
                && *p != ".."
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Write a packed directory under `dir`. False when the input names no file. A name that is
/// both a file and a directory is resolved by the file system (the later write fails and is
/// skipped), which is hostile input the readers must survive too.
fn write_tree(dir: &Path, data: &[u8]) -> bool {
    let files = unpack(data);
    for (name, contents) in &files {
        let path = dir.join(name);
        if let Some(parent) = path.parent()
            && std::fs::create_dir_all(parent).is_err()
        {
            continue;
        }
        let _ = std::fs::write(&path, contents);
    }
    !files.is_empty()
}

// ---- scratch directories ---------------------------------------------------------------------

thread_local! {
    /// One scratch directory per thread (the replay test runs tests on several threads).
    static SCRATCH_ROOT: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

/// An empty directory for one input, removed when dropped. Kept in memory (/dev/shm) where
/// there is one: the trace readers take paths, and the fuzzer writes one file set per input.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let path = SCRATCH_ROOT.with(|r| {
            r.borrow_mut()
                .get_or_insert_with(|| {
                    let base = Path::new("/dev/shm");
                    let base = if base.is_dir() {
                        base.to_path_buf()
                    } else {
                        std::env::temp_dir()
                    };
                    static NEXT: std::sync::atomic::AtomicUsize =
                        std::sync::atomic::AtomicUsize::new(0);
                    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    base.join(format!("falsifier-fuzz-{}-{n}", std::process::id()))
                })
                .clone()
        });
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating the scratch directory");
        Scratch(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
