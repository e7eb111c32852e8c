//! Split GGUF models (gguf-split's layout, `model::gguf::split`): a synthetic model written in
//! shards reads back to the same tensors, bytes and weights as the same model in one file, and
//! gives a bit-equal CPU trace; every broken set of shards is an error naming the file. Two
//! independent oracles check what we write: gguf-py reads each shard, and llama.cpp loads the
//! split model with logits bit-equal to the whole file's. They need Python packages, so they
//! end "ignored" with the reason where those are missing (the interpreters are
//! `$FALSIFIER_GGUF_PYTHON` and `$FALSIFIER_LLAMACPP_PYTHON`, else `python3`); hence
//! libtest-mimic (`harness = false`).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use falsifier::backend::{self, ForwardRequest};
use falsifier::model::config::ModelConfig;
use falsifier::model::gguf::GgufFile;
use falsifier::model::synth::{self, SynthQuant};
use falsifier::model::weights::ModelWeights;
use falsifier::progress::NoProgress;
use falsifier::trace::CapturePlan;
use falsifier::trace::tensor::TensorData;
use libtest_mimic::{Arguments, Completion, Trial};

/// A model written whole and split into at least 3 shards, in a scratch directory.
struct Pair {
    dir: PathBuf,
    whole: PathBuf,
    shards: Vec<PathBuf>,
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pair(tag: &str, preset: &str, quant: &str) -> Pair {
    let dir = std::env::temp_dir().join(format!("falsifier-split-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let c = synth::preset(preset).unwrap();
    let q = SynthQuant::from_name(quant).unwrap();
    let whole = dir.join("m.gguf");
    let s = synth::generate(&c, q, 3, "split-test", &whole).unwrap();
    // a third of the tensor data per shard makes at least three shards
    let max = s.bytes / 3;
    let split = synth::generate_split_with(
        &c,
        q,
        3,
        "split-test",
        &dir.join("s.gguf"),
        max,
        &NoProgress,
    )
    .unwrap();
    assert!(split.files.len() >= 3, "{} shards", split.files.len());
    let first = format!("s-00001-of-{:05}.gguf", split.files.len());
    assert_eq!(split.files[0], dir.join(first));
    Pair {
        dir,
        whole,
        shards: split.files,
    }
}

const MODELS: [(&str, &str); 2] = [("tiny-moe", "f32"), ("tiny-qwen2moe", "q8_0")];

/// Every tensor of the whole file is in the split model with the same type, dims and bytes,
/// each a slice of its own shard; the weights load the same.
fn split_reads_back_to_the_same_weights() {
    for (preset, quant) in MODELS {
        let p = pair(&format!("weights-{preset}"), preset, quant);
        let whole = GgufFile::open(&p.whole).unwrap();
        let split = GgufFile::open(&p.shards[0]).unwrap();
        assert_eq!(split.shards().len(), p.shards.len());
        for (s, path) in split.shards().iter().zip(&p.shards) {
            assert_eq!(s.path(), path);
            assert_eq!(s.file_len(), std::fs::metadata(path).unwrap().len());
        }
        assert_eq!(split.tensors().len(), whole.tensors().len());
        let mut used = vec![0usize; p.shards.len()];
        for (a, b) in whole.tensors().iter().zip(split.tensors()) {
            assert_eq!((&a.name, &a.dims, a.ty), (&b.name, &b.dims, b.ty));
            assert!(whole.tensor_data(a) == split.tensor_data(b), "{}", a.name);
            used[b.shard] += 1;
        }
        // each shard holds tensors of its own (gguf-split never writes an empty one)
        assert!(used.iter().all(|&n| n > 0), "tensors per shard {used:?}");
        let held: Vec<usize> = split.shards().iter().map(|s| s.n_tensors()).collect();
        assert_eq!(held, used);
        // the metadata are the whole file's, plus the split keys
        for (k, v) in whole.metadata() {
            assert_eq!(split.get(k), Some(v), "{k}");
        }
        assert_eq!(split.metadata().len(), whole.metadata().len() + 3);
        let (cw, cs) = (
            ModelConfig::from_gguf(&whole).unwrap(),
            ModelConfig::from_gguf(&split).unwrap(),
        );
        cs.validate_tensors(&split).unwrap();
        let ww = ModelWeights::load(&whole, &cw).unwrap();
        let ws = ModelWeights::load(&split, &cs).unwrap();
        assert_eq!(ww.layers.len(), ws.layers.len());
        assert!(ww.token_embd.data == ws.token_embd.data && ww.output_norm == ws.output_norm);
        // the split model's sha256 is that of its shards one after the other
        let mut cat = Vec::new();
        for s in &p.shards {
            cat.extend(std::fs::read(s).unwrap());
        }
        use sha2::{Digest, Sha256};
        let want: String = Sha256::digest(&cat)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(split.sha256_hex(), want);
        assert_eq!(split.file_len(), cat.len() as u64);
    }
}

/// The CPU reference traces the split model exactly as the whole file: every stage bit-equal.
fn split_cpu_trace_is_bit_equal() {
    let tokens = [81, 119, 101, 110, 51, 77];
    for (preset, quant) in MODELS {
        let p = pair(&format!("trace-{preset}"), preset, quant);
        let run = |path: &Path| {
            let mut b = backend::open("cpu", path).unwrap();
            b.forward(&ForwardRequest::new(&tokens, &CapturePlan::all()))
                .unwrap()
        };
        let (a, b) = (run(&p.whole), run(&p.shards[0]));
        assert!(a.tensors.len() > 20);
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (k, ta) in &a.tensors {
            let tb = &b.tensors[k];
            assert_eq!(ta.shape, tb.shape, "{k}");
            let same = match (&ta.data, &tb.data) {
                (TensorData::F32(x), TensorData::F32(y)) => x
                    .iter()
                    .map(|v| v.to_bits())
                    .eq(y.iter().map(|v| v.to_bits())),
                (TensorData::I32(x), TensorData::I32(y)) => x == y,
                _ => false,
            };
            assert!(same, "{preset}: {k} differs");
        }
    }
}

/// The error `GgufFile::open(path)` gives, as text.
fn open_err(path: &Path) -> String {
    GgufFile::open(path).unwrap_err().to_string()
}

/// Overwrite the value of metadata key `key` (a u16 or i32) in the file at `path`.
fn patch_key(path: &Path, key: &str, value: &[u8]) {
    let mut bytes = std::fs::read(path).unwrap();
    let mut needle = (key.len() as u64).to_le_bytes().to_vec();
    needle.extend(key.as_bytes());
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{key} not in {}", path.display()));
    let v = at + needle.len() + 4; // past the value type
    bytes[v..v + value.len()].copy_from_slice(value);
    std::fs::write(path, bytes).unwrap();
}

fn split_errors_name_the_file() {
    let p = pair("errors", "tiny-moe", "f32");
    let n = p.shards.len();
    let name = |i: usize| p.shards[i].display().to_string();

    // opening shard 2 directly: open shard 1
    let e = open_err(&p.shards[1]);
    assert!(
        e.contains(&name(1))
            && e.contains("shard 2 of")
            && e.contains(&format!("open the first shard, {}", name(0))),
        "{e}"
    );

    // a missing shard: the exact path expected and split.count
    let moved = p.dir.join("moved.gguf");
    std::fs::rename(&p.shards[2], &moved).unwrap();
    let e = open_err(&p.shards[0]);
    assert!(
        e.contains(&format!("expected {}", name(2))) && e.contains(&format!("split.count = {n}")),
        "{e}"
    );
    std::fs::rename(&moved, &p.shards[2]).unwrap();
    GgufFile::open(&p.shards[0]).unwrap();

    // a shard whose split.no disagrees with its name
    let keep = std::fs::read(&p.shards[2]).unwrap();
    patch_key(&p.shards[2], "split.no", &1u16.to_le_bytes());
    let e = open_err(&p.shards[0]);
    assert!(
        e.contains(&name(2)) && e.contains("split.no = 1") && e.contains("shard 3 of"),
        "{e}"
    );
    std::fs::write(&p.shards[2], &keep).unwrap();

    // a shard whose split.count disagrees with the first shard's
    patch_key(&p.shards[2], "split.count", &(n as u16 + 1).to_le_bytes());
    let e = open_err(&p.shards[0]);
    assert!(
        e.contains(&name(2)) && e.contains(&format!("split.count = {}", n + 1)),
        "{e}"
    );
    std::fs::write(&p.shards[2], &keep).unwrap();

    // a tensor in two shards: rename one of shard 2's to a name of shard 1 of the same length
    let f = GgufFile::open(&p.shards[0]).unwrap();
    let in_shard = |s: usize| f.tensors().iter().filter(move |t| t.shard == s);
    let (from, to) = in_shard(1)
        .find_map(|a| {
            in_shard(0)
                .find(|b| b.name.len() == a.name.len())
                .map(|b| (a.name.clone(), b.name.clone()))
        })
        .expect("tensors of equal name length in shards 1 and 2");
    let keep1 = std::fs::read(&p.shards[1]).unwrap();
    let mut bytes = keep1.clone();
    let at = bytes
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .unwrap();
    bytes[at..at + to.len()].copy_from_slice(to.as_bytes());
    std::fs::write(&p.shards[1], bytes).unwrap();
    let e = open_err(&p.shards[0]);
    assert!(
        e.contains(&name(1))
            && e.contains(&format!("tensor '{to}' is also in shard 1 ({})", name(0))),
        "{e}"
    );
    std::fs::write(&p.shards[1], &keep1).unwrap();

    // a total that is not split.tensors.count
    let keep0 = std::fs::read(&p.shards[0]).unwrap();
    let total = f.tensors().len();
    patch_key(
        &p.shards[0],
        "split.tensors.count",
        &(total as i32 + 1).to_le_bytes(),
    );
    let e = open_err(&p.shards[0]);
    assert!(
        e.contains(&name(0))
            && e.contains(&format!(
                "split.tensors.count is {}, but the {n} shards hold {total} tensors",
                total + 1
            )),
        "{e}"
    );
    std::fs::write(&p.shards[0], &keep0).unwrap();

    // a first shard not named as one cannot find the others
    let renamed = p.dir.join("first.gguf");
    std::fs::copy(&p.shards[0], &renamed).unwrap();
    let e = open_err(&renamed);
    assert!(
        e.contains(&renamed.display().to_string()) && e.contains(&format!("-00001-of-{n:05}.gguf")),
        "{e}"
    );
    // from memory a shard is refused: its other shards cannot be found
    let e = GgufFile::from_bytes("mem.gguf", keep0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("mem.gguf") && e.contains("only be found on disk"),
        "{e}"
    );

    // the CLI says it with exit code 2 and names MODEL
    let out = Command::new(env!("CARGO_BIN_EXE_falsifier"))
        .args([
            "trace",
            &name(1),
            "--backend",
            "cpu",
            "--tokens",
            "1",
            "--out",
        ])
        .arg(p.dir.join("t.safetensors"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("MODEL") && err.contains("open the first shard"),
        "{err}"
    );
}

/// `gen-model --split-max-size` writes the shards and says so.
fn gen_model_split_flag() {
    let dir = std::env::temp_dir().join(format!("falsifier-split-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |size: &str| {
        Command::new(env!("CARGO_BIN_EXE_falsifier"))
            .args([
                "gen-model",
                "--preset",
                "tiny-dense",
                "--split-max-size",
                size,
                "--out",
            ])
            .arg(dir.join("d.gguf"))
            .output()
            .unwrap()
    };
    let out = run("200000");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let n: usize = text
        .strip_prefix("wrote ")
        .and_then(|t| t.split(' ').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    let first = dir.join(format!("d-00001-of-{n:05}.gguf"));
    let last = dir.join(format!("d-{n:05}-of-{n:05}.gguf"));
    assert!(
        text.contains(&format!(
            "wrote {n} shards {} .. {}",
            first.display(),
            last.display()
        )),
        "{text}"
    );
    assert!(n >= 3, "{text}");
    assert_eq!(GgufFile::open(&first).unwrap().shards().len(), n);
    for bad in ["0", "2K", "1.5G"] {
        let out = run(bad);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--split-max-size"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The interpreter for a check: `$var`, else `python3`; `Err(reason)` when it cannot import
/// `module`.
fn python_with(var: &str, module: &str) -> Result<String, String> {
    let py = std::env::var(var).unwrap_or_else(|_| "python3".into());
    let out = Command::new(&py)
        .args(["-c", &format!("import {module}")])
        .output()
        .map_err(|e| format!("no {py} ({e}); set {var}"))?;
    if out.status.success() {
        Ok(py)
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "{py}: {}; set {var}",
            err.lines().last().unwrap_or("import failed")
        ))
    }
}

fn oracle(check: &str, py: &str) {
    for (preset, quant) in MODELS {
        let p = pair(&format!("oracle-{check}-{preset}"), preset, quant);
        let out = Command::new(py)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/split_oracle.py"))
            .args(["--check", check, "--first"])
            .arg(&p.shards[0])
            .arg("--whole")
            .arg(&p.whole)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{preset}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let plain = |name: &str, f: fn()| {
        Trial::test(name, move || {
            f();
            Ok(())
        })
    };
    let optional = |name: &str, var: &'static str, module: &'static str, check: &'static str| {
        Trial::ignorable_test(name, move || match python_with(var, module) {
            Err(why) => Ok(Completion::ignored_with(format!("needs {module}: {why}"))),
            Ok(py) => {
                oracle(check, &py);
                Ok(Completion::Completed)
            }
        })
    };
    let tests = vec![
        plain(
            "split_reads_back_to_the_same_weights",
            split_reads_back_to_the_same_weights,
        ),
        plain("split_cpu_trace_is_bit_equal", split_cpu_trace_is_bit_equal),
        plain("split_errors_name_the_file", split_errors_name_the_file),
        plain("gen_model_split_flag", gen_model_split_flag),
        optional(
            "gguf_py_reads_every_shard",
            "FALSIFIER_GGUF_PYTHON",
            "gguf",
            "gguf",
        ),
        optional(
            "llama_cpp_loads_the_split_model",
            "FALSIFIER_LLAMACPP_PYTHON",
            "llama_cpp",
            "llamacpp",
        ),
    ];
    libtest_mimic::run(&args, tests).exit_code()
}
