//! Verdicts per layer × stage (docs/design.md "Verdicts") and how they are printed.
//!
//! Internally the NaN verdicts say which side (`NanRef`, `NanCand`, `NanBoth`). Printed, they use
//! the CPU/GPU names for a CPU-vs-CUDA pair (`NanCpu`, `NanGpu`, `NanBoth`) and the sides' labels
//! otherwise (`NanTransformers`, `NanLlamaCpp`, ...), falling back to `NanRef`/`NanCand` when the
//! labels cannot tell the sides apart.

use std::fmt;
use std::str::FromStr;

/// The judgement of one compared stage.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// Within threshold, no non-finite values.
    Match,
    /// Finite on both sides, error above threshold.
    Diverge,
    /// Non-finite values (NaN, or Inf not matched by the same Inf) on the candidate side only.
    NanCand,
    /// ... on the reference side only.
    NanRef,
    /// ... on both sides.
    NanBoth,
    /// Present on one side only. Never a pass.
    Missing,
    /// Shapes (or, without shapes, element counts) disagree.
    ShapeMismatch,
    /// The set of chosen experts differs at some position (topk_ids), or a stage could not be
    /// compared at any position because every route differed.
    RouteFlip,
}

impl Verdict {
    pub const ALL: [Verdict; 8] = [
        Verdict::Match,
        Verdict::Diverge,
        Verdict::NanCand,
        Verdict::NanRef,
        Verdict::NanBoth,
        Verdict::Missing,
        Verdict::ShapeMismatch,
        Verdict::RouteFlip,
    ];

    /// Side-neutral name (used in report.json's `verdict_code` and by contracts).
    pub const fn code(self) -> &'static str {
        match self {
            Verdict::Match => "Match",
            Verdict::Diverge => "Diverge",
            Verdict::NanCand => "NanCand",
            Verdict::NanRef => "NanRef",
            Verdict::NanBoth => "NanBoth",
            Verdict::Missing => "Missing",
            Verdict::ShapeMismatch => "ShapeMismatch",
            Verdict::RouteFlip => "RouteFlip",
        }
    }

    pub fn is_match(self) -> bool {
        self == Verdict::Match
    }

    pub fn is_nan(self) -> bool {
        matches!(self, Verdict::NanCand | Verdict::NanRef | Verdict::NanBoth)
    }

    /// Verdict from non-finite presence on each side.
    pub fn nan(reference: bool, candidate: bool) -> Option<Verdict> {
        match (reference, candidate) {
            (false, false) => None,
            (true, false) => Some(Verdict::NanRef),
            (false, true) => Some(Verdict::NanCand),
            (true, true) => Some(Verdict::NanBoth),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Verdict {
    type Err = String;
    /// Accepts the side-neutral codes and the CPU/GPU names.
    fn from_str(s: &str) -> Result<Verdict, String> {
        match s {
            "NanGpu" => return Ok(Verdict::NanCand),
            "NanCpu" => return Ok(Verdict::NanRef),
            _ => {}
        }
        Verdict::ALL
            .into_iter()
            .find(|v| v.code() == s)
            .ok_or_else(|| format!("unknown verdict `{s}`"))
    }
}

/// How the two sides are named in printed verdicts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SideTags {
    pub reference: String,
    pub candidate: String,
}

impl SideTags {
    /// Tags from the sides' labels (usually backend names): Cpu/Gpu for a cpu-vs-cuda
    /// pair, else the labels in CamelCase, else Ref/Cand.
    pub fn from_labels(reference: &str, candidate: &str) -> SideTags {
        let gpu = |l: &str| matches!(l.to_ascii_lowercase().as_str(), "cuda" | "gpu");
        let cpu = |l: &str| l.eq_ignore_ascii_case("cpu");
        if cpu(reference) && gpu(candidate) {
            return SideTags {
                reference: "Cpu".into(),
                candidate: "Gpu".into(),
            };
        }
        if gpu(reference) && cpu(candidate) {
            return SideTags {
                reference: "Gpu".into(),
                candidate: "Cpu".into(),
            };
        }
        let (r, c) = (camel(reference), camel(candidate));
        if r.is_empty() || c.is_empty() || r == c || r == "Both" || c == "Both" {
            SideTags {
                reference: "Ref".into(),
                candidate: "Cand".into(),
            }
        } else {
            SideTags {
                reference: r,
                candidate: c,
            }
        }
    }

    /// The printed name of a verdict.
    pub fn name(&self, v: Verdict) -> String {
        match v {
            Verdict::NanCand => format!("Nan{}", self.candidate),
            Verdict::NanRef => format!("Nan{}", self.reference),
            other => other.code().to_string(),
        }
    }
}

/// `llama.cpp` -> `LlamaCpp`, `hf-transformers` -> `HfTransformers`.
fn camel(label: &str) -> String {
    let mut out = String::new();
    for word in label.split(|c: char| !c.is_ascii_alphanumeric()) {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            out.push(first.to_ascii_uppercase());
            out.extend(chars.map(|c| c.to_ascii_lowercase()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_names_for_cpu_vs_cuda() {
        let t = SideTags::from_labels("cpu", "cuda");
        assert_eq!(t.name(Verdict::NanCand), "NanGpu");
        assert_eq!(t.name(Verdict::NanRef), "NanCpu");
        assert_eq!(t.name(Verdict::NanBoth), "NanBoth");
        let t = SideTags::from_labels("transformers", "llama.cpp");
        assert_eq!(t.name(Verdict::NanCand), "NanLlamaCpp");
        assert_eq!(t.name(Verdict::NanRef), "NanTransformers");
        let t = SideTags::from_labels("cpu", "cpu");
        assert_eq!(t.name(Verdict::NanCand), "NanCand");
        assert_eq!("NanGpu".parse::<Verdict>().unwrap(), Verdict::NanCand);
        assert_eq!("RouteFlip".parse::<Verdict>().unwrap(), Verdict::RouteFlip);
    }
}
