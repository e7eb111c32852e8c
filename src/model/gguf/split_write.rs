//! Writing a model split into shards the way llama.cpp's gguf-split `--split-max-size` does
//! (see `split.rs` for the layout): tensors are taken in order and a new shard starts when the
//! next tensor would take the current shard's tensor data past the limit, so a tensor larger
//! than the limit goes alone. Sizes count tensor data only, each padded to 32 bytes, as
//! gguf-split counts them: a shard's header comes on top.

use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::split::{KEY_COUNT, KEY_NO, KEY_TENSORS, split_path};
use super::{DEFAULT_ALIGNMENT, GgufWriter, MetaValue, align_up};
use crate::error::{Error, Result};

/// A size as llama.cpp's gguf-split takes it: `500M` (10^6 bytes), `2G` (10^9 bytes), or a
/// plain number of bytes. Must be positive.
pub fn parse_size(s: &str) -> Result<u64> {
    let bad = |why: &str| Error::input(format!("size '{s}': {why} (e.g. 500M, 2G or 1000000)"));
    let (digits, unit) = match s.as_bytes().last() {
        Some(b'M') => (&s[..s.len() - 1], 1_000_000),
        Some(b'G') => (&s[..s.len() - 1], 1_000_000_000),
        _ => (s, 1),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| bad("not a whole number with an optional unit M or G"))?;
    match n.checked_mul(unit) {
        Some(0) => Err(bad("must be positive")),
        Some(v) => Ok(v),
        None => Err(bad("too large")),
    }
}

/// The tensors of each shard, as index ranges, for tensors of `nbytes` bytes and at most
/// `max_size` bytes of (padded) tensor data per shard. Never an empty shard: a first tensor
/// larger than the limit stays in the first shard (gguf-split refuses that case instead).
pub fn plan_shards(nbytes: &[u64], max_size: u64) -> Vec<Range<usize>> {
    let mut shards = Vec::new();
    let (mut start, mut size) = (0usize, 0u64);
    for (i, &n) in nbytes.iter().enumerate() {
        let padded = align_up(n, DEFAULT_ALIGNMENT).unwrap_or(u64::MAX);
        let next = size.saturating_add(padded);
        if next > max_size && i > start {
            shards.push(start..i);
            start = i;
            size = padded;
        } else {
            size = next;
        }
    }
    shards.push(start..nbytes.len());
    shards
}

/// One model's shards, ready to write.
pub struct SplitWriter {
    shards: Vec<(GgufWriter, Range<usize>)>,
}

impl GgufWriter {
    /// Split this file into shards of at most `max_size` bytes of tensor data. The first
    /// shard gets the metadata, every shard the `split.*` keys (any already present are
    /// replaced).
    pub fn split(self, max_size: u64) -> Result<SplitWriter> {
        let nbytes: Vec<u64> = self.tensors.iter().map(|t| t.nbytes).collect();
        let ranges = plan_shards(&nbytes, max_size);
        let count = u16::try_from(ranges.len()).map_err(|_| {
            Error::input(format!(
                "{} shards of at most {max_size} bytes: llama.cpp allows at most {}",
                ranges.len(),
                u16::MAX
            ))
        })?;
        let total = i32::try_from(self.tensors.len())
            .map_err(|_| Error::input("more tensors than split.tensors.count (i32) can count"))?;
        let mut kv: Vec<(String, MetaValue)> = self
            .kv
            .into_iter()
            .filter(|(k, _)| ![KEY_NO, KEY_COUNT, KEY_TENSORS].contains(&k.as_str()))
            .collect();
        let mut tensors = self.tensors.into_iter();
        let mut shards = Vec::with_capacity(ranges.len());
        for (no, range) in ranges.into_iter().enumerate() {
            let mut w = GgufWriter {
                kv: std::mem::take(&mut kv),
                tensors: Vec::new(),
            };
            w.add_kv(KEY_NO, MetaValue::U16(no as u16));
            w.add_kv(KEY_COUNT, MetaValue::U16(count));
            w.add_kv(KEY_TENSORS, MetaValue::I32(total));
            w.tensors.extend(tensors.by_ref().take(range.len()));
            shards.push((w, range));
        }
        Ok(SplitWriter { shards })
    }
}

impl SplitWriter {
    pub fn n_shards(&self) -> usize {
        self.shards.len()
    }

    /// Total size of the files `write_files` will produce.
    pub fn file_len(&self) -> Result<u64> {
        self.shards
            .iter()
            .try_fold(0u64, |a, (w, _)| Ok(a.saturating_add(w.file_len()?)))
    }

    /// Write shard `i` to `split_path(prefix, i, n)`, calling `data(t, sink)` for every tensor
    /// `t` (numbered over the whole model) in order, as [`GgufWriter::write_to`] does. Returns
    /// the paths; on an error no shard is left behind.
    pub fn write_files(
        self,
        prefix: &Path,
        mut data: impl FnMut(usize, &mut dyn Write) -> Result<()>,
    ) -> Result<Vec<PathBuf>> {
        let n = self.shards.len();
        let mut written = Vec::with_capacity(n);
        for (no, (w, range)) in self.shards.into_iter().enumerate() {
            let path = split_path(prefix, no, n);
            let result = w.write_file(&path, |i, sink| data(range.start + i, sink));
            if let Err(e) = result {
                for p in &written {
                    let _ = std::fs::remove_file(p);
                }
                return Err(e);
            }
            written.push(path);
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_llama_cpp_units() {
        assert_eq!(parse_size("500M").unwrap(), 500_000_000);
        assert_eq!(parse_size("2G").unwrap(), 2_000_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        for bad in [
            "",
            "M",
            "0",
            "0G",
            "-1M",
            "1.5G",
            "2K",
            "99999999999999999999G",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn plans_as_gguf_split_does() {
        // sizes padded to 32 count: 40 -> 64
        assert_eq!(plan_shards(&[40, 40, 40], 128), vec![0..2, 2..3]);
        assert_eq!(plan_shards(&[64, 64, 64], 128), vec![0..2, 2..3]);
        // a tensor past the limit goes alone, the first one included
        assert_eq!(plan_shards(&[500, 10, 10], 100), vec![0..1, 1..3]);
        assert_eq!(plan_shards(&[10, 500, 10], 100), vec![0..1, 1..2, 2..3]);
        assert_eq!(plan_shards(&[10, 10], 1 << 30), vec![0..2]);
        assert_eq!(plan_shards(&[], 100), vec![0..0]);
    }
}
