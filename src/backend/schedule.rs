//! How a forward walks the prompt: the whole prompt in one step (the default), or the way
//! inference engines serve it, prefill in chunks of C tokens and then the last N prompt tokens
//! one at a time as decode steps through a KV cache. The trace of any schedule has the same keys
//! and shapes as the full forward (every position's row comes from the step that computed it),
//! so a scheduled run is diffed against a full one stage by stage (docs/design.md "Backends").

use std::fmt;
use std::str::FromStr;

/// The `TraceMeta.extra` key under which a trace records its schedule (`chunk=8,decode=16`);
/// absent for the full forward.
pub const SCHEDULE_KEY: &str = "schedule";

/// Prefill chunk size and decode step count. `Schedule::full()` (the default) is one step over
/// the whole prompt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    /// Prefill chunk size C (`None`: the prefill part is one chunk).
    pub chunk: Option<usize>,
    /// How many of the last prompt tokens are fed one at a time as decode steps (N).
    pub decode: usize,
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
    /// One step over the whole prompt: the batched forward every backend runs.
    pub const fn full() -> Schedule {
        Schedule {
            chunk: None,
            decode: 0,
        }
    }

    pub fn new(chunk: Option<usize>, decode: usize) -> Schedule {
        Schedule { chunk, decode }
    }

    /// Whether this is the default one-step schedule.
    pub fn is_full(&self) -> bool {
        *self == Schedule::full()
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

/// `full`, or the parts that are set: `chunk=8,decode=16`, `chunk=8`, `decode=16`.
impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.chunk, self.decode) {
            (None, 0) => f.write_str("full"),
            (Some(c), 0) => write!(f, "chunk={c}"),
            (None, n) => write!(f, "decode={n}"),
            (Some(c), n) => write!(f, "chunk={c},decode={n}"),
        }
    }
}

impl FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| format!("bad schedule `{s}`: {why} (form: full | chunk=C,decode=N)");
        let s = s.trim();
        if s == "full" {
            return Ok(Schedule::full());
        }
        let mut out = Schedule::full();
        let mut seen = (false, false);
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad("expected KEY=VALUE"))?;
            let v: usize = v
                .trim()
                .parse()
                .map_err(|_| bad("values are non-negative integers"))?;
            match k.trim() {
                "chunk" if !seen.0 => (out.chunk, seen.0) = (Some(v), true),
                "decode" if !seen.1 => (out.decode, seen.1) = (v, true),
                "chunk" | "decode" => return Err(bad("a key appears twice")),
                _ => return Err(bad("unknown key (known: chunk, decode)")),
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
        ] {
            assert!(bad.parse::<Schedule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn text_round_trip_and_step_names() {
        for s in ["full", "chunk=8", "decode=3", "chunk=8,decode=16"] {
            assert_eq!(s.parse::<Schedule>().unwrap().to_string(), s);
        }
        assert_eq!(
            "decode=16,chunk=8".parse::<Schedule>().unwrap(),
            Schedule::new(Some(8), 16)
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
