//! The GGUF reader: parses and validates the header, metadata and tensor infos of a file mapped
//! with memmap2, then hands out zero-copy slices of tensor data.
//!
//! Everything in the file is untrusted: counts are checked against the bytes left before
//! anything is allocated from them, sizes use checked arithmetic, and every failure is an
//! `Error::input` naming the file and the byte offset (or the tensor). No input panics.

use std::collections::HashSet;
use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use sha2::{Digest, Sha256};

use super::{DEFAULT_ALIGNMENT, MAX_DIMS, MetaValue, TensorInfo, align_up, vtype};
use crate::error::{Error, Result};
use crate::model::quant::GgmlType;

/// Capacity to reserve for `n` items announced by the file: a count that passed the
/// plausibility check can still exceed what a large file holds, so vectors grow past this cap
/// only as items are actually parsed.
fn reserve(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX).min(1 << 12)
}

/// Arrays nest at most this deep; real files nest at most once. Bounds the parser's recursion.
const MAX_ARRAY_DEPTH: usize = 8;

/// The bytes of a GGUF file: a read-only map, or an owned buffer for in-memory files.
pub(super) enum Bytes {
    Map(Mmap),
    Owned(Vec<u8>),
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Map(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// One mapped and validated GGUF file: the whole model, or one shard of a split model.
pub struct Shard {
    pub(super) path: PathBuf,
    pub(super) bytes: Bytes,
    /// The on-disk version mapped (files opened by path only).
    pub(super) stamp: Option<crate::fs::FileStamp>,
    pub(super) alignment: u64,
    pub(super) data_start: u64,
    pub(super) n_tensors: usize,
}

impl Shard {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Length of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Offset of the data section from the start of the file.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// Tensors whose infos and data this file holds.
    pub fn n_tensors(&self) -> usize {
        self.n_tensors
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }
}

/// One file as parsed, before it is put together with the other shards of its model.
pub(super) struct Parsed {
    pub shard: Shard,
    pub version: u32,
    pub kv: Vec<(String, MetaValue)>,
    pub tensors: Vec<TensorInfo>,
}

impl Parsed {
    /// Map and validate the file at `path`, shard number `shard` (0-based) of its model.
    pub fn open(path: &Path, shard: usize) -> Result<Parsed> {
        let file = File::open(path).map_err(|e| Error::io(path, "opening GGUF", e))?;
        // SAFETY: the map is read-only; like every mmap reader we rely on the file not being
        // truncated or rewritten while it is open.
        let stamp = crate::fs::FileStamp::of_open(path, &file);
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, "mapping GGUF", e))?;
        let mut p = parse(path.to_path_buf(), Bytes::Map(map), shard)?;
        p.shard.stamp = stamp;
        Ok(p)
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.kv.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// A validated GGUF model: one file, or every shard of a split model (see `split.rs`) seen as
/// one. Metadata come from the first file; each tensor's data is a slice of its own shard's map.
pub struct GgufFile {
    pub(super) shards: Vec<Shard>,
    pub(super) version: u32,
    pub(super) kv: Vec<(String, MetaValue)>,
    /// Every shard's tensors, in shard order then file order.
    pub(super) tensors: Vec<TensorInfo>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path())
            .field("shards", &self.shards.len())
            .field("version", &self.version)
            .field("n_kv", &self.kv.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Map and validate the model at `path`: a GGUF file, or the first shard of a split model
    /// (`name-00001-of-0000N.gguf`), whose other shards are found next to it and mapped too.
    pub fn open(path: &Path) -> Result<GgufFile> {
        super::split::assemble(Parsed::open(path, 0)?)
    }

    /// Parse a GGUF image held in memory; `label` stands for the path in messages. A shard of
    /// a split model is refused: its other shards cannot be found from memory.
    pub fn from_bytes(label: &str, bytes: Vec<u8>) -> Result<GgufFile> {
        super::split::single(parse(PathBuf::from(label), Bytes::Owned(bytes), 0)?)
    }

    /// The file opened (the first shard of a split model).
    pub fn path(&self) -> &Path {
        &self.shards[0].path
    }

    /// The files of the model, in shard order: one for a model that is not split.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// The first file's alignment (each shard keeps its own for its tensors).
    pub fn alignment(&self) -> u64 {
        self.shards[0].alignment
    }

    /// Offset of the first file's data section from its start.
    pub fn data_start(&self) -> u64 {
        self.shards[0].data_start
    }

    /// Length of the model in bytes: all its files together.
    pub fn file_len(&self) -> u64 {
        self.shards.iter().map(Shard::file_len).sum()
    }

    /// Key/value metadata in file order (of the first file, which holds them for a split model).
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.kv
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.kv.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Tensor infos in shard order, then file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor, a slice of its shard's map (empty for an info from elsewhere
    /// that does not fit; infos read from this model were range-checked at open).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let Some(shard) = self.shards.get(info.shard) else {
            return &[];
        };
        let range = shard
            .data_start
            .checked_add(info.offset)
            .and_then(|s| Some((s, s.checked_add(info.nbytes)?)))
            .and_then(|(s, e)| Some(usize::try_from(s).ok()?..usize::try_from(e).ok()?));
        range.and_then(|r| shard.bytes.get(r)).unwrap_or(&[])
    }

    /// sha256 of the model, lower-case hex: of the file, or for a split model of its shards'
    /// bytes one after the other (what `cat name-*-of-*.gguf | sha256sum` prints). Models of
    /// 256 MiB and more are hashed once per version on disk (see [`crate::fs::cached_digest`]):
    /// a 17 GB model costs ~10 s to hash, and runs name their model by this digest.
    pub fn sha256_hex(&self) -> String {
        const CACHE_FROM: u64 = 256 << 20;
        let compute = || {
            let mut h = Sha256::new();
            for s in &self.shards {
                h.update(&s.bytes[..]);
            }
            h.finalize().iter().map(|b| format!("{b:02x}")).collect()
        };
        let stamps: Option<Vec<&crate::fs::FileStamp>> =
            self.shards.iter().map(|s| s.stamp.as_ref()).collect();
        match stamps {
            Some(stamps) if self.file_len() >= CACHE_FROM => {
                crate::fs::cached_digest(&crate::fs::FileStamp::joined(&stamps), "sha256", compute)
            }
            _ => compute(),
        }
    }
}

/// Parse and validate one file; its tensors are numbered as shard `shard`.
fn parse(path: PathBuf, bytes: Bytes, shard: usize) -> Result<Parsed> {
    let label = path.display().to_string();
    let mut c = Cursor {
        buf: &bytes,
        pos: 0,
        label: &label,
        ctx: String::new(),
    };
    let magic = c.take(4, "magic")?;
    if magic != b"GGUF" {
        return Err(c.err_at(
            0,
            format!("not a GGUF file (magic {magic:02x?}, want \"GGUF\")"),
        ));
    }
    let version = c.u32("version")?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(c.err_at(
                4,
                "GGUF version 1 is not supported (only versions 2 and 3; v1 used 32-bit counts)",
            ));
        }
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err(c.err_at(4, "big-endian GGUF is not supported"));
        }
        v => {
            return Err(c.err_at(
                4,
                format!("GGUF version {v} is not supported (only versions 2 and 3)"),
            ));
        }
    }
    let n_tensors_at = c.pos;
    let n_tensors = c.u64("tensor count")?;
    let n_kv_at = c.pos;
    let n_kv = c.u64("metadata count")?;
    // A kv takes at least 8 (key length) + 4 (type) + 1 bytes, a tensor info at least
    // 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset).
    c.check_count(n_kv, 13, n_kv_at, "metadata count")?;

    let mut kv: Vec<(String, MetaValue)> = Vec::with_capacity(reserve(n_kv));
    let mut keys = HashSet::with_capacity(reserve(n_kv));
    for _ in 0..n_kv {
        let key_at = c.pos;
        let key = c.string("metadata key")?;
        if !keys.insert(key.clone()) {
            return Err(c.err_at(key_at, format!("duplicate metadata key '{key}'")));
        }
        let ty_at = c.pos;
        let ty = c.u32("value type")?;
        c.ctx = format!("key '{key}': ");
        let value = c.value(ty, ty_at, 0)?;
        c.ctx.clear();
        kv.push((key, value));
    }
    // Checked after the kv section, whose size we only know now.
    c.check_count(n_tensors, 24, n_tensors_at, "tensor count")?;

    let alignment = match kv.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, MetaValue::U32(a))) if *a != 0 && a.is_power_of_two() => *a as u64,
        Some((_, MetaValue::U32(a))) => {
            return Err(Error::input(format!(
                "{label}: general.alignment is {a}: must be a non-zero power of two"
            )));
        }
        Some((_, v)) => {
            return Err(Error::input(format!(
                "{label}: general.alignment has type {}, want u32",
                v.type_name()
            )));
        }
    };

    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(reserve(n_tensors));
    let mut names = HashSet::with_capacity(reserve(n_tensors));
    for _ in 0..n_tensors {
        let info_at = c.pos;
        let name = c.string("tensor name")?;
        if !names.insert(name.clone()) {
            return Err(c.err_at(info_at, format!("duplicate tensor name '{name}'")));
        }
        let nd_at = c.pos;
        let n_dims = c.u32("tensor n_dims")?;
        if n_dims as usize > MAX_DIMS {
            return Err(c.err_at(
                nd_at,
                format!("tensor '{name}' has {n_dims} dimensions (ggml allows at most {MAX_DIMS})"),
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64("tensor dimension")?);
        }
        let ty_at = c.pos;
        let ty_id = c.u32("tensor type")?;
        let ty = GgmlType::from_id(ty_id).ok_or_else(|| {
            c.err_at(
                ty_at,
                format!("tensor '{name}' has unknown ggml type id {ty_id}"),
            )
        })?;
        let offset_at = c.pos;
        let offset = c.u64("tensor offset")?;
        let info = tensor_info(name, dims, ty, offset, shard)
            .map_err(|e| e.context(format_args!("{label}: at byte {info_at}")))?;
        if info.offset % alignment != 0 {
            return Err(c.err_at(
                offset_at,
                format!(
                    "tensor '{}' offset {} is not a multiple of the alignment {alignment}",
                    info.name, info.offset
                ),
            ));
        }
        tensors.push(info);
    }

    let header_end = c.pos as u64;
    let data_start = align_up(header_end, alignment).ok_or_else(|| {
        Error::input(format!(
            "{label}: at byte {header_end}: data section start overflows"
        ))
    })?;
    let file_len = bytes.len() as u64;
    let data_len = file_len.saturating_sub(data_start);
    check_ranges(&label, &tensors, data_start, data_len)?;

    let n_tensors = tensors.len();
    Ok(Parsed {
        shard: Shard {
            path,
            bytes,
            stamp: None,
            alignment,
            data_start,
            n_tensors,
        },
        version,
        kv,
        tensors,
    })
}

/// Build and check one tensor info (dims, block size, byte size). Errors name the tensor;
/// the caller adds the file and byte offset.
fn tensor_info(
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    offset: u64,
    shard: usize,
) -> Result<TensorInfo> {
    // ggml keeps ne as int64_t: every dimension and the product must fit.
    let mut n: u64 = 1;
    for &d in &dims {
        n = n
            .checked_mul(d)
            .filter(|&n| n <= i64::MAX as u64 && d <= i64::MAX as u64)
            .ok_or_else(|| {
                Error::input(format!(
                    "tensor '{name}': dimensions {dims:?} overflow the element count"
                ))
            })?;
    }
    let row = dims.first().copied().unwrap_or(1);
    let bv = ty.block_values() as u64;
    if row % bv != 0 {
        return Err(Error::input(format!(
            "tensor '{name}': row length {row} is not a multiple of {ty}'s block size {bv}"
        )));
    }
    let nbytes = ty.bytes_for(n).ok_or_else(|| {
        Error::input(format!(
            "tensor '{name}': {n} elements of {ty} do not make whole blocks"
        ))
    })?;
    Ok(TensorInfo {
        name,
        dims,
        ty,
        offset,
        nbytes,
        shard,
    })
}

/// Every tensor's bytes lie inside the data section and no two tensors overlap.
fn check_ranges(label: &str, tensors: &[TensorInfo], data_start: u64, data_len: u64) -> Result<()> {
    let mut ranges: Vec<(u64, u64, &str)> = Vec::with_capacity(tensors.len());
    for t in tensors {
        let end = t.offset.checked_add(t.nbytes).filter(|&e| e <= data_len);
        let Some(end) = end else {
            return Err(Error::input(format!(
                "{label}: tensor '{}': data at bytes {}+{}..+{} ({} bytes of {}) runs past the end of the file ({} bytes)",
                t.name,
                data_start,
                t.offset,
                t.offset as u128 + t.nbytes as u128,
                t.nbytes,
                t.ty,
                data_start as u128 + data_len as u128,
            )));
        };
        if t.nbytes > 0 {
            ranges.push((t.offset, end, &t.name));
        }
    }
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if b.0 < a.1 {
            return Err(Error::input(format!(
                "{label}: tensors '{}' (data bytes {}..{}) and '{}' (data bytes {}..{}) overlap",
                a.2, a.0, a.1, b.2, b.0, b.1
            )));
        }
    }
    Ok(())
}

/// A bounds-checked little-endian reader over the header.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    label: &'a str,
    /// Prefix for messages, naming the metadata key being parsed.
    ctx: String,
}

impl<'a> Cursor<'a> {
    fn err_at(&self, at: usize, msg: impl std::fmt::Display) -> Error {
        Error::input(format!("{}: at byte {at}: {}{msg}", self.label, self.ctx))
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.err_at(
                self.pos,
                format!(
                    "file truncated: {what} needs {n} bytes, {} left",
                    self.remaining()
                ),
            )),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// `count` items of at least `min_size` bytes each must fit in what is left.
    fn check_count(&self, count: u64, min_size: u64, at: usize, what: &str) -> Result<()> {
        let need = count.checked_mul(min_size);
        if need.is_none_or(|n| n > self.remaining() as u64) {
            return Err(self.err_at(
                at,
                format!(
                    "{what} {count} is implausible: only {} bytes remain",
                    self.remaining()
                ),
            ));
        }
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let len = self.u64(what)?;
        if len > self.remaining() as u64 {
            return Err(self.err_at(
                at,
                format!(
                    "{what} length {len} runs past the end of the file ({} bytes left)",
                    self.remaining()
                ),
            ));
        }
        let s = self.take(len as usize, what)?;
        match std::str::from_utf8(s) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(self.err_at(
                at + 8 + e.valid_up_to(),
                format!("{what} is not valid UTF-8"),
            )),
        }
    }

    /// The smallest encoding of one value of type `ty`, for plausibility checks.
    fn min_size(ty: u32) -> Option<u64> {
        Some(match ty {
            vtype::U8 | vtype::I8 | vtype::BOOL => 1,
            vtype::U16 | vtype::I16 => 2,
            vtype::U32 | vtype::I32 | vtype::F32 => 4,
            vtype::U64 | vtype::I64 | vtype::F64 | vtype::STRING => 8,
            vtype::ARRAY => 12,
            _ => return None,
        })
    }

    fn value(&mut self, ty: u32, ty_at: usize, depth: usize) -> Result<MetaValue> {
        Ok(match ty {
            vtype::U8 => MetaValue::U8(u8::from_le_bytes(self.array("u8 value")?)),
            vtype::I8 => MetaValue::I8(i8::from_le_bytes(self.array("i8 value")?)),
            vtype::U16 => MetaValue::U16(u16::from_le_bytes(self.array("u16 value")?)),
            vtype::I16 => MetaValue::I16(i16::from_le_bytes(self.array("i16 value")?)),
            vtype::U32 => MetaValue::U32(self.u32("u32 value")?),
            vtype::I32 => MetaValue::I32(i32::from_le_bytes(self.array("i32 value")?)),
            vtype::F32 => MetaValue::F32(f32::from_le_bytes(self.array("f32 value")?)),
            vtype::U64 => MetaValue::U64(self.u64("u64 value")?),
            vtype::I64 => MetaValue::I64(i64::from_le_bytes(self.array("i64 value")?)),
            vtype::F64 => MetaValue::F64(f64::from_le_bytes(self.array("f64 value")?)),
            vtype::BOOL => {
                let at = self.pos;
                match self.array::<1>("bool value")?[0] {
                    0 => MetaValue::Bool(false),
                    1 => MetaValue::Bool(true),
                    b => return Err(self.err_at(at, format!("bool value {b} is neither 0 nor 1"))),
                }
            }
            vtype::STRING => MetaValue::String(self.string("string value")?),
            vtype::ARRAY => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err_at(
                        ty_at,
                        format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"),
                    ));
                }
                let ety_at = self.pos;
                let ety = self.u32("array element type")?;
                let Some(min) = Cursor::min_size(ety) else {
                    return Err(self.err_at(ety_at, format!("unknown array element type {ety}")));
                };
                let count_at = self.pos;
                let count = self.u64("array length")?;
                self.check_count(count, min, count_at, "array length")?;
                // grow with what is actually parsed: a 1-byte element must not reserve 32
                let mut items = Vec::with_capacity(reserve(count));
                for _ in 0..count {
                    let at = self.pos;
                    items.push(self.value(ety, at, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            t => return Err(self.err_at(ty_at, format!("unknown metadata value type {t}"))),
        })
    }
}
