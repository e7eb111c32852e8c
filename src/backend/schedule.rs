//! How a forward walks the prompt: the whole prompt in one step (the default), or the way
//! inference engines serve it, prefill in chunks of C tokens and then the last N prompt tokens
//! one at a time as decode steps through a KV cache. The trace of any schedule has the same keys
//! and shapes as the full forward (every position's row comes from the step that computed it),
//! so a scheduled run is diffed against a full one stage by stage (docs/design.md "Backends").
//! A schedule also says what the KV cache stores: f32 (the default) or f16, K and V rounded to
//! half precision as they enter the cache (an engine's f16 cache, compared against f32).

use std::fmt;
use std::str::FromStr;

/// The `TraceMeta.extra` key under which a trace records its schedule (`chunk=8,decode=16`,
/// `kv=f16`); absent for the full forward with an f32 cache.
pub const SCHEDULE_KEY: &str = "schedule";

/// What the KV cache stores. `F16`: K (post-RoPE) and V are rounded to the nearest f16 (ties to
/// even) as they are written into the cache, under every schedule, the full forward included;
/// the stages `k_rope` and `v_proj` keep their unrounded values (the cache is storage, not a
/// stage), while `attn_probs` and `attn_ctx` read the rounded cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvDtype {
    #[default]
    F32,
    F16,
}

impl KvDtype {
    /// `x` as the cache stores it: itself for f32, rounded through f16 for f16.
    pub fn round(self, x: f32) -> f32 {
        match self {
            KvDtype::F32 => x,
            KvDtype::F16 => half::f16::from_f32(x).to_f32(),
        }
    }

    /// Bytes the cache stores a value in.
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 => 2,
        }
    }

    /// Round every value of `xs` as the cache stores it (nothing to do for f32).
    pub fn round_all(self, xs: &mut [f32]) {
        if self == KvDtype::F16 {
            xs.iter_mut().for_each(|x| *x = self.round(*x));
        }
    }
}

impl fmt::Display for KvDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
        })
    }
}

impl FromStr for KvDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "f32" => Ok(KvDtype::F32),
            "f16" => Ok(KvDtype::F16),
            other => Err(format!("unknown KV cache type `{other}` (known: f32, f16)")),
        }
    }
}

/// `f32` or `f16` in a contract (`schedule: { kv_cache: f16 }`); anything else is an error
/// naming the value and the known ones, at its place in the file.
impl<'de> serde::Deserialize<'de> for KvDtype {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // a visitor, so that the error is raised at the value (file:line:column of the scalar)
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = KvDtype;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a KV cache type: f32 or f16")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KvDtype, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// Prefill chunk size, decode step count and what the KV cache stores. `Schedule::full()` (the
/// default) is one step over the whole prompt with an f32 cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    /// Prefill chunk size C (`None`: the prefill part is one chunk).
    pub chunk: Option<usize>,
    /// How many of the last prompt tokens are fed one at a time as decode steps (N).
    pub decode: usize,
    /// What the KV cache stores (f32 by default).
    pub kv: KvDtype,
}

/// What a step is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// The k-th prefill chunk (0-based).
    Prefill(usize),
    /// The k-th decode step (0-based).
    Decode(usize),
}

/// One step: the prompt positions `[start, end)` it computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub start: usize,
    pub end: usize,
    pub kind: StepKind,
}

impl Step {
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    pub fn is_decode(&self) -> bool {
        matches!(self.kind, StepKind::Decode(_))
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            StepKind::Decode(k) => write!(f, "decode step {k}"),
            StepKind::Prefill(k) => write!(
                f,
                "prefill chunk {k} (positions {}..{})",
                self.start, self.end
            ),
        }
    }
}

impl Schedule {
    /// One step over the whole prompt with an f32 cache: the batched forward every backend
    /// runs.
    pub const fn full() -> Schedule {
        Schedule {
            chunk: None,
            decode: 0,
            kv: KvDtype::F32,
        }
    }

    /// Chunks of `chunk` tokens and `decode` decode steps, with an f32 cache.
    pub fn new(chunk: Option<usize>, decode: usize) -> Schedule {
        Schedule {
            chunk,
            decode,
            kv: KvDtype::F32,
        }
    }

    /// The same steps with a cache that stores `kv`.
    pub fn with_kv(self, kv: KvDtype) -> Schedule {
        Schedule { kv, ..self }
    }

    /// Whether this is the default: one step with an f32 cache, nothing to record, and what
    /// every backend runs (a registered engine is asked for nothing else). An f16 cache is not
    /// the default, even over one step.
    pub fn is_full(&self) -> bool {
        *self == Schedule::full()
    }

    /// Whether every prompt is walked in one step (no chunk size, no decode steps), whatever the
    /// cache stores. A chunk of C >= T tokens is one step too over a prompt of T tokens, but not
    /// over a longer one: with the prompt's length at hand, ask `steps(t)` (one step).
    pub fn is_one_step(&self) -> bool {
        self.chunk.is_none() && self.decode == 0
    }

    /// Check the schedule against a prompt of `t` tokens: a chunk of at least one token, and no
    /// more decode steps than prompt tokens.
    pub fn check(&self, t: usize) -> Result<(), String> {
        if self.chunk == Some(0) {
            return Err("schedule: the prefill chunk must be at least 1 token".into());
        }
        if self.decode > t {
            return Err(format!(
                "schedule: {} decode steps, but the prompt has only {t} tokens",
                self.decode
            ));
        }
        Ok(())
    }

    /// The steps over a prompt of `t` tokens, in order: prefill chunks over positions
    /// `0..t-N`, then one decode step per position of `t-N..t`. They tile `0..t` exactly.
    pub fn steps(&self, t: usize) -> Result<Vec<Step>, String> {
        self.check(t)?;
        let prefill = t - self.decode;
        let chunk = self.chunk.unwrap_or(prefill.max(1));
        let mut steps = Vec::new();
        let mut start = 0;
        while start < prefill {
            let end = (start + chunk).min(prefill);
            steps.push(Step {
                start,
                end,
                kind: StepKind::Prefill(steps.len()),
            });
            start = end;
        }
        steps.extend((prefill..t).enumerate().map(|(k, p)| Step {
            start: p,
            end: p + 1,
            kind: StepKind::Decode(k),
        }));
        Ok(steps)
    }
}

/// `full`, or the parts that are set: `chunk=8,decode=16`, `chunk=8`, `decode=16`, with
/// `kv=f16` appended for an f16 cache (`chunk=8,decode=16,kv=f16`; the full forward with an f16
/// cache is `kv=f16`).
impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(c) = self.chunk {
            parts.push(format!("chunk={c}"));
        }
        if self.decode > 0 {
            parts.push(format!("decode={}", self.decode));
        }
        if self.kv != KvDtype::F32 {
            parts.push(format!("kv={}", self.kv));
        }
        if parts.is_empty() {
            f.write_str("full")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

impl FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            format!("bad schedule `{s}`: {why} (form: full | chunk=C,decode=N,kv=f32|f16)")
        };
        let s = s.trim();
        if s == "full" {
            return Ok(Schedule::full());
        }
        let mut out = Schedule::full();
        let mut seen = [false; 3];
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad("expected KEY=VALUE"))?;
            let (k, v) = (k.trim(), v.trim());
            let n = || -> Result<usize, String> {
                v.parse()
                    .map_err(|_| bad("chunk and decode are non-negative integers"))
            };
            let i = match k {
                "chunk" => 0,
                "decode" => 1,
                "kv" => 2,
                _ => return Err(bad("unknown key (known: chunk, decode, kv)")),
            };
            if std::mem::replace(&mut seen[i], true) {
                return Err(bad("a key appears twice"));
            }
            match i {
                0 => out.chunk = Some(n()?),
                1 => out.decode = n()?,
                _ => out.kv = v.parse().map_err(|e: String| bad(&e))?,
            }
        }
        if out.chunk == Some(0) {
            return Err(bad("the prefill chunk must be at least 1 token"));
        }
        Ok(out)
    }
}

/// The step of `schedule` (its text, as trace metadata records it) that computes position `p`
/// of a `t`-token prompt, in words: `decode step 5`, `prefill chunk 1 (positions 8..16)`.
/// Reports add it where they name a position of a scheduled trace.
pub fn step_of_position(schedule: &str, t: usize, p: usize) -> Result<String, String> {
    let s: Schedule = schedule.parse()?;
    let steps = s.steps(t)?;
    steps
        .iter()
        .find(|st| (st.start..st.end).contains(&p))
        .map(|st| st.to_string())
        .ok_or_else(|| format!("position {p} is past the prompt ({t} tokens)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(s: Schedule, t: usize) -> Vec<(usize, usize, bool)> {
        s.steps(t)
            .unwrap()
            .iter()
            .map(|st| (st.start, st.end, st.is_decode()))
            .collect()
    }

    #[test]
    fn steps_tile_the_prompt() {
        assert_eq!(ranges(Schedule::full(), 5), vec![(0, 5, false)]);
        assert_eq!(
            ranges(Schedule::new(Some(2), 2), 7),
            vec![
                (0, 2, false),
                (2, 4, false),
                (4, 5, false),
                (5, 6, true),
                (6, 7, true)
            ]
        );
        // N = T: no prefill at all; C > T: one chunk
        assert_eq!(
            ranges(Schedule::new(None, 3), 3),
            vec![(0, 1, true), (1, 2, true), (2, 3, true)]
        );
        assert_eq!(ranges(Schedule::new(Some(9), 0), 4), vec![(0, 4, false)]);
        for (c, n, t) in [(1, 0, 5), (3, 2, 11), (4, 11, 11), (2, 1, 1)] {
            let steps = Schedule::new(Some(c), n).steps(t).unwrap();
            let mut next = 0;
            for st in &steps {
                assert_eq!(st.start, next);
                assert!(!st.is_empty());
                next = st.end;
            }
            assert_eq!(next, t);
            assert_eq!(steps.iter().filter(|s| s.is_decode()).count(), n);
        }
    }

    #[test]
    fn full_one_step_and_the_cache_type() {
        let f16 = Schedule::full().with_kv(KvDtype::F16);
        assert!(Schedule::full().is_full() && Schedule::full().is_one_step());
        // an f16 cache is not the default, but still one step
        assert!(!f16.is_full() && f16.is_one_step());
        assert_eq!(f16.steps(5).unwrap(), Schedule::full().steps(5).unwrap());
        // a chunk covering the prompt is one step over it, but not over every prompt
        let c9 = Schedule::new(Some(9), 0);
        assert!(!c9.is_one_step() && c9.steps(4).unwrap().len() == 1);
        assert!(!Schedule::new(None, 1).is_one_step());
        assert_eq!(Schedule::new(Some(2), 1).kv, KvDtype::F32);
        assert_eq!(KvDtype::F32.round(0.1), 0.1);
        // 0.1 is not an f16: the nearest one is 0.0999755859375
        assert_eq!(KvDtype::F16.round(0.1), 0.099_975_586);
        // ties go to even: 1 + 2^-11 is halfway between 1 and 1 + 2^-10
        assert_eq!(KvDtype::F16.round(1.0 + 2f32.powi(-11)), 1.0);
        assert_eq!(
            KvDtype::F16.round(1.0 + 3.0 * 2f32.powi(-11)),
            1.0 + 2f32.powi(-9)
        );
    }

    #[test]
    fn bad_schedules_are_errors() {
        let e = Schedule::new(Some(0), 0).check(4).unwrap_err();
        assert!(e.contains("at least 1 token"), "{e}");
        let e = Schedule::new(None, 5).steps(4).unwrap_err();
        assert!(
            e.contains("5 decode steps, but the prompt has only 4"),
            "{e}"
        );
        for bad in [
            "",
            "chunk",
            "chunk=x",
            "chunk=0",
            "chunk=1,chunk=2",
            "foo=1",
            "kv=f8",
            "kv=",
            "kv=f16,kv=f32",
            "chunk=f16",
        ] {
            assert!(bad.parse::<Schedule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn text_round_trip_and_step_names() {
        for s in [
            "full",
            "chunk=8",
            "decode=3",
            "chunk=8,decode=16",
            "kv=f16",
            "chunk=8,kv=f16",
            "decode=3,kv=f16",
            "chunk=8,decode=16,kv=f16",
        ] {
            assert_eq!(s.parse::<Schedule>().unwrap().to_string(), s);
        }
        assert_eq!(
            "decode=16,chunk=8".parse::<Schedule>().unwrap(),
            Schedule::new(Some(8), 16)
        );
        // f32 is the default and is not written out
        assert_eq!("kv=f32".parse::<Schedule>().unwrap(), Schedule::full());
        assert_eq!(
            "kv=f16, decode=2".parse::<Schedule>().unwrap(),
            Schedule::new(None, 2).with_kv(KvDtype::F16)
        );
        assert_eq!(
            "chunk=4,kv=f32".parse::<Schedule>().unwrap().to_string(),
            "chunk=4"
        );
        let e = "kv=bf16".parse::<Schedule>().unwrap_err();
        assert!(
            e.contains("unknown KV cache type `bf16` (known: f32, f16)"),
            "{e}"
        );
        for kv in [KvDtype::F32, KvDtype::F16] {
            assert_eq!(kv.to_string().parse::<KvDtype>().unwrap(), kv);
        }
        assert_eq!(KvDtype::default(), KvDtype::F32);
        assert!("F16".parse::<KvDtype>().is_err());
        // the step names read through the cache part of the text
        assert_eq!(
            step_of_position("chunk=8,decode=16,kv=f16", 40, 37).unwrap(),
            "decode step 13"
        );
        assert_eq!(
            step_of_position("kv=f16", 4, 2).unwrap(),
            "prefill chunk 0 (positions 0..4)"
        );
        assert_eq!(
            step_of_position("chunk=8,decode=16", 40, 37).unwrap(),
            "decode step 13"
        );
        assert_eq!(
            step_of_position("chunk=8,decode=16", 40, 9).unwrap(),
            "prefill chunk 1 (positions 8..16)"
        );
        assert_eq!(
            step_of_position("chunk=8,decode=16", 40, 22).unwrap(),
            "prefill chunk 2 (positions 16..24)"
        );
        assert!(step_of_position("chunk=8", 4, 4).is_err());
        assert!(step_of_position("decode=9", 4, 0).is_err());
    }
}
