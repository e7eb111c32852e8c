//! APRT dumps: the activation dumps of the engine in the story of docs/design.md.
//!
//! A dump directory holds per-layer files `layer-{N}/{stage}.bin` and model-level files
//! `{stage}.bin`. Each file is a 12-byte header (magic `APRT`, u32 LE layer, u32 LE element
//! count; layer 0xFFFFFFFF for model-level files) followed by the f32 LE payload. The format
//! carries no shape: a diff against an APRT side compares by element count (and borrows the
//! other side's shape for positions when the counts agree). Integer stages (tokens, topk_ids) are
//! stored as f32 values and read back as such; the diff rounds them.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::trace::stage::{Key, Stage};
use crate::trace::tensor::{TensorData, TensorView, ViewData, f32_from_le_bytes};
use crate::trace::trace::Trace;

pub const MAGIC: &[u8; 4] = b"APRT";
pub const HEADER_LEN: usize = 12;
/// The header's layer field for model-level files.
pub const MODEL_LEVEL: u32 = 0xFFFF_FFFF;

/// Parse and check an APRT file held in `bytes`: the magic, the layer (must be `expect_layer`),
/// and that the element count agrees with the file size. Returns the payload.
pub fn parse<'a>(path: &Path, bytes: &'a [u8], expect_layer: u32) -> Result<&'a [u8]> {
    let bad =
        |at: usize, what: String| Error::input(format!("{}: at byte {at}: {what}", path.display()));
    if bytes.len() < HEADER_LEN {
        return Err(bad(
            0,
            format!(
                "truncated APRT header ({} bytes, need {HEADER_LEN})",
                bytes.len()
            ),
        ));
    }
    if &bytes[..4] != MAGIC {
        return Err(bad(0, "not an APRT dump (magic \"APRT\" missing)".into()));
    }
    let layer = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let count = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    if layer != expect_layer {
        let show = |l: u32| {
            if l == MODEL_LEVEL {
                "0xFFFFFFFF (model level)".to_string()
            } else {
                l.to_string()
            }
        };
        return Err(bad(
            4,
            format!(
                "header says layer {} but the file's place says layer {}",
                show(layer),
                show(expect_layer)
            ),
        ));
    }
    let have = bytes.len() - HEADER_LEN;
    match count.checked_mul(4) {
        Some(n) if n == have => Ok(&bytes[HEADER_LEN..]),
        _ => Err(bad(
            8,
            format!(
                "element count {count} needs {} payload bytes but the file has {have}",
                count as u128 * 4
            ),
        )),
    }
}

struct AprtEntry {
    path: PathBuf,
    mmap: Mmap,
}

/// A directory of APRT dumps, mapped.
pub struct AprtDir {
    dir: PathBuf,
    entries: BTreeMap<Key, AprtEntry>,
    other_files: Vec<String>,
}

/// Whether `dir` looks like an APRT dump: `layer-{N}` sub-directories or `.bin` files.
pub fn looks_like_aprt(dir: &Path) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    rd.flatten().any(|e| {
        let n = e.file_name().to_string_lossy().into_owned();
        (n.starts_with("layer-") && e.path().is_dir()) || n.ends_with(".bin")
    })
}

impl AprtDir {
    pub fn open(dir: &Path) -> Result<AprtDir> {
        let mut found: Vec<(Key, PathBuf, u32)> = Vec::new();
        let mut other_files = Vec::new();
        for (name, path) in list(dir)? {
            if let Some(idx) = name.strip_prefix("layer-") {
                if !path.is_dir() {
                    other_files.push(name);
                    continue;
                }
                let layer = if !idx.is_empty() && idx.bytes().all(|b| b.is_ascii_digit()) {
                    idx.parse::<u32>().ok().filter(|&l| l != MODEL_LEVEL)
                } else {
                    None
                };
                let Some(layer) = layer else {
                    other_files.push(name);
                    continue;
                };
                for (fname, fpath) in list(&path)? {
                    match stage_of(&fname).filter(|s| s.is_layer_stage()) {
                        Some(stage) => {
                            found.push((Key::layer(layer as usize, stage), fpath, layer))
                        }
                        None => other_files.push(format!("{name}/{fname}")),
                    }
                }
            } else {
                match stage_of(&name).filter(|s| !s.is_layer_stage()) {
                    Some(stage) => found.push((Key::model(stage), path, MODEL_LEVEL)),
                    None => other_files.push(name),
                }
            }
        }
        let mut entries: BTreeMap<Key, AprtEntry> = BTreeMap::new();
        for (key, path, layer) in found {
            if let Some(prev) = entries.get(&key) {
                return Err(Error::input(format!(
                    "{}: key `{key}` is present twice (also in {})",
                    path.display(),
                    prev.path.display()
                )));
            }
            let file = File::open(&path).map_err(|e| Error::io(&path, "opening", e))?;
            let len = file
                .metadata()
                .map_err(|e| Error::io(&path, "reading metadata", e))?
                .len();
            if len == 0 {
                return Err(Error::input(format!(
                    "{}: at byte 0: empty file (truncated APRT header)",
                    path.display()
                )));
            }
            // SAFETY: read-only map; dumps are not expected to change while a diff runs.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, "mapping", e))?;
            parse(&path, &mmap, layer)?;
            entries.insert(key, AprtEntry { path, mmap });
        }
        other_files.sort();
        Ok(AprtDir {
            dir: dir.to_path_buf(),
            entries,
            other_files,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.entries.keys()
    }

    /// Files and directories that are not dumps of a known stage.
    pub fn other_files(&self) -> &[String] {
        &self.other_files
    }

    pub fn path_of(&self, key: &Key) -> Option<&Path> {
        self.entries.get(key).map(|e| e.path.as_path())
    }

    /// Zero-copy f32 view of one dump; `shape` is `None` (APRT carries none).
    pub fn get(&self, key: &Key) -> Result<Option<TensorView<'_>>> {
        let Some(e) = self.entries.get(key) else {
            return Ok(None);
        };
        let payload = e.mmap.get(HEADER_LEN..).unwrap_or_default();
        Ok(Some(TensorView {
            shape: None,
            data: ViewData::F32(f32_from_le_bytes(payload)),
        }))
    }
}

fn stage_of(file_name: &str) -> Option<Stage> {
    file_name.strip_suffix(".bin")?.parse().ok()
}

fn list(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, "reading directory", e))?;
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| Error::io(dir, "reading directory", e))?;
        out.push((ent.file_name().to_string_lossy().into_owned(), ent.path()));
    }
    out.sort();
    Ok(out)
}

/// Encode one dump: header then f32 LE payload (integer stages are written as f32 values).
pub fn encode(layer: u32, data: &TensorData) -> Result<Vec<u8>> {
    let n = match data {
        TensorData::F32(v) => v.len(),
        TensorData::I32(v) => v.len(),
    };
    let count = u32::try_from(n)
        .map_err(|_| Error::input(format!("{n} elements do not fit an APRT u32 count")))?;
    let mut out = Vec::with_capacity(HEADER_LEN + 4 * n);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&layer.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    match data {
        TensorData::F32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::I32(v) => v
            .iter()
            .for_each(|&x| out.extend_from_slice(&(x as f32).to_le_bytes())),
    }
    Ok(out)
}

/// Write every tensor of `trace` as an APRT dump under `dir` (shapes are lost, as in the format).
pub fn write_aprt_dir(dir: &Path, trace: &Trace) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "creating directory", e))?;
    for (key, t) in &trace.tensors {
        let (path, layer) = match key.layer {
            Some(l) => {
                let sub = dir.join(format!("layer-{l}"));
                std::fs::create_dir_all(&sub)
                    .map_err(|e| Error::io(&sub, "creating directory", e))?;
                let layer = u32::try_from(l)
                    .ok()
                    .filter(|&l| l != MODEL_LEVEL)
                    .ok_or_else(|| Error::input(format!("layer {l} does not fit APRT")))?;
                (sub.join(format!("{}.bin", key.stage)), layer)
            }
            None => (dir.join(format!("{}.bin", key.stage)), MODEL_LEVEL),
        };
        let bytes = encode(layer, &t.data)?;
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, "writing APRT dump", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::tensor::Tensor;

    fn view_f32<'a>(v: &'a TensorView<'a>) -> &'a [f32] {
        match &v.data {
            ViewData::F32(s) => s,
            ViewData::I32(_) => panic!("APRT views are f32"),
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("falsifier-aprt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip() {
        let d = tmp("rt");
        let mut t = Trace::default();
        t.insert(
            Key::layer(2, Stage::FfnOut),
            Tensor::f32(vec![2, 2], vec![1.0, -2.0, 3.0, 4.5]),
        );
        t.insert(
            Key::model(Stage::Logits),
            Tensor::f32(vec![3], vec![0.5; 3]),
        );
        t.insert(Key::model(Stage::Tokens), Tensor::i32(vec![2], vec![5, 6]));
        write_aprt_dir(&d, &t).unwrap();
        assert!(looks_like_aprt(&d));
        let a = AprtDir::open(&d).unwrap();
        assert_eq!(a.keys().count(), 3);
        let v = a.get(&Key::layer(2, Stage::FfnOut)).unwrap().unwrap();
        assert!(v.shape.is_none());
        assert_eq!(view_f32(&v), &[1.0, -2.0, 3.0, 4.5]);
        let tok = a.get(&Key::model(Stage::Tokens)).unwrap().unwrap();
        assert_eq!(view_f32(&tok), &[5.0, 6.0]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_dumps_are_errors() {
        let d = tmp("bad");
        let p = d.join("logits.bin");
        let good = encode(MODEL_LEVEL, &TensorData::F32(vec![1.0; 4])).unwrap();
        std::fs::write(&p, &good[..good.len() - 2]).unwrap();
        let e = AprtDir::open(&d).err().unwrap().to_string();
        assert!(e.contains("logits.bin") && e.contains("at byte 8"), "{e}");
        std::fs::write(&p, &good[..5]).unwrap();
        assert!(
            AprtDir::open(&d)
                .err()
                .unwrap()
                .to_string()
                .contains("truncated")
        );
        std::fs::write(&p, b"").unwrap();
        assert!(AprtDir::open(&d).is_err());
        // wrong layer in the header
        std::fs::write(&p, encode(3, &TensorData::F32(vec![1.0])).unwrap()).unwrap();
        let e = AprtDir::open(&d).err().unwrap().to_string();
        assert!(e.contains("layer 3"), "{e}");
        std::fs::write(&p, &good).unwrap();
        // the same key twice
        std::fs::create_dir_all(d.join("layer-1")).unwrap();
        std::fs::create_dir_all(d.join("layer-01")).unwrap();
        let one = encode(1, &TensorData::F32(vec![1.0])).unwrap();
        std::fs::write(d.join("layer-1/q_proj.bin"), &one).unwrap();
        std::fs::write(d.join("layer-01/q_proj.bin"), &one).unwrap();
        let e = AprtDir::open(&d).err().unwrap().to_string();
        assert!(e.contains("present twice"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
