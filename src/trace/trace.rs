//! A captured trace: the stages one forward kept, keyed in forward order, plus where it came from.

use std::collections::BTreeMap;

use super::stage::Key;
use super::tensor::Tensor;

/// Where a trace came from. Written into the safetensors `__metadata__` map as string values
/// (see [`TraceMeta::to_map`]) so that any safetensors reader can show it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TraceMeta {
    /// Backend that produced the trace: `cpu`, `cuda`, `transformers`, `llama.cpp`, ...
    pub backend: String,
    /// Model path as given on the command line.
    pub model: String,
    /// sha256 of the model file, hex.
    pub model_sha256: String,
    /// Prompt token ids.
    pub tokens: Vec<u32>,
    /// The capture plan, in the CLI's syntax (e.g. `stages=all layers=0..48`).
    pub plan: String,
    /// Free-form notes on numerics (accumulation precision, activation rounding, faults planted).
    pub dtype: String,
    /// Anything else a producer wants to record (sorted, so files are reproducible).
    pub extra: BTreeMap<String, String>,
}

/// The `extra` key under which a trace keeps each prompt position's token piece (a JSON array
/// of strings, one per token), when the prompt came through a tokenizer.
pub const PIECES_KEY: &str = "token_pieces";

impl TraceMeta {
    /// Each prompt position's token piece (`" world"`), when the producer recorded them and
    /// there is one per token; empty otherwise.
    pub fn pieces(&self) -> Vec<String> {
        self.extra
            .get(PIECES_KEY)
            .and_then(|j| serde_json::from_str::<Vec<String>>(j).ok())
            .filter(|p| p.len() == self.tokens.len())
            .unwrap_or_default()
    }

    /// Record the pieces (none recorded when `pieces` is empty).
    pub fn set_pieces(&mut self, pieces: &[String]) {
        if pieces.is_empty() {
            self.extra.remove(PIECES_KEY);
        } else if let Ok(j) = serde_json::to_string(pieces) {
            self.extra.insert(PIECES_KEY.into(), j);
        }
    }

    /// The metadata as the flat string map safetensors stores. Sorted, so two runs of the same
    /// forward write byte-identical files.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut m = self.extra.clone();
        m.insert("format".into(), "falsifier-trace/1".into());
        m.insert("backend".into(), self.backend.clone());
        m.insert("model".into(), self.model.clone());
        m.insert("model_sha256".into(), self.model_sha256.clone());
        let toks: Vec<String> = self.tokens.iter().map(|t| t.to_string()).collect();
        m.insert("tokens".into(), toks.join(","));
        m.insert("plan".into(), self.plan.clone());
        m.insert("dtype".into(), self.dtype.clone());
        m
    }

    /// Inverse of [`TraceMeta::to_map`]; unknown keys land in `extra`, missing keys stay empty
    /// (traces from other tools carry less).
    pub fn from_map(map: &BTreeMap<String, String>) -> TraceMeta {
        let mut meta = TraceMeta::default();
        for (k, v) in map {
            match k.as_str() {
                "format" => {}
                "backend" => meta.backend = v.clone(),
                "model" => meta.model = v.clone(),
                "model_sha256" => meta.model_sha256 = v.clone(),
                "tokens" => {
                    meta.tokens = v.split(',').filter_map(|t| t.trim().parse().ok()).collect()
                }
                "plan" => meta.plan = v.clone(),
                "dtype" => meta.dtype = v.clone(),
                _ => {
                    meta.extra.insert(k.clone(), v.clone());
                }
            }
        }
        meta
    }
}

/// An owned trace, as a backend returns it.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    pub meta: TraceMeta,
    pub tensors: BTreeMap<Key, Tensor>,
}

impl Trace {
    pub fn new(meta: TraceMeta) -> Trace {
        Trace {
            meta,
            tensors: BTreeMap::new(),
        }
    }

    pub fn get(&self, key: &Key) -> Option<&Tensor> {
        self.tensors.get(key)
    }

    pub fn insert(&mut self, key: Key, tensor: Tensor) {
        self.tensors.insert(key, tensor);
    }

    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.tensors.keys()
    }

    /// Total payload bytes.
    pub fn nbytes(&self) -> usize {
        self.tensors.values().map(|t| t.len() * 4).sum()
    }
}
