//! The typed contract schema (one YAML file per contract). Every struct denies unknown keys, so a
//! misspelt key is an error with file:line rather than a silently ignored check.
//!
//! Free-form values that need context to check (stage names, layer ranges, fault places, model
//! references) are kept as text here and validated by [`super::lint`], which knows where each
//! key sits in the file.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use crate::backend::schedule::KvDtype;
use crate::backend::{Fault, Schedule};
use crate::model::tokenizer::Prompt;
use crate::trace::plan::CapturePlan;
use crate::trace::stage::{Key, Stage};

/// Falsifier status ladder, weakest first (see the module docs of [`super`] for what evidence
/// each rung needs). `Ord` follows the ladder.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Proposed,
    ActiveAlgorithmLevel,
    Functional,
    Discharged,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::Proposed,
        Status::ActiveAlgorithmLevel,
        Status::Functional,
        Status::Discharged,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Status::Proposed => "PROPOSED",
            Status::ActiveAlgorithmLevel => "ACTIVE_ALGORITHM_LEVEL",
            Status::Functional => "FUNCTIONAL",
            Status::Discharged => "DISCHARGED",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|st| st.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Status::ALL.iter().map(|s| s.name()).collect();
                format!("unknown status `{s}` (known: {})", names.join(", "))
            })
    }
}

/// One contract file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    /// `C-[A-Z0-9-]+`, unique across all contracts.
    pub contract: String,
    /// Semantic version `MAJOR.MINOR.PATCH`; equals the last amendment's version.
    pub version: String,
    /// Derived: the minimum of the falsifiers' statuses.
    pub status: Status,
    pub description: String,
    #[serde(default)]
    pub references: Vec<String>,
    /// Named models the falsifiers run on.
    pub models: BTreeMap<String, ModelSpec>,
    pub falsifiers: Vec<Falsifier>,
    pub amendment_history: Vec<Amendment>,
}

/// A model: a file (`path`) or a synthetic model generated on demand (`preset` + `quant` +
/// `seed`, with optional shape overrides). The overrides are `falsifier gen-model`'s flags
/// (`kv_heads` is `--kv-heads`, ...), so a spec maps one to one onto a gen-model command.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// GGUF file, relative to the repository root (see [`super::resolve_model_path`]).
    pub path: Option<String>,
    /// Synthetic preset: a tiny one per architecture or a real shape ([`crate::model::synth::PRESETS`]).
    pub preset: Option<String>,
    /// Weight type of the synthetic model: f32, f16, bf16, q8_0, q4_0 or q4_k_m.
    pub quant: Option<String>,
    pub seed: Option<u64>,
    pub layers: Option<usize>,
    /// K-quants need rows that are whole 256-value super-blocks: widen to 256 to get Q4_K/Q6_K.
    pub hidden: Option<usize>,
    pub heads: Option<usize>,
    pub kv_heads: Option<usize>,
    pub head_dim: Option<usize>,
    /// MoE presets only.
    pub experts: Option<usize>,
    /// Experts used per token; MoE presets only.
    pub top_k: Option<usize>,
    /// Expert FFN width; MoE presets only.
    pub expert_ffn: Option<usize>,
    /// Dense FFN width.
    pub ffn: Option<usize>,
    pub vocab: Option<usize>,
}

impl ModelSpec {
    /// The shape overrides that are set, as (gen-model flag without `--`, value).
    pub fn overrides(&self) -> Vec<(&'static str, usize)> {
        [
            ("layers", self.layers),
            ("hidden", self.hidden),
            ("heads", self.heads),
            ("kv-heads", self.kv_heads),
            ("head-dim", self.head_dim),
            ("experts", self.experts),
            ("top-k", self.top_k),
            ("expert-ffn", self.expert_ffn),
            ("ffn", self.ffn),
            ("vocab", self.vocab),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }
}

/// A backend a falsifier pairs, by the name the backend registry knows it by: the shipped
/// `cpu`, `cpu-f32` and `cuda`, or an engine a program registered (`backend::register`). The set
/// is open: lint asks the registry ([`crate::backend::is_known`]), not a list here.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(transparent)]
pub struct BackendName(String);

impl BackendName {
    pub fn new(name: &str) -> BackendName {
        BackendName(name.to_string())
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    /// Whether the backend needs a GPU (the registry says).
    pub fn needs_gpu(&self) -> bool {
        crate::backend::needs_gpu(&self.0)
    }
}

impl fmt::Display for BackendName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `all` or a list (stages by name; layers as `A..B`, `A..=B`, `i,j` text or a list of indices).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged, expecting = "`all`, a string, or a list")]
pub enum Selection<T> {
    Text(String),
    List(Vec<T>),
}

impl<T> Default for Selection<T> {
    fn default() -> Self {
        Selection::Text("all".to_string())
    }
}

/// What a falsifier checks.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// Every compared stage within its threshold (or, with a planted fault, the expected first
    /// divergence and origin).
    #[default]
    Parity,
    /// The candidate captured every planned stage, and its output is byte-identical to an
    /// untraced forward (capturing must not change the computation).
    CaptureComplete,
    /// No NaN or Inf on the candidate side, at any captured stage.
    NoNan,
    /// Routing parity: a top-k set may differ from the reference only where the reference's margin
    /// (k-th minus (k+1)-th router logit) is below `thresholds.route_margin`.
    Routing,
    /// Quantization drift: the candidate runs `candidate_model` (a second file of the same
    /// architecture and shape), and its logits must stay within `thresholds.kld` (largest mean
    /// KL divergence, nats) and `thresholds.top1` (smallest top-1 agreement). Stage verdicts are
    /// reported, not judged: every stage of a quantized model drifts. The teacher-forced replay
    /// ranks the layers by their own error.
    Drift,
}

/// Which side of the pair a fault is planted on.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Reference,
    #[default]
    Candidate,
}

/// A planted fault: `class` (one of [`crate::backend::FaultKind::CLASSES`]), `at` a trace key,
/// `args` as the class takes them (`nan[index]`, `scale_drift[eps]`, `expert_swap[a,b]`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    pub class: String,
    pub at: String,
    #[serde(default)]
    pub side: Side,
    #[serde(default)]
    pub args: Vec<f64>,
}

impl FaultSpec {
    /// The CLI form `class[args]@key`.
    pub fn spec(&self) -> String {
        if self.args.is_empty() {
            format!("{}@{}", self.class, self.at)
        } else {
            let a: Vec<String> = self.args.iter().map(|x| x.to_string()).collect();
            format!("{}[{}]@{}", self.class, a.join(","), self.at)
        }
    }

    /// Parse into a [`Fault`] (checks class, arguments and that the class can live at the stage).
    pub fn fault(&self) -> Result<Fault, String> {
        self.spec().parse()
    }
}

/// The expected outcome of a planted-fault falsifier, or of a clean one whose sides' KV caches
/// store different types (`kv_cache`: a declared difference, expected to show).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Trace key of the earliest non-Match.
    pub first_divergence: String,
    /// Trace key attribution must name as the origin (defaults to `first_divergence`).
    pub origin: Option<String>,
    /// Prompt position of the first divergence row's largest difference (its query position
    /// for `attn_probs`); unchecked when absent.
    #[serde(default)]
    pub position: Option<usize>,
}

/// How one side walks the prompt (`schedule: { chunk: 4, decode: 3, kv_cache: f16 }`): prefill
/// in chunks of `chunk` tokens (absent: one chunk), then the last `decode` tokens as decode
/// steps through the KV cache, which stores `kv_cache` (`f32`, the default, or `f16`). See
/// [`crate::backend::Schedule`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    #[serde(default)]
    pub chunk: Option<usize>,
    #[serde(default)]
    pub decode: usize,
    #[serde(default)]
    pub kv_cache: KvDtype,
}

impl ScheduleSpec {
    pub fn schedule(&self) -> Schedule {
        Schedule::new(self.chunk, self.decode).with_kv(self.kv_cache)
    }
}

impl Expect {
    pub fn first_divergence_key(&self) -> Result<Key, String> {
        self.first_divergence.parse().map_err(|e| format!("{e}"))
    }

    pub fn origin_key(&self) -> Result<Key, String> {
        self.origin
            .as_deref()
            .unwrap_or(&self.first_divergence)
            .parse()
            .map_err(|e| format!("{e}"))
    }
}

/// One falsifier: a check that could fail, run once per model.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Falsifier {
    /// `FALSIFY-[A-Z0-9-]+`, unique across all contracts.
    pub id: String,
    /// What must hold.
    pub rule: String,
    /// What we expect to observe.
    pub prediction: String,
    /// What a failure means and where to look.
    pub if_fails: String,
    /// Names from the contract's `models`; one trial per model.
    pub models: Vec<String>,
    /// A name from the contract's `models` the candidate runs instead of the trial's model
    /// (`check: drift`: a quantized file against its full-precision source).
    #[serde(default)]
    pub candidate_model: Option<String>,
    /// `[reference, candidate]`.
    pub backends: Vec<BackendName>,
    /// Prompt token ids. A falsifier gives exactly one of `tokens` and `prompt` (lint checks);
    /// absent reads as empty.
    #[serde(default)]
    pub tokens: Vec<u32>,
    /// Prompt text, tokenized per model with the model's own tokenizer (its GGUF metadata).
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub stages: Selection<String>,
    #[serde(default)]
    pub layers: Selection<usize>,
    /// Per-stage relative-L2 bounds: `default`, any stage name, `route_margin` (a router-logit
    /// margin below which a route flip is tolerated), and for `check: drift` `kld` (largest mean
    /// KL divergence of the logits, nats) and `top1` (smallest top-1 agreement, 0..=1).
    #[serde(default)]
    pub thresholds: BTreeMap<String, f64>,
    #[serde(default)]
    pub fault: Option<FaultSpec>,
    #[serde(default)]
    pub expect: Option<Expect>,
    #[serde(default)]
    pub check: Check,
    /// The candidate's schedule (default: the full forward).
    #[serde(default)]
    pub schedule: Option<ScheduleSpec>,
    /// The reference's schedule (default: the full forward).
    #[serde(default)]
    pub reference_schedule: Option<ScheduleSpec>,
    /// Heavy trials (large models) are ignored by default in the runner.
    #[serde(default)]
    pub heavy: bool,
    pub status: Status,
}

/// Threshold a stage gets when neither it nor `default` is given.
pub const DEFAULT_THRESHOLD: f64 = 1.0e-4;

impl Falsifier {
    /// The expectation of a planted-fault falsifier (or of sides with different KV caches), as
    /// reports print it (`layer.3.ffn_out: NanGpu`, or with its origin when that differs); `None`
    /// for a clean one.
    pub fn expected_text(&self) -> Option<String> {
        self.expect.as_ref().map(|e| match &e.origin {
            Some(o) if *o != e.first_divergence => {
                format!("first divergence {}, origin {o}", e.first_divergence)
            }
            _ => e.first_divergence.clone(),
        })
    }

    /// Reference and candidate backend (lint guarantees exactly two).
    pub fn pair(&self) -> Option<(BackendName, BackendName)> {
        match self.backends.as_slice() {
            [r, c] => Some((r.clone(), c.clone())),
            _ => None,
        }
    }

    /// The capture plan the falsifier asks for.
    pub fn plan(&self) -> Result<CapturePlan, String> {
        let stages = match &self.stages {
            Selection::Text(t) => t.clone(),
            Selection::List(l) => l.join(","),
        };
        let layers = match &self.layers {
            Selection::Text(t) => t.clone(),
            Selection::List(l) => {
                let v: Vec<String> = l.iter().map(|i| i.to_string()).collect();
                v.join(",")
            }
        };
        CapturePlan::parse(&stages, Some(&layers))
    }

    /// Relative-L2 bound for a stage: its own entry, else `default`, else [`DEFAULT_THRESHOLD`].
    pub fn threshold(&self, stage: Stage) -> f64 {
        self.thresholds
            .get(stage.name())
            .or_else(|| self.thresholds.get("default"))
            .copied()
            .unwrap_or(DEFAULT_THRESHOLD)
    }

    /// Router-logit margin below which a route flip is tolerated (0: none is).
    pub fn route_margin(&self) -> f64 {
        self.thresholds.get("route_margin").copied().unwrap_or(0.0)
    }

    /// The logits bounds of a drift check (`thresholds.kld`, `thresholds.top1`).
    pub fn logit_bounds(&self) -> crate::diff::LogitBounds {
        crate::diff::LogitBounds {
            kld: self.thresholds.get("kld").copied(),
            top1: self.thresholds.get("top1").copied(),
        }
    }

    /// The prompt as ids for the model at `model`: `tokens`, or `prompt` tokenized with the
    /// model's tokenizer; with each position's piece when the model has a tokenizer.
    pub fn prompt_for(&self, model: &std::path::Path) -> crate::Result<Prompt> {
        match &self.prompt {
            Some(text) => Prompt::from_text(model, text)
                .map_err(|e| e.context(format!("{}: prompt", self.id))),
            None => Ok(Prompt::from_ids(model, self.tokens.clone())),
        }
    }

    /// The schedules of (reference, candidate).
    pub fn schedules(&self) -> (Schedule, Schedule) {
        let of = |s: &Option<ScheduleSpec>| s.map_or(Schedule::full(), |s| s.schedule());
        (of(&self.reference_schedule), of(&self.schedule))
    }

    /// The planted fault, parsed.
    pub fn planted(&self) -> Result<Option<(Fault, Side)>, String> {
        match &self.fault {
            None => Ok(None),
            Some(f) => Ok(Some((f.fault()?, f.side))),
        }
    }
}

/// Kind of an amendment_history entry.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AmendmentKind {
    /// The contract was written.
    Created,
    /// A hand edit of rules, models or thresholds (statuses do not move).
    Amended,
    /// `falsifier promote` moved statuses on evidence.
    Promotion,
}

/// One amendment_history entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Amendment {
    pub version: String,
    /// `YYYY-MM-DD` (UTC).
    pub date: String,
    pub kind: AmendmentKind,
    pub title: String,
    #[serde(default)]
    pub evidence: Option<EvidenceRef>,
}

/// The evidence a promotion rests on: which report, from which commit, card and command, and the
/// level each promoted falsifier reached in it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceRef {
    /// Path of the report.json.
    pub report: String,
    pub commit: Option<String>,
    /// When the report was created (RFC 3339).
    pub date: Option<String>,
    /// GPU the candidate ran on (null for CPU-only runs).
    pub card: Option<String>,
    pub command: Option<String>,
    /// Falsifier id -> level its holding runs reached in this report.
    #[serde(default)]
    pub levels: BTreeMap<String, Status>,
}

/// Parse `MAJOR.MINOR.PATCH`.
pub fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let mut it = v.split('.');
    let mut num = || -> Option<u64> {
        let p = it.next()?;
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse().ok()
    };
    let v3 = (num()?, num()?, num()?);
    if it.next().is_some() {
        return None;
    }
    Some(v3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ladder_is_ordered_and_parses() {
        assert!(Status::Proposed < Status::ActiveAlgorithmLevel);
        assert!(Status::ActiveAlgorithmLevel < Status::Functional);
        assert!(Status::Functional < Status::Discharged);
        for s in Status::ALL {
            assert_eq!(s.name().parse::<Status>().unwrap(), s);
        }
        assert!("DONE".parse::<Status>().is_err());
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("1.2.30"), Some((1, 2, 30)));
        for bad in ["1.2", "1.2.3.4", "1.x.3", "", "1..3", "+1.2.3"] {
            assert_eq!(parse_version(bad), None, "{bad}");
        }
    }

    #[test]
    fn fault_spec_round_trip() {
        let f = FaultSpec {
            class: "expert_swap".into(),
            at: "layer.1.ffn_out".into(),
            side: Side::Candidate,
            args: vec![1.0, 3.0],
        };
        assert_eq!(f.spec(), "expert_swap[1,3]@layer.1.ffn_out");
        assert_eq!(f.fault().unwrap().to_string(), f.spec());
    }
}
