//! Split models as llama.cpp's gguf-split (and gguf-py's writer) write them: shard `i` of `n`
//! is `PREFIX-{i+1:05}-of-{n:05}.gguf` (llama.cpp's `llama_split_path`), each a whole GGUF file
//! with its own tensor infos and data, and keys
//!
//! - `split.no` (u16): the 0-based shard number;
//! - `split.count` (u16): the number of shards;
//! - `split.tensors.count` (i32): the tensors of all shards together.
//!
//! The first shard holds the model's metadata; the others hold only these keys. A model is
//! opened by its first shard, as llama.cpp's loader does (`llama-model-loader.cpp`): the other
//! shards are found by name, each must say it is the shard its name says, no tensor may be in
//! two shards, and the tensors must add up to `split.tensors.count`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::MetaValue;
use super::read::{GgufFile, Parsed};
use crate::error::{Error, Result};

pub const KEY_NO: &str = "split.no";
pub const KEY_COUNT: &str = "split.count";
pub const KEY_TENSORS: &str = "split.tensors.count";

/// The path of shard `no` (0-based) of `count`: `PREFIX-00002-of-00003.gguf`.
pub fn split_path(prefix: &Path, no: usize, count: usize) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(format!("-{:05}-of-{count:05}.gguf", no + 1));
    PathBuf::from(s)
}

/// The prefix of `path` when it is named as shard `no` of `count`, else `None`
/// (llama.cpp's `llama_split_prefix`).
pub fn split_prefix(path: &Path, no: usize, count: usize) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(&format!("-{:05}-of-{count:05}.gguf", no + 1))?;
    (!stem.is_empty()).then(|| path.with_file_name(stem))
}

/// The split keys of one file: `None` for a file that is not a shard.
struct SplitKeys {
    no: u16,
    count: u16,
}

fn split_keys(p: &Parsed) -> Result<Option<SplitKeys>> {
    let label = p.shard.path().display();
    let u16_key = |key: &str| match p.get(key) {
        None => Ok(None),
        Some(MetaValue::U16(v)) => Ok(Some(*v)),
        Some(v) => Err(Error::input(format!(
            "{label}: {key} has type {}, want u16",
            v.type_name()
        ))),
    };
    match (u16_key(KEY_NO)?, u16_key(KEY_COUNT)?) {
        (None, None) => Ok(None),
        (Some(no), Some(count)) => Ok(Some(SplitKeys { no, count })),
        (no, _) => Err(Error::input(format!(
            "{label}: has {} but not {}: a shard needs both",
            if no.is_some() { KEY_NO } else { KEY_COUNT },
            if no.is_some() { KEY_COUNT } else { KEY_NO },
        ))),
    }
}

/// A model read from one image that must not need other files (an in-memory image).
pub(super) fn single(first: Parsed) -> Result<GgufFile> {
    if let Some(k) = split_keys(&first)?
        && k.count > 1
    {
        return Err(Error::input(format!(
            "{}: shard {} of a model split into {} ({KEY_COUNT} = {}): its other shards can only be found on disk",
            first.shard.path().display(),
            k.no as usize + 1,
            k.count,
            k.count
        )));
    }
    assemble_with(first, |_, _| unreachable_shard())
}

fn unreachable_shard() -> Result<Parsed> {
    Err(Error::internal("no other shard to open"))
}

/// The model whose first file is `first`: the file itself, or with every other shard of it.
pub(super) fn assemble(first: Parsed) -> Result<GgufFile> {
    assemble_with(first, Parsed::open)
}

fn assemble_with(first: Parsed, open: impl Fn(&Path, usize) -> Result<Parsed>) -> Result<GgufFile> {
    let path = first.shard.path().to_path_buf();
    let label = path.display();
    let count = match split_keys(&first)? {
        None => 1,
        Some(k) if k.count == 0 => {
            return Err(Error::input(format!("{label}: {KEY_COUNT} is 0")));
        }
        Some(k) if k.no != 0 => {
            let first_name = split_prefix(&path, k.no as usize, k.count as usize)
                .map(|p| split_path(&p, 0, k.count as usize).display().to_string())
                .unwrap_or_else(|| "the file named ...-00001-of-...".into());
            return Err(Error::input(format!(
                "{label}: this is shard {} of {} ({KEY_NO} = {}); open the first shard, {first_name}",
                k.no as usize + 1,
                k.count,
                k.no
            )));
        }
        Some(k) => k.count as usize,
    };
    let mut others = Vec::with_capacity(count - 1);
    if count > 1 {
        let prefix = split_prefix(&path, 0, count).ok_or_else(|| {
            Error::input(format!(
                "{label}: {KEY_COUNT} is {count}, so this is shard 1 of {count} and its name must end in -00001-of-{count:05}.gguf for the other shards to be found"
            ))
        })?;
        for no in 1..count {
            let shard_path = split_path(&prefix, no, count);
            if !shard_path.exists() {
                return Err(Error::input(format!(
                    "{label}: shard {} of {count} ({KEY_COUNT} = {count}) is missing: expected {}",
                    no + 1,
                    shard_path.display()
                )));
            }
            let p = open(&shard_path, no)?;
            check_shard(&p, no, count)?;
            others.push(p);
        }
    }
    let mut model = GgufFile {
        version: first.version,
        kv: first.kv,
        tensors: first.tensors,
        shards: vec![first.shard],
    };
    // where each name was seen, for duplicates across shards (each file has no duplicate)
    let mut seen: HashMap<String, usize> = HashMap::new();
    if count > 1 {
        seen.extend(model.tensors.iter().map(|t| (t.name.clone(), 0)));
    }
    for p in others {
        let no = model.shards.len();
        for t in &p.tensors {
            if let Some(&was) = seen.get(&t.name) {
                return Err(Error::input(format!(
                    "{}: tensor '{}' is also in shard {} ({}): a tensor must be in one shard",
                    p.shard.path().display(),
                    t.name,
                    was + 1,
                    model.shards[was].path().display()
                )));
            }
            seen.insert(t.name.clone(), no);
        }
        model.tensors.extend(p.tensors);
        model.shards.push(p.shard);
    }
    if count > 1 {
        check_total(&model)?;
    }
    Ok(model)
}

/// Shard `no` of `count` says so in its own keys.
fn check_shard(p: &Parsed, no: usize, count: usize) -> Result<()> {
    let label = p.shard.path().display();
    let k = split_keys(p)?.ok_or_else(|| {
        Error::input(format!(
            "{label}: has no {KEY_NO}/{KEY_COUNT}: not a shard of a split model (expected shard {} of {count})",
            no + 1
        ))
    })?;
    if k.no as usize != no || k.count as usize != count {
        return Err(Error::input(format!(
            "{label}: {KEY_NO} = {}, {KEY_COUNT} = {}, but its name makes it shard {} of {count} ({KEY_NO} = {no}, {KEY_COUNT} = {count})",
            k.no,
            k.count,
            no + 1
        )));
    }
    Ok(())
}

/// The shards' tensors add up to the first shard's `split.tensors.count`.
fn check_total(model: &GgufFile) -> Result<()> {
    let label = model.path().display();
    let want = match model.get(KEY_TENSORS) {
        Some(MetaValue::I32(n)) => *n,
        Some(v) => {
            return Err(Error::input(format!(
                "{label}: {KEY_TENSORS} has type {}, want i32",
                v.type_name()
            )));
        }
        None => {
            return Err(Error::input(format!(
                "{label}: a split model's first shard needs {KEY_TENSORS}"
            )));
        }
    };
    let found = model.tensors.len();
    if i64::from(want) != found as i64 {
        let per: Vec<String> = model
            .shards
            .iter()
            .map(|s| format!("{}: {}", s.path().display(), s.n_tensors()))
            .collect();
        return Err(Error::input(format!(
            "{label}: {KEY_TENSORS} is {want}, but the {} shards hold {found} tensors ({})",
            model.shards.len(),
            per.join(", ")
        )));
    }
    Ok(())
}
