//! Trace files in safetensors format (docs/design.md "Trace files").
//!
//! Writing is done here rather than through `safetensors::serialize` so that files are
//! byte-reproducible: tensors go in forward order and `__metadata__` keys are sorted (the crate
//! keeps metadata in a HashMap, whose order changes from run to run). Reading goes through the
//! crate's validating parser over a memory map, and hands out zero-copy views.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::trace::stage::Key;
use crate::trace::tensor::{
    TensorData, TensorView, ViewData, f32_from_le_bytes, i32_from_le_bytes,
};
use crate::trace::trace::{Trace, TraceMeta};

/// Write `trace` to `path` atomically (temp file in the same directory, then rename).
pub fn write_trace(path: &Path, trace: &Trace) -> Result<()> {
    let mut header = serde_json::Map::new();
    let meta: serde_json::Map<String, serde_json::Value> = trace
        .meta
        .to_map()
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect();
    header.insert("__metadata__".into(), serde_json::Value::Object(meta));
    let mut offset = 0usize;
    for (key, t) in &trace.tensors {
        let n = t.len() * 4;
        let dtype = match t.data {
            TensorData::F32(_) => "F32",
            TensorData::I32(_) => "I32",
        };
        header.insert(
            key.to_string(),
            serde_json::json!({"dtype": dtype, "shape": t.shape, "data_offsets": [offset, offset + n]}),
        );
        offset += n;
    }
    // serde_json's Map is a BTreeMap (no preserve_order feature): keys come out sorted, which
    // keeps the header deterministic.
    let mut hbytes = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| Error::internal(format!("serialising trace header: {e}")))?;
    // pad to 8 bytes so that the data section stays aligned, as the format recommends
    while hbytes.len() % 8 != 0 {
        hbytes.push(b' ');
    }
    let tmp = crate::fs::tmp_path(path);
    let write = || -> std::io::Result<()> {
        let file = File::create(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        w.write_all(&(hbytes.len() as u64).to_le_bytes())?;
        w.write_all(&hbytes)?;
        for t in trace.tensors.values() {
            match &t.data {
                TensorData::F32(v) => write_le(&mut w, v.iter().map(|x| x.to_le_bytes()))?,
                TensorData::I32(v) => write_le(&mut w, v.iter().map(|x| x.to_le_bytes()))?,
            }
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, "writing trace", e));
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, "renaming trace into place", e))
}

fn write_le<W: Write>(w: &mut W, words: impl Iterator<Item = [u8; 4]>) -> std::io::Result<()> {
    // batch words into a buffer: one write_all per 64 KiB instead of per element
    let mut buf = Vec::with_capacity(1 << 16);
    for b in words {
        buf.extend_from_slice(&b);
        if buf.len() >= 1 << 16 {
            w.write_all(&buf)?;
            buf.clear();
        }
    }
    w.write_all(&buf)
}

/// One entry of a trace file's index.
#[derive(Clone, Debug)]
struct Entry {
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// A trace file mapped into memory. Tensors are read zero-copy.
pub struct TraceFile {
    path: PathBuf,
    mmap: Mmap,
    /// offset of the data section in the file
    data_start: usize,
    meta: TraceMeta,
    tensors: BTreeMap<Key, Entry>,
    /// Keys that are not in the stage vocabulary (finer stages, other tools' extras).
    other_keys: Vec<String>,
}

impl TraceFile {
    pub fn open(path: &Path) -> Result<TraceFile> {
        let file = File::open(path).map_err(|e| Error::io(path, "opening trace", e))?;
        // SAFETY: the map is read-only; a trace being rewritten under us is replaced by rename,
        // which leaves this mapping's pages intact.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, "mapping trace", e))?;
        let bad = |what: String| Error::input(format!("{}: {what}", path.display()));
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap)
            .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
        let data_start = 8 + header_len;
        let mut meta_map = BTreeMap::new();
        if let Some(m) = metadata.metadata() {
            meta_map.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let mut tensors = BTreeMap::new();
        let mut other_keys = Vec::new();
        for (name, info) in metadata.tensors() {
            let key: Key = match name.parse() {
                Ok(k) => k,
                Err(_) => {
                    other_keys.push(name);
                    continue;
                }
            };
            let (start, end) = info.data_offsets;
            tensors.insert(
                key,
                Entry {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start,
                    end,
                },
            );
        }
        other_keys.sort();
        Ok(TraceFile {
            path: path.to_path_buf(),
            mmap,
            data_start,
            meta: TraceMeta::from_map(&meta_map),
            tensors,
            other_keys,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn meta(&self) -> &TraceMeta {
        &self.meta
    }

    /// Stage keys present, in forward order.
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.tensors.keys()
    }

    /// Names in the file that are not stage keys.
    pub fn other_keys(&self) -> &[String] {
        &self.other_keys
    }

    pub fn contains(&self, key: &Key) -> bool {
        self.tensors.contains_key(key)
    }

    /// Zero-copy view of one stage. F32 and I32 are read as such; F64/F16/BF16 traces from other
    /// tools are converted to f32. Any other dtype is an error naming the key.
    pub fn get(&self, key: &Key) -> Result<Option<TensorView<'_>>> {
        let Some(e) = self.tensors.get(key) else {
            return Ok(None);
        };
        let bytes = &self.mmap[self.data_start + e.start..self.data_start + e.end];
        let shape = Some(std::borrow::Cow::Borrowed(e.shape.as_slice()));
        let data = match e.dtype {
            Dtype::F32 => ViewData::F32(f32_from_le_bytes(bytes)),
            Dtype::I32 => ViewData::I32(i32_from_le_bytes(bytes)),
            Dtype::I64 => ViewData::I32(std::borrow::Cow::Owned(
                bytes
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as i32)
                    .collect(),
            )),
            Dtype::F64 => ViewData::F32(std::borrow::Cow::Owned(
                bytes
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
                    .collect(),
            )),
            Dtype::F16 => ViewData::F32(std::borrow::Cow::Owned(
                bytes
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            )),
            Dtype::BF16 => ViewData::F32(std::borrow::Cow::Owned(
                bytes
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            )),
            other => {
                return Err(Error::input(format!(
                    "{}: tensor `{key}` has dtype {other:?}; traces hold F32 (I32 for tokens and topk_ids)",
                    self.path.display()
                )));
            }
        };
        Ok(Some(TensorView { shape, data }))
    }

    /// Copy the whole file into an owned [`Trace`] (used for teacher forcing, which needs the
    /// reference's tensors while a backend runs).
    pub fn to_trace(&self) -> Result<Trace> {
        let mut trace = Trace::new(self.meta.clone());
        for key in self.tensors.keys() {
            if let Some(v) = self.get(key)? {
                trace.insert(*key, v.to_owned_tensor());
            }
        }
        Ok(trace)
    }
}

/// Read a trace file fully into memory.
pub fn read_trace(path: &Path) -> Result<Trace> {
    TraceFile::open(path)?.to_trace()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::stage::Stage;
    use crate::trace::tensor::Tensor;

    #[test]
    fn write_read_round_trip_and_reproducible() {
        let dir = std::env::temp_dir().join(format!("falsifier-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut t = Trace::new(TraceMeta {
            backend: "cpu".into(),
            tokens: vec![1, 2, 3],
            ..Default::default()
        });
        t.insert(
            Key::model(Stage::Tokens),
            Tensor::i32(vec![3], vec![1, 2, 3]),
        );
        t.insert(
            Key::layer(0, Stage::AttnNorm),
            Tensor::f32(vec![3, 2], vec![0.5, -1.0, 2.0, f32::NAN, 1e-30, 7.0]),
        );
        let a = dir.join("a.safetensors");
        let b = dir.join("b.safetensors");
        write_trace(&a, &t).unwrap();
        write_trace(&b, &t).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let f = TraceFile::open(&a).unwrap();
        assert_eq!(f.meta().tokens, vec![1, 2, 3]);
        assert_eq!(f.meta().backend, "cpu");
        let back = f.to_trace().unwrap();
        let x = back.get(&Key::layer(0, Stage::AttnNorm)).unwrap();
        assert_eq!(x.shape, vec![3, 2]);
        assert!(x.as_f32().unwrap()[3].is_nan());
        assert_eq!(
            back.get(&Key::model(Stage::Tokens))
                .unwrap()
                .as_i32()
                .unwrap(),
            &[1, 2, 3]
        );
        // the views are zero-copy borrows of the map
        let v = f.get(&Key::layer(0, Stage::AttnNorm)).unwrap().unwrap();
        assert!(matches!(
            v.data,
            ViewData::F32(std::borrow::Cow::Borrowed(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_golden_activations() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/qwen3moe-tiny/activations-f32.safetensors");
        let f = TraceFile::open(&path).unwrap();
        let ids = f.get(&Key::layer(2, Stage::TopkIds)).unwrap().unwrap();
        assert_eq!(ids.shape.as_deref(), Some(&[8usize, 2][..]));
        let probs = f.get(&Key::layer(0, Stage::AttnProbs)).unwrap().unwrap();
        assert_eq!(probs.shape.as_deref(), Some(&[4usize, 8, 8][..]));
        assert!(f.other_keys().is_empty(), "{:?}", f.other_keys());
    }

    #[test]
    fn garbage_is_an_error_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("falsifier-st-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.safetensors");
        std::fs::write(&p, b"\x10\0\0\0\0\0\0\0{not json}").unwrap();
        let err = TraceFile::open(&p).err().unwrap();
        assert!(err.to_string().contains("bad.safetensors"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
