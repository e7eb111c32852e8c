//! One interface over every place a trace can come from: a safetensors trace file, a directory
//! of `{key}.npy` files, a directory of APRT dumps, or a [`Trace`] a backend just computed.
//! The diff engine reads both sides through [`TraceSource`] and never copies what it can borrow.

use std::borrow::Cow;
use std::path::Path;

use crate::error::{Error, Result};
use crate::trace::io::aprt::{AprtDir, looks_like_aprt};
use crate::trace::io::npy::NpyDir;
use crate::trace::io::safetensors::TraceFile;
use crate::trace::stage::Key;
use crate::trace::tensor::TensorView;
use crate::trace::trace::{Trace, TraceMeta};

/// The on-disk (or in-memory) format of a source.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SourceFormat {
    Safetensors,
    Npy,
    Aprt,
    Memory,
}

impl SourceFormat {
    pub fn name(self) -> &'static str {
        match self {
            SourceFormat::Safetensors => "safetensors",
            SourceFormat::Npy => "npy",
            SourceFormat::Aprt => "aprt",
            SourceFormat::Memory => "memory",
        }
    }
}

/// A readable trace. `Sync` so that a diff can read stages from several threads.
pub trait TraceSource: Sync {
    /// Where the trace came from (backend, model, tokens); empty fields when the format has none.
    fn meta(&self) -> Cow<'_, TraceMeta>;
    /// The stage keys present, in forward order.
    fn keys(&self) -> Vec<Key>;
    /// One stage, borrowed where possible; `None` when absent.
    fn get(&self, key: &Key) -> Result<Option<TensorView<'_>>>;
    fn format(&self) -> SourceFormat;
    /// A path (or `in-memory`) naming the source in reports and errors.
    fn location(&self) -> String;
    /// Names found in the source that are not trace keys (reported, not compared).
    fn other_names(&self) -> Vec<String> {
        Vec::new()
    }
}

impl TraceSource for TraceFile {
    fn meta(&self) -> Cow<'_, TraceMeta> {
        Cow::Borrowed(TraceFile::meta(self))
    }
    fn keys(&self) -> Vec<Key> {
        TraceFile::keys(self).copied().collect()
    }
    fn get(&self, key: &Key) -> Result<Option<TensorView<'_>>> {
        TraceFile::get(self, key)
    }
    fn format(&self) -> SourceFormat {
        SourceFormat::Safetensors
    }
    fn location(&self) -> String {
        self.path().display().to_string()
    }
    fn other_names(&self) -> Vec<String> {
        self.other_keys().to_vec()
    }
}

impl TraceSource for Trace {
    fn meta(&self) -> Cow<'_, TraceMeta> {
        Cow::Borrowed(&self.meta)
    }
    fn keys(&self) -> Vec<Key> {
        Trace::keys(self).copied().collect()
    }
    fn get(&self, key: &Key) -> Result<Option<TensorView<'_>>> {
        Ok(Trace::get(self, key).map(|t| t.view()))
    }
    fn format(&self) -> SourceFormat {
        SourceFormat::Memory
    }
    fn location(&self) -> String {
        "in-memory".into()
    }
}

impl TraceSource for NpyDir {
    fn meta(&self) -> Cow<'_, TraceMeta> {
        Cow::Owned(TraceMeta::default())
    }
    fn keys(&self) -> Vec<Key> {
        NpyDir::keys(self).copied().collect()
    }
    fn get(&self, key: &Key) -> Result<Option<TensorView<'_>>> {
        NpyDir::get(self, key)
    }
    fn format(&self) -> SourceFormat {
        SourceFormat::Npy
    }
    fn location(&self) -> String {
        self.dir().display().to_string()
    }
    fn other_names(&self) -> Vec<String> {
        self.other_files().to_vec()
    }
}

impl TraceSource for AprtDir {
    fn meta(&self) -> Cow<'_, TraceMeta> {
        Cow::Owned(TraceMeta::default())
    }
    fn keys(&self) -> Vec<Key> {
        AprtDir::keys(self).copied().collect()
    }
    fn get(&self, key: &Key) -> Result<Option<TensorView<'_>>> {
        AprtDir::get(self, key)
    }
    fn format(&self) -> SourceFormat {
        SourceFormat::Aprt
    }
    fn location(&self) -> String {
        self.dir().display().to_string()
    }
    fn other_names(&self) -> Vec<String> {
        self.other_files().to_vec()
    }
}

/// Open a trace source, telling the format from the path: a file is a safetensors trace; a
/// directory holding `.npy` files is an npy trace; one holding `layer-{N}/` directories or `.bin`
/// files is an APRT dump. A directory holding both is refused as ambiguous.
pub fn open_source(path: &Path) -> Result<Box<dyn TraceSource>> {
    let md = std::fs::metadata(path).map_err(|e| Error::io(path, "opening trace", e))?;
    if md.is_file() {
        let file = TraceFile::open(path)?;
        check_unique_keys(path)?;
        return Ok(Box::new(file));
    }
    if !md.is_dir() {
        return Err(Error::input(format!(
            "{}: neither a trace file nor a directory",
            path.display()
        )));
    }
    let has_npy = std::fs::read_dir(path)
        .map_err(|e| Error::io(path, "reading directory", e))?
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(".npy"));
    let has_aprt = looks_like_aprt(path);
    match (has_npy, has_aprt) {
        (true, false) => Ok(Box::new(NpyDir::open(path)?)),
        (false, true) => Ok(Box::new(AprtDir::open(path)?)),
        (true, true) => Err(Error::input(format!(
            "{}: directory holds both .npy files and APRT dumps; point at one kind",
            path.display()
        ))),
        (false, false) => Err(Error::input(format!(
            "{}: directory holds no trace (expected {{key}}.npy files, or APRT dumps layer-{{N}}/{{stage}}.bin and {{stage}}.bin)",
            path.display()
        ))),
    }
}

/// Refuse a safetensors header that names a tensor twice, literally or through two spellings of
/// one key (`layer.1.x`, `layer.01.x`): JSON parsers keep one of them silently.
fn check_unique_keys(path: &Path) -> Result<()> {
    use std::io::Read;

    struct Names(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Names {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Names, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Names;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a safetensors header object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut m: A,
                ) -> Result<Names, A::Error> {
                    let mut names = Vec::new();
                    while let Some(k) = m.next_key::<String>()? {
                        m.next_value::<serde::de::IgnoredAny>()?;
                        names.push(k);
                    }
                    Ok(Names(names))
                }
            }
            d.deserialize_map(V)
        }
    }

    let io = |e| Error::io(path, "reading trace header", e);
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(io)?;
    let n = u64::from_le_bytes(len);
    let size = f.metadata().map_err(io)?.len();
    if n > size.saturating_sub(8) {
        // TraceFile::open has already validated the header; nothing more to check
        return Ok(());
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(io)?;
    let Ok(Names(names)) = serde_json::from_slice::<Names>(&header) else {
        return Ok(());
    };
    let mut seen: std::collections::BTreeMap<Key, &str> = std::collections::BTreeMap::new();
    let mut literal = std::collections::BTreeSet::new();
    for name in &names {
        if !literal.insert(name.as_str()) {
            return Err(Error::input(format!(
                "{}: header: tensor `{name}` is present twice",
                path.display()
            )));
        }
        if let Ok(key) = name.parse::<Key>()
            && let Some(prev) = seen.insert(key, name)
        {
            return Err(Error::input(format!(
                "{}: header: `{prev}` and `{name}` name the same key {key} (present twice)",
                path.display()
            )));
        }
    }
    Ok(())
}
