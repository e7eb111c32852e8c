//! The per-layer KV cache of a scheduled forward, and where the planted cache faults act on it.
//!
//! A step appends its post-RoPE K and its V at the slots of its positions, then its queries
//! attend over slots `0..end`. The full forward is the one-step case: the step's K/V are moved
//! into an empty cache (no copy) and dropped after the layer, so it costs what it did before
//! there was a cache.

use std::ops::Range;

use super::pass::Pass;
use crate::backend::FaultKind;
use crate::trace::stage::Stage;

/// One layer's K (post-RoPE) and V, `[slots, nkv, D]` each; slots not written yet are zero.
/// Values are f32, holding f16 values under an f16 cache (the step rounds K/V before writing).
#[derive(Default)]
pub(super) struct KvCache {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

impl KvCache {
    /// Make room for `len` values per tensor; new slots are zero (a fresh cache).
    pub fn grow(&mut self, len: usize) {
        if self.k.len() < len {
            self.k.resize(len, 0.0);
            self.v.resize(len, 0.0);
        }
    }

    /// Write the K/V rows of positions `start..` (`row` values per position) at their slots,
    /// or one slot early with `shift` (the planted `kv_slot_off_by_one`: slot p-1 for
    /// position p, slot -1 dropped).
    pub fn write(&mut self, start: usize, k: Vec<f32>, v: Vec<f32>, row: usize, shift: bool) {
        if !shift && start == 0 && self.k.is_empty() {
            (self.k, self.v) = (k, v);
            return;
        }
        let n = k.len().checked_div(row).unwrap_or(0);
        self.grow((start + n) * row);
        for r in 0..n {
            let Some(slot) = (start + r).checked_sub(usize::from(shift)) else {
                continue;
            };
            self.k[slot * row..][..row].copy_from_slice(&k[r * row..][..row]);
            self.v[slot * row..][..row].copy_from_slice(&v[r * row..][..row]);
        }
    }
}

/// How the step being computed uses the cache at layer `i`, with the faults planted there.
#[derive(Clone, Copy)]
pub(super) struct CacheUse {
    /// `kv_stale` (decode steps): attend before writing the step's own K/V.
    pub stale: bool,
    /// `kv_slot_off_by_one` (decode steps): write K/V one slot early.
    pub shift: bool,
    /// First key slot the step's queries see: the step's own start under `chunk_mask` in a
    /// prefill chunk, else 0.
    pub first_key: usize,
    /// How far past the diagonal a query sees (1 under `causal_mask_off_by_one`).
    pub lookahead: usize,
    /// The step's positions.
    pub start: usize,
    pub end: usize,
}

impl CacheUse {
    pub fn at(pass: &Pass, i: usize) -> CacheUse {
        let st = pass.step;
        let fault = |k: FaultKind| pass.has(Some(i), Stage::AttnProbs, |f| *f == k);
        let decode = st.is_decode();
        CacheUse {
            stale: decode && fault(FaultKind::KvStale),
            shift: decode && fault(FaultKind::KvSlotOffByOne),
            first_key: if !decode && fault(FaultKind::ChunkMask) {
                st.start
            } else {
                0
            },
            lookahead: usize::from(fault(FaultKind::CausalMaskOffByOne)),
            start: st.start,
            end: st.end,
        }
    }

    /// The key slots the query in row `qi` of the step sees: up to its own position (past it by
    /// the lookahead, but never past the step's last row: later slots are not written yet).
    pub fn keys(&self, qi: usize) -> Range<usize> {
        self.first_key..(self.start + qi + self.lookahead).min(self.end - 1) + 1
    }
}
