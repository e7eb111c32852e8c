//! The GGUF writer, with gguf-py's GGUFWriter conventions: version 3, metadata in insertion
//! order, tensor infos, zero padding to the alignment (32, or `general.alignment`), then each
//! tensor's data padded to the alignment. Tensor data is streamed from a callback, so a
//! 17 GB model never sits in memory.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::{DEFAULT_ALIGNMENT, MAX_DIMS, MetaValue, align_up, vtype};
use crate::error::{Error, ErrorKind, Result};
use crate::model::quant::GgmlType;

pub(super) struct PendingTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub nbytes: u64,
}

/// Collects metadata and tensor infos, then writes the file in one pass.
#[derive(Default)]
pub struct GgufWriter {
    pub(super) kv: Vec<(String, MetaValue)>,
    pub(super) tensors: Vec<PendingTensor>,
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter::default()
    }

    /// Append a key; duplicates are reported by `write_to`.
    pub fn add_kv(&mut self, key: &str, v: MetaValue) {
        self.kv.push((key.to_string(), v));
    }

    /// Append a tensor info (`dims` in ggml order). Its data comes later from `write_to`'s
    /// callback, in the order tensors were added.
    pub fn add_tensor(&mut self, name: &str, dims: Vec<u64>, ty: GgmlType) -> Result<()> {
        let bad = |msg: String| Error::input(format!("tensor '{name}': {msg}"));
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(bad("added twice".into()));
        }
        if dims.len() > MAX_DIMS {
            return Err(bad(format!(
                "{} dimensions (at most {MAX_DIMS})",
                dims.len()
            )));
        }
        let n = dims
            .iter()
            .try_fold(1u64, |a, &d| {
                a.checked_mul(d).filter(|&n| n <= i64::MAX as u64)
            })
            .ok_or_else(|| bad(format!("dims {dims:?} overflow")))?;
        let row = dims.first().copied().unwrap_or(1);
        if !row.is_multiple_of(ty.block_values() as u64) {
            return Err(bad(format!(
                "row length {row} is not a multiple of {ty}'s block size {}",
                ty.block_values()
            )));
        }
        let nbytes = ty
            .bytes_for(n)
            .ok_or_else(|| bad(format!("{n} values of {ty} are not whole blocks")))?;
        self.tensors.push(PendingTensor {
            name: name.to_string(),
            dims,
            ty,
            nbytes,
        });
        Ok(())
    }

    /// Total size of the file `write_to` will produce.
    pub fn file_len(&self) -> Result<u64> {
        let align = self.alignment()?;
        let mut header = Vec::new();
        self.header(&mut header, align)?;
        let mut len = header.len() as u64;
        for t in &self.tensors {
            len = align_up(len + t.nbytes, align).unwrap_or(u64::MAX);
        }
        Ok(len)
    }

    fn alignment(&self) -> Result<u64> {
        match self.kv.iter().find(|(k, _)| k == "general.alignment") {
            None => Ok(DEFAULT_ALIGNMENT),
            Some((_, MetaValue::U32(a))) if *a != 0 && a.is_power_of_two() => Ok(*a as u64),
            Some((_, v)) => Err(Error::input(format!(
                "general.alignment must be a non-zero power of two of type u32, got {v:?}"
            ))),
        }
    }

    /// Magic, counts, metadata, tensor infos and the padding up to the data section.
    fn header(&self, out: &mut Vec<u8>, align: u64) -> Result<()> {
        let mut keys = HashSet::new();
        for (k, _) in &self.kv {
            if !keys.insert(k.as_str()) {
                return Err(Error::input(format!("duplicate metadata key '{k}'")));
            }
        }
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            put_str(out, k);
            out.extend_from_slice(&v.type_id().to_le_bytes());
            put_value(out, v).map_err(|e| e.context(format_args!("key '{k}'")))?;
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset = offset
                .checked_add(t.nbytes)
                .and_then(|o| align_up(o, align))
                .ok_or_else(|| Error::input("tensor data overflows 64 bits"))?;
        }
        let padded = align_up(out.len() as u64, align).unwrap_or(u64::MAX) as usize;
        out.resize(padded, 0);
        Ok(())
    }

    /// Write the header, then call `data(i, sink)` for each tensor in order; each call must
    /// write exactly that tensor's bytes.
    pub fn write_to<W: Write>(
        self,
        mut w: W,
        mut data: impl FnMut(usize, &mut dyn Write) -> Result<()>,
    ) -> Result<()> {
        let align = self.alignment()?;
        let mut header = Vec::new();
        self.header(&mut header, align)?;
        let io = |e: std::io::Error| Error::new(ErrorKind::Io, format!("writing GGUF: {e}"));
        w.write_all(&header).map_err(io)?;
        let zeros = vec![0u8; align as usize];
        for (i, t) in self.tensors.iter().enumerate() {
            let mut sink = Counting {
                inner: &mut w,
                n: 0,
            };
            data(i, &mut sink)?;
            if sink.n != t.nbytes {
                return Err(Error::internal(format!(
                    "tensor '{}': data callback wrote {} bytes, want {} ({:?} of {})",
                    t.name, sink.n, t.nbytes, t.dims, t.ty
                )));
            }
            let pad = (align - t.nbytes % align) % align;
            w.write_all(&zeros[..pad as usize]).map_err(io)?;
        }
        w.flush().map_err(io)
    }

    /// `write_to` a temporary file next to `path`, then rename it into place.
    pub fn write_file(
        self,
        path: &Path,
        data: impl FnMut(usize, &mut dyn Write) -> Result<()>,
    ) -> Result<()> {
        let tmp = crate::fs::tmp_path(path);
        let result = (|| {
            let file = File::create(&tmp).map_err(|e| Error::io(&tmp, "creating", e))?;
            let mut w = BufWriter::with_capacity(1 << 22, file);
            self.write_to(&mut w, data)?;
            let file = w
                .into_inner()
                .map_err(|e| Error::io(&tmp, "writing", e.into_error()))?;
            file.sync_all().map_err(|e| Error::io(&tmp, "syncing", e))
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.context(path.display()));
        }
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, "renaming into place", e))
    }
}

/// Counts the bytes a data callback writes.
struct Counting<'a, W: Write> {
    inner: &'a mut W,
    n: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &MetaValue) -> Result<()> {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(*x as u8),
        MetaValue::String(s) => put_str(out, s),
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Array(items) => {
            // an empty array has no element to take the type from: write it as u8, which
            // reads back as the same empty array
            let ety = items.first().map_or(vtype::U8, |x| x.type_id());
            if let Some(x) = items.iter().find(|x| x.type_id() != ety) {
                return Err(Error::input(format!(
                    "array mixes {} and {} elements",
                    items[0].type_name(),
                    x.type_name()
                )));
            }
            out.extend_from_slice(&ety.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for x in items {
                put_value(out, x)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::GgufFile;

    /// Rewriting a gguf-py file with the same kv, tensors and bytes gives the same file.
    #[test]
    fn rewrites_fixtures_byte_for_byte() {
        for name in ["qwen3moe-tiny-f32.gguf", "qwen3moe-tiny-q8_0.gguf"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fixtures/qwen3moe-tiny")
                .join(name);
            let orig = std::fs::read(&path).unwrap();
            let f = GgufFile::open(&path).unwrap();
            let mut w = GgufWriter::new();
            for (k, v) in f.metadata() {
                w.add_kv(k, v.clone());
            }
            for t in f.tensors() {
                w.add_tensor(&t.name, t.dims.clone(), t.ty).unwrap();
            }
            assert_eq!(w.file_len().unwrap(), orig.len() as u64);
            let mut out = Vec::new();
            w.write_to(&mut out, |i, sink| {
                sink.write_all(f.tensor_data(&f.tensors()[i]))
                    .map_err(|e| Error::internal(e.to_string()))
            })
            .unwrap();
            assert!(out == orig, "{name}: rewrite differs");
        }
    }

    #[test]
    fn write_file_round_trips_all_value_types() {
        let dir = std::env::temp_dir().join(format!("falsifier-gguf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("all.gguf");
        let values = vec![
            ("u8", MetaValue::U8(7)),
            ("i8", MetaValue::I8(-7)),
            ("u16", MetaValue::U16(700)),
            ("i16", MetaValue::I16(-700)),
            ("u32", MetaValue::U32(70000)),
            ("i32", MetaValue::I32(-70000)),
            ("f32", MetaValue::F32(1.5)),
            ("bool", MetaValue::Bool(true)),
            ("str", MetaValue::String("héllo".into())),
            ("u64", MetaValue::U64(1 << 40)),
            ("i64", MetaValue::I64(-(1 << 40))),
            ("f64", MetaValue::F64(-2.25)),
            (
                "nested",
                MetaValue::Array(vec![
                    MetaValue::Array(vec![MetaValue::I32(1), MetaValue::I32(2)]),
                    MetaValue::Array(vec![]),
                ]),
            ),
            ("general.alignment", MetaValue::U32(64)),
        ];
        let mut w = GgufWriter::new();
        for (k, v) in &values {
            w.add_kv(k, v.clone());
        }
        w.add_tensor("x", vec![32, 3], GgmlType::Q8_0).unwrap();
        w.add_tensor("y", vec![5], GgmlType::F32).unwrap();
        assert!(w.add_tensor("y", vec![5], GgmlType::F32).is_err());
        assert!(w.add_tensor("z", vec![16], GgmlType::Q8_0).is_err());
        w.write_file(&path, |i, sink| {
            let n = [102, 20][i];
            sink.write_all(&vec![i as u8 + 1; n])
                .map_err(|e| Error::internal(e.to_string()))
        })
        .unwrap();
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.alignment(), 64);
        assert_eq!(f.data_start() % 64, 0);
        for (k, v) in &values {
            assert_eq!(f.get(k), Some(v), "{k}");
        }
        assert_eq!(f.tensor("y").unwrap().offset, 128);
        assert_eq!(f.tensor_data(f.tensor("y").unwrap()), &[2u8; 20]);
        assert_eq!(f.file_len() % 64, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writer_errors() {
        let mut w = GgufWriter::new();
        w.add_kv("a", MetaValue::U8(1));
        w.add_kv("a", MetaValue::U8(2));
        let e = w.write_to(Vec::new(), |_, _| Ok(())).unwrap_err();
        assert!(e.to_string().contains("duplicate metadata key 'a'"));

        let mut w = GgufWriter::new();
        w.add_kv(
            "m",
            MetaValue::Array(vec![MetaValue::U8(1), MetaValue::I8(1)]),
        );
        let e = w.write_to(Vec::new(), |_, _| Ok(())).unwrap_err();
        assert!(
            e.to_string().contains("key 'm': array mixes u8 and i8"),
            "{e}"
        );

        let mut w = GgufWriter::new();
        w.add_tensor("t", vec![4], GgmlType::F32).unwrap();
        let e = w
            .write_to(Vec::new(), |_, s| {
                s.write_all(&[0; 15])
                    .map_err(|e| Error::internal(e.to_string()))
            })
            .unwrap_err();
        assert!(e.to_string().contains("wrote 15 bytes, want 16"), "{e}");
        assert!(
            GgufWriter::new()
                .add_tensor("t", vec![1; 5], GgmlType::F32)
                .is_err()
        );
        assert!(
            GgufWriter::new()
                .add_tensor("t", vec![1 << 40, 1 << 40], GgmlType::F32)
                .is_err()
        );
    }
}
