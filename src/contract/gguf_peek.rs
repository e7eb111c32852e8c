//! A minimal GGUF metadata peek for lint: the architecture, layer count and expert count of a
//! model file, read from the key-value header without mapping tensors. (The full reader lives in
//! `model::gguf`; lint only needs three keys and must stay cheap on a 17 GB file, so it streams
//! the header and stops once it has them.)

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use crate::{Error, Result};

/// What lint needs to know about a model's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelShape {
    /// `general.architecture`: `qwen3moe` or `qwen3`.
    pub arch: String,
    /// `{arch}.block_count`.
    pub layers: usize,
    /// `{arch}.expert_count` (0 for dense models).
    pub experts: usize,
}

impl ModelShape {
    pub fn is_moe(&self) -> bool {
        self.experts > 0 || self.arch == "qwen3moe"
    }
}

/// Longest key or string value accepted (GGUF strings are u64-length-prefixed; a corrupt length
/// must not turn into a huge allocation).
const MAX_STRING: u64 = 1 << 20;

struct Peek {
    r: BufReader<File>,
    path: String,
    /// Byte offset of the next read, for error messages.
    at: u64,
}

impl Peek {
    fn bad(&self, what: &str) -> Error {
        Error::input(format!("{}: at byte {}: {what}", self.path, self.at))
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(|e| self.bad(&format!("truncated GGUF header: {e}")))?;
        self.at += N as u64;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes::<4>()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes::<8>()?))
    }

    fn string(&mut self) -> Result<String> {
        let n = self.u64()?;
        if n > MAX_STRING {
            return Err(self.bad(&format!("string of {n} bytes")));
        }
        let mut b = vec![0u8; n as usize];
        self.r
            .read_exact(&mut b)
            .map_err(|e| self.bad(&format!("truncated GGUF string: {e}")))?;
        self.at += n;
        String::from_utf8(b).map_err(|_| self.bad("string is not UTF-8"))
    }

    fn skip(&mut self, n: u64) -> Result<()> {
        let step = i64::try_from(n).map_err(|_| self.bad("value too large"))?;
        // seek_relative keeps the buffer when the target is inside it: a vocabulary of 150k
        // strings is skipped without a system call per string.
        self.r
            .seek_relative(step)
            .map_err(|e| self.bad(&format!("seek: {e}")))?;
        self.at = self.at.saturating_add(n);
        Ok(())
    }

    /// Size of a fixed-width value type, None for string (8) and array (9).
    fn fixed_size(ty: u32) -> Option<u64> {
        match ty {
            0 | 1 | 7 => Some(1),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            _ => None,
        }
    }

    /// Read an integer value of any integer type, or skip a value of another type.
    fn value(&mut self, ty: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::Int(u64::from(self.bytes::<1>()?[0])),
            2 => Value::Int(u64::from(u16::from_le_bytes(self.bytes::<2>()?))),
            4 => Value::Int(u64::from(self.u32()?)),
            5 => Value::Int(u64::try_from(i32::from_le_bytes(self.bytes::<4>()?)).unwrap_or(0)),
            10 => Value::Int(self.u64()?),
            11 => Value::Int(u64::try_from(i64::from_le_bytes(self.bytes::<8>()?)).unwrap_or(0)),
            8 => Value::Str(self.string()?),
            9 => {
                let et = self.u32()?;
                let n = self.u64()?;
                match Self::fixed_size(et) {
                    Some(sz) => {
                        let total = n
                            .checked_mul(sz)
                            .ok_or_else(|| self.bad("array too large"))?;
                        self.skip(total)?;
                    }
                    None if et == 8 => {
                        for _ in 0..n {
                            let len = self.u64()?;
                            self.skip(len)?;
                        }
                    }
                    None => return Err(self.bad(&format!("unsupported array element type {et}"))),
                }
                Value::Other
            }
            t => match Self::fixed_size(t) {
                Some(sz) => {
                    self.skip(sz)?;
                    Value::Other
                }
                None => return Err(self.bad(&format!("unknown value type {t}"))),
            },
        })
    }
}

enum Value {
    Int(u64),
    Str(String),
    Other,
}

/// Read architecture, block count and expert count from a GGUF file's metadata.
pub fn peek_shape(path: &Path) -> Result<ModelShape> {
    let f = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    let mut p = Peek {
        r: BufReader::new(f),
        path: path.display().to_string(),
        at: 0,
    };
    if &p.bytes::<4>()? != b"GGUF" {
        return Err(Error::input(format!(
            "{}: at byte 0: not a GGUF file (bad magic)",
            p.path
        )));
    }
    let version = p.u32()?;
    if !(2..=3).contains(&version) {
        return Err(Error::input(format!(
            "{}: at byte 4: unsupported GGUF version {version}",
            p.path
        )));
    }
    let _tensors = p.u64()?;
    let kvs = p.u64()?;
    let mut arch: Option<String> = None;
    let mut ints: Vec<(String, u64)> = Vec::new();
    for _ in 0..kvs {
        let key = p.string()?;
        let ty = p.u32()?;
        match p.value(ty)? {
            Value::Str(s) if key == "general.architecture" => arch = Some(s),
            Value::Int(v) if key.ends_with(".block_count") || key.ends_with(".expert_count") => {
                ints.push((key, v))
            }
            _ => {}
        }
    }
    let arch = arch
        .ok_or_else(|| Error::input(format!("{}: no general.architecture in metadata", p.path)))?;
    let get = |k: &str| {
        ints.iter()
            .find(|(key, _)| key == &format!("{arch}.{k}"))
            .map(|(_, v)| *v)
    };
    let layers = get("block_count")
        .ok_or_else(|| Error::input(format!("{}: no {arch}.block_count in metadata", p.path)))?;
    let experts = get("expert_count").unwrap_or(0);
    Ok(ModelShape {
        arch,
        layers: usize::try_from(layers).unwrap_or(usize::MAX),
        experts: usize::try_from(experts).unwrap_or(usize::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_shape() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let s = peek_shape(&root.join("fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf")).unwrap();
        assert_eq!(
            s,
            ModelShape {
                arch: "qwen3moe".into(),
                layers: 3,
                experts: 8
            }
        );
    }

    #[test]
    fn rejects_non_gguf() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let e = peek_shape(&root.join("Cargo.toml")).unwrap_err();
        assert!(e.message().contains("bad magic"), "{e}");
    }
}
