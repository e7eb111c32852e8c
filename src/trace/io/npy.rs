//! Directories of `{key}.npy` files (docs/design.md "Trace files"): how engines that are not ours,
//! and numpy-based references, hand over their activations.
//!
//! Reading maps every file and hands out zero-copy views where the payload is little-endian f32
//! or i32 (numpy pads the header so the payload starts 16- or 64-byte aligned); f64, f16 and i64
//! are converted. Only C-order, little-endian arrays are accepted. Writing (for tests and for
//! handing our traces to numpy users) emits version 1.0 files.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::trace::stage::Key;
use crate::trace::tensor::{
    TensorData, TensorView, ViewData, f32_from_le_bytes, i32_from_le_bytes,
};
use crate::trace::trace::Trace;

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Element types a `.npy` trace file may hold.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum NpyDtype {
    F32,
    F64,
    F16,
    I32,
    I64,
}

impl NpyDtype {
    fn parse(descr: &str) -> Option<NpyDtype> {
        Some(match descr {
            "<f4" => NpyDtype::F32,
            "<f8" => NpyDtype::F64,
            "<f2" => NpyDtype::F16,
            "<i4" => NpyDtype::I32,
            "<i8" => NpyDtype::I64,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            NpyDtype::F16 => 2,
            NpyDtype::F32 | NpyDtype::I32 => 4,
            NpyDtype::F64 | NpyDtype::I64 => 8,
        }
    }
}

/// A parsed `.npy` header: dtype, shape and where the payload starts.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyHeader {
    pub dtype: NpyDtype,
    pub shape: Vec<usize>,
    pub data_offset: usize,
}

/// Parse the header of a `.npy` file held in `bytes`, checking that the payload size agrees with
/// the shape. `path` only names the file in errors.
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<NpyHeader> {
    let bad =
        |at: usize, what: String| Error::input(format!("{}: at byte {at}: {what}", path.display()));
    if bytes.len() < 10 {
        return Err(bad(
            0,
            format!(
                "truncated .npy header ({} bytes, need at least 10)",
                bytes.len()
            ),
        ));
    }
    if &bytes[..6] != MAGIC {
        return Err(bad(0, "not a .npy file (magic \\x93NUMPY missing)".into()));
    }
    let major = bytes[6];
    let (hlen, hstart): (usize, usize) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad(8, "truncated .npy v2 header length".into()));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(bad(6, format!("unsupported .npy version {v}"))),
    };
    let hend = hstart
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| {
            bad(
                hstart,
                format!(
                    "header of {hlen} bytes runs past the end of the file ({} bytes)",
                    bytes.len()
                ),
            )
        })?;
    let text = std::str::from_utf8(&bytes[hstart..hend])
        .map_err(|_| bad(hstart, "header is not text".into()))?;
    let field = |name: &str| -> Result<&str> {
        let pat = format!("'{name}'");
        let i = text
            .find(&pat)
            .ok_or_else(|| bad(hstart, format!("header has no '{name}' entry: {text:?}")))?;
        let rest = text[i + pat.len()..].trim_start();
        rest.strip_prefix(':')
            .map(str::trim_start)
            .ok_or_else(|| bad(hstart + i, format!("'{name}' is not followed by ':'")))
    };
    let descr_rest = field("descr")?;
    let descr = descr_rest
        .strip_prefix('\'')
        .and_then(|r| r.split_once('\''))
        .map(|(d, _)| d)
        .ok_or_else(|| bad(hstart, "'descr' is not a quoted string".into()))?;
    // single-byte and native-order descriptors of the same types are fine on little-endian hosts
    let descr_norm = descr.replace(['=', '|'], "<");
    let dtype = NpyDtype::parse(&descr_norm).ok_or_else(|| {
        bad(
            hstart,
            format!(
                "dtype '{descr}' not supported (little-endian f4, f8, f2, i4, i8 only; big-endian is not read)"
            ),
        )
    })?;
    let fortran = field("fortran_order")?;
    if fortran.starts_with("True") {
        return Err(bad(
            hstart,
            "array is in Fortran order; save it C-contiguous (np.ascontiguousarray)".into(),
        ));
    } else if !fortran.starts_with("False") {
        return Err(bad(hstart, "'fortran_order' is not True or False".into()));
    }
    let shape_rest = field("shape")?;
    let inner = shape_rest
        .strip_prefix('(')
        .and_then(|r| r.split_once(')'))
        .map(|(s, _)| s)
        .ok_or_else(|| bad(hstart, "'shape' is not a tuple".into()))?;
    let mut shape = Vec::new();
    for part in inner.split(',') {
        let p = part.trim();
        if p.is_empty() {
            continue;
        }
        let p = p.trim_end_matches('L');
        shape.push(
            p.parse::<usize>()
                .map_err(|_| bad(hstart, format!("bad dimension `{p}` in shape ({inner})")))?,
        );
    }
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(hstart, format!("shape {shape:?} overflows")))?;
    let nbytes = count
        .checked_mul(dtype.size())
        .ok_or_else(|| bad(hstart, format!("shape {shape:?} overflows")))?;
    let have = bytes.len() - hend;
    if have != nbytes {
        return Err(bad(
            hend,
            format!(
                "payload is {have} bytes but shape {shape:?} of {descr} needs {nbytes} (truncated or trailing data)"
            ),
        ));
    }
    Ok(NpyHeader {
        dtype,
        shape,
        data_offset: hend,
    })
}

/// Decode a payload of `dtype` into a view, zero-copy for aligned f32/i32.
pub(crate) fn view_payload<'a>(
    dtype: NpyDtype,
    shape: Option<Cow<'a, [usize]>>,
    bytes: &'a [u8],
) -> TensorView<'a> {
    let data = match dtype {
        NpyDtype::F32 => ViewData::F32(f32_from_le_bytes(bytes)),
        NpyDtype::I32 => ViewData::I32(i32_from_le_bytes(bytes)),
        NpyDtype::F64 => ViewData::F32(Cow::Owned(
            bytes
                .chunks_exact(8)
                .map(|c| {
                    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                })
                .collect(),
        )),
        NpyDtype::F16 => ViewData::F32(Cow::Owned(
            bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        )),
        // ids beyond i32 do not occur (token ids and expert ids); saturate rather than wrap
        NpyDtype::I64 => ViewData::I32(Cow::Owned(
            bytes
                .chunks_exact(8)
                .map(|c| {
                    let v = i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
                    v.clamp(i32::MIN as i64, i32::MAX as i64) as i32
                })
                .collect(),
        )),
    };
    TensorView { shape, data }
}

struct NpyEntry {
    path: PathBuf,
    mmap: Mmap,
    header: NpyHeader,
}

/// A directory of `{key}.npy` files, mapped.
pub struct NpyDir {
    dir: PathBuf,
    entries: BTreeMap<Key, NpyEntry>,
    other_files: Vec<String>,
}

impl NpyDir {
    /// Open every `*.npy` file of `dir` whose stem is a trace key. Other `.npy` files are listed
    /// in [`NpyDir::other_files`]; two files naming the same key (`layer.1.x` and `layer.01.x`)
    /// are an error.
    pub fn open(dir: &Path) -> Result<NpyDir> {
        let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, "reading directory", e))?;
        let mut names = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| Error::io(dir, "reading directory", e))?;
            let name = ent.file_name().to_string_lossy().into_owned();
            if name.ends_with(".npy") {
                names.push(name);
            }
        }
        names.sort();
        let mut entries: BTreeMap<Key, NpyEntry> = BTreeMap::new();
        let mut other_files = Vec::new();
        for name in names {
            let stem = &name[..name.len() - 4];
            let Ok(key) = stem.parse::<Key>() else {
                other_files.push(name);
                continue;
            };
            let path = dir.join(&name);
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
            // mapping an empty file fails on some systems; an empty file is a truncated header
            if len == 0 {
                return Err(Error::input(format!(
                    "{}: at byte 0: empty file (truncated .npy header)",
                    path.display()
                )));
            }
            // SAFETY: read-only map; files are not expected to change while a diff runs.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, "mapping", e))?;
            let header = parse_header(&path, &mmap)?;
            entries.insert(key, NpyEntry { path, mmap, header });
        }
        Ok(NpyDir {
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

    /// `.npy` files whose names are not trace keys.
    pub fn other_files(&self) -> &[String] {
        &self.other_files
    }

    pub fn path_of(&self, key: &Key) -> Option<&Path> {
        self.entries.get(key).map(|e| e.path.as_path())
    }

    pub fn get(&self, key: &Key) -> Result<Option<TensorView<'_>>> {
        let Some(e) = self.entries.get(key) else {
            return Ok(None);
        };
        let bytes = e.mmap.get(e.header.data_offset..).unwrap_or_default();
        Ok(Some(view_payload(
            e.header.dtype,
            Some(Cow::Borrowed(e.header.shape.as_slice())),
            bytes,
        )))
    }
}

/// Write one array as a version 1.0 `.npy` file.
pub fn write_npy(path: &Path, shape: &[usize], data: &TensorData) -> Result<()> {
    let descr = match data {
        TensorData::F32(_) => "<f4",
        TensorData::I32(_) => "<i4",
    };
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // magic(6) + version(2) + len(2) + header + '\n' must be a multiple of 64
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + 4 * shape.iter().product::<usize>());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    match data {
        TensorData::F32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::I32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
    }
    let mut f = File::create(path).map_err(|e| Error::io(path, "creating", e))?;
    f.write_all(&out)
        .map_err(|e| Error::io(path, "writing .npy", e))
}

/// Write every tensor of `trace` as `{dir}/{key}.npy` (the directory is created).
pub fn write_npy_dir(dir: &Path, trace: &Trace) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "creating directory", e))?;
    for (key, t) in &trace.tensors {
        write_npy(&dir.join(format!("{key}.npy")), &t.shape, &t.data)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::stage::Stage;
    use crate::trace::tensor::Tensor;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("falsifier-npy-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_zero_copy() {
        let d = tmp("rt");
        let mut t = Trace::default();
        t.insert(
            Key::layer(1, Stage::QProj),
            Tensor::f32(vec![2, 3], vec![1.0, 2.0, f32::NAN, -4.0, 5.0, 6.5]),
        );
        t.insert(Key::model(Stage::Tokens), Tensor::i32(vec![2], vec![7, 9]));
        write_npy_dir(&d, &t).unwrap();
        let dir = NpyDir::open(&d).unwrap();
        let v = dir.get(&Key::layer(1, Stage::QProj)).unwrap().unwrap();
        assert_eq!(v.shape.as_deref(), Some(&[2usize, 3][..]));
        assert!(matches!(v.data, ViewData::F32(Cow::Borrowed(_))));
        assert_eq!(v.to_owned_tensor().as_f32().unwrap()[5], 6.5);
        let tok = dir.get(&Key::model(Stage::Tokens)).unwrap().unwrap();
        assert_eq!(tok.to_owned_tensor().as_i32().unwrap(), &[7, 9]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_files_are_errors_naming_file_and_place() {
        let d = tmp("bad");
        let p = d.join("logits.npy");
        // truncated payload
        write_npy(&p, &[4], &TensorData::F32(vec![1.0; 4])).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        let e = NpyDir::open(&d).err().unwrap().to_string();
        assert!(e.contains("logits.npy") && e.contains("at byte 128"), "{e}");
        // truncated header
        std::fs::write(&p, &bytes[..7]).unwrap();
        let e = NpyDir::open(&d).err().unwrap().to_string();
        assert!(e.contains("truncated"), "{e}");
        // empty file
        std::fs::write(&p, b"").unwrap();
        assert!(NpyDir::open(&d).is_err());
        // big-endian and fortran order
        let hdr = |h: &str| {
            let mut h = h.to_string();
            while !(10 + h.len() + 1).is_multiple_of(64) {
                h.push(' ');
            }
            h.push('\n');
            let mut v = b"\x93NUMPY\x01\x00".to_vec();
            v.extend_from_slice(&(h.len() as u16).to_le_bytes());
            v.extend_from_slice(h.as_bytes());
            v.extend_from_slice(&[0u8; 16]);
            v
        };
        std::fs::write(
            &p,
            hdr("{'descr': '>f4', 'fortran_order': False, 'shape': (4,), }"),
        )
        .unwrap();
        assert!(NpyDir::open(&d).err().unwrap().to_string().contains(">f4"));
        std::fs::write(
            &p,
            hdr("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }"),
        )
        .unwrap();
        assert!(
            NpyDir::open(&d)
                .err()
                .unwrap()
                .to_string()
                .contains("Fortran")
        );
        // f64 is read and converted
        std::fs::write(
            &p,
            hdr("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }"),
        )
        .unwrap();
        let dir = NpyDir::open(&d).unwrap();
        assert_eq!(
            dir.get(&Key::model(Stage::Logits)).unwrap().unwrap().len(),
            2
        );
        // the same key twice
        write_npy(&p, &[1], &TensorData::F32(vec![1.0])).unwrap();
        write_npy(
            &d.join("layer.1.q_proj.npy"),
            &[1],
            &TensorData::F32(vec![1.0]),
        )
        .unwrap();
        write_npy(
            &d.join("layer.01.q_proj.npy"),
            &[1],
            &TensorData::F32(vec![1.0]),
        )
        .unwrap();
        let e = NpyDir::open(&d).err().unwrap().to_string();
        assert!(e.contains("present twice"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
