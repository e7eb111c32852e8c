//! Typed reads of a GGUF file's metadata keys, with errors that name the file and the key: the
//! one reader the model config and the tokenizer share.

use super::{GgufFile, MetaValue};
use crate::error::{Error, Result};

/// Reads typed keys of one file, with errors naming the file and the key.
pub(crate) struct Keys<'a> {
    pub(crate) f: &'a GgufFile,
    pub(crate) label: String,
}

impl Keys<'_> {
    pub(crate) fn of(f: &GgufFile) -> Keys<'_> {
        Keys {
            f,
            label: f.path().display().to_string(),
        }
    }

    pub(crate) fn err(&self, key: &str, msg: impl std::fmt::Display) -> Error {
        Error::input(format!("{}: key '{key}': {msg}", self.label))
    }

    pub(crate) fn opt_uint(&self, key: &str) -> Result<Option<usize>> {
        match self.f.get(key) {
            None => Ok(None),
            Some(v) => {
                let n = v
                    .as_u64()
                    .ok_or_else(|| self.wrong(key, v, "a non-negative integer"))?;
                usize::try_from(n)
                    .map(Some)
                    .map_err(|_| self.err(key, format!("{n} is too large")))
            }
        }
    }

    /// A required size: present, an integer, not zero.
    pub(crate) fn size(&self, key: &str) -> Result<usize> {
        match self.opt_uint(key)? {
            None => Err(self.err(key, "missing")),
            Some(0) => Err(self.err(key, "is 0")),
            Some(n) => Ok(n),
        }
    }

    pub(crate) fn opt_size(&self, key: &str) -> Result<Option<usize>> {
        match self.opt_uint(key)? {
            Some(0) => Err(self.err(key, "is 0")),
            n => Ok(n),
        }
    }

    pub(crate) fn opt_float(&self, key: &str) -> Result<Option<f32>> {
        match self.f.get(key) {
            None => Ok(None),
            Some(v) => {
                let x = v.as_f64().ok_or_else(|| self.wrong(key, v, "a number"))?;
                if !(x.is_finite() && x > 0.0) {
                    return Err(self.err(key, format!("{x} is not a positive finite number")));
                }
                Ok(Some(x as f32))
            }
        }
    }

    pub(crate) fn wrong(&self, key: &str, v: &MetaValue, want: &str) -> Error {
        self.err(key, format!("has type {}, want {want}", v.type_name()))
    }

    pub(crate) fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.f.get(key) {
            None => Ok(None),
            Some(MetaValue::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.err(key, format!("has type {}, want string", v.type_name()))),
        }
    }

    pub(crate) fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.f.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("has type {}, want bool", v.type_name()))),
        }
    }

    /// A token id key: an integer below the vocabulary size.
    pub(crate) fn opt_id(&self, key: &str, vocab: usize) -> Result<Option<u32>> {
        match self.f.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(id) if (id as u128) < vocab as u128 => Ok(Some(id as u32)),
                Some(id) => Err(self.err(
                    key,
                    format!("token id {id} is past the vocabulary ({vocab} tokens)"),
                )),
                None => Err(self.err(key, format!("has type {}, want a token id", v.type_name()))),
            },
        }
    }

    /// An array key whose items all have one type, read by `item`.
    pub(crate) fn opt_array<T>(
        &self,
        key: &str,
        want: &str,
        item: impl Fn(&MetaValue) -> Option<T>,
    ) -> Result<Option<Vec<T>>> {
        let Some(v) = self.f.get(key) else {
            return Ok(None);
        };
        let items = v.as_array().ok_or_else(|| {
            self.err(
                key,
                format!("has type {}, want an array of {want}", v.type_name()),
            )
        })?;
        items
            .iter()
            .enumerate()
            .map(|(i, x)| {
                item(x).ok_or_else(|| {
                    self.err(
                        key,
                        format!("item {i} has type {}, want {want}", x.type_name()),
                    )
                })
            })
            .collect::<Result<Vec<T>>>()
            .map(Some)
    }
}
