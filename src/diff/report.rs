//! What a diff reports: the two sides, one row per compared layer × stage, and the verdict of
//! the whole ([`DiffReport`]). The comparison that fills it lives in `compare`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::trace::io::source::TraceSource;
use crate::trace::stage::{Key, Stage};

use super::metrics::Metrics;
use super::routing::RouteFlip;
use super::thresholds::Threshold;
use super::verdict::{SideTags, Verdict};

/// One side of a diff, as reports describe it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SideInfo {
    pub label: String,
    pub backend: String,
    /// Path of the trace (or `in-memory`).
    pub source: String,
    /// safetensors, npy, aprt or memory.
    pub format: String,
    pub model: String,
    pub model_sha256: String,
    pub tokens: Vec<u32>,
    /// Each prompt position's token piece, when the trace recorded them (the prompt went through
    /// a tokenizer, or the model has one); empty otherwise.
    pub pieces: Vec<String>,
    pub device: String,
    /// The schedule the trace ran under (`chunk=8,decode=16`, trace metadata key `schedule`);
    /// empty for the full forward.
    pub schedule: String,
}

impl SideInfo {
    pub(super) fn of(src: &dyn TraceSource, label: Option<&str>) -> SideInfo {
        let meta = src.meta();
        let location = src.location();
        let label = match label {
            Some(l) => l.to_string(),
            None if !meta.backend.is_empty() => meta.backend.clone(),
            None => std::path::Path::new(&location)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| location.clone()),
        };
        SideInfo {
            label,
            backend: meta.backend.clone(),
            source: location,
            format: src.format().name().to_string(),
            model: meta.model.clone(),
            model_sha256: meta.model_sha256.clone(),
            tokens: meta.tokens.clone(),
            pieces: meta.pieces(),
            device: meta.extra.get("device").cloned().unwrap_or_default(),
            schedule: meta
                .extra
                .get(crate::backend::schedule::SCHEDULE_KEY)
                .cloned()
                .unwrap_or_default(),
        }
    }

    /// One line: `cuda (safetensors /tmp/c.safetensors, model m.gguf)`.
    pub fn describe(&self) -> String {
        let mut parts = vec![format!("{} {}", self.format, self.source)];
        if !self.backend.is_empty() && self.backend != self.label {
            parts.push(format!("backend {}", self.backend));
        }
        if !self.device.is_empty() {
            parts.push(self.device.clone());
        }
        if !self.model.is_empty() {
            parts.push(format!("model {}", self.model));
        }
        format!("{} ({})", self.label, parts.join(", "))
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Side {
    Reference,
    Candidate,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Reference => "reference",
            Side::Candidate => "candidate",
        }
    }
}

/// How a row's two tensors were matched up.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ComparedBy {
    /// Both sides carry shapes, and they agree.
    Shape,
    /// At least one side has no shape (APRT): compared by element count.
    ElementCount,
}

impl ComparedBy {
    pub fn name(self) -> &'static str {
        match self {
            ComparedBy::Shape => "shape",
            ComparedBy::ElementCount => "element_count",
        }
    }
}

/// Where the largest |a−b| sits. For `[T, ...]` tensors `position` is the token position and
/// `feature` the flat index within that position's row; for `attn_probs` `[nh, T, T]`, `head`
/// is set, `position` is the query position and `feature` the key position.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Index {
    pub flat: usize,
    pub head: Option<usize>,
    pub position: Option<usize>,
    pub feature: Option<usize>,
}

/// One compared layer × stage.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub key: Key,
    pub verdict: Verdict,
    /// A non-Match after the first divergence.
    pub downstream: bool,
    /// RouteFlip rows whose flips are all near ties: reported, not failing.
    pub near_tie: bool,
    pub shape_ref: Option<Vec<usize>>,
    pub shape_cand: Option<Vec<usize>>,
    pub compared_by: ComparedBy,
    /// `None` when nothing was compared (Missing, ShapeMismatch, all positions excluded).
    pub metrics: Option<Metrics>,
    pub max_abs_at: Option<Index>,
    pub nonfinite_ref_at: Option<Index>,
    pub nonfinite_cand_at: Option<Index>,
    pub threshold: Threshold,
    /// Positions left out because their routes differ.
    pub excluded_positions: usize,
    pub route_flips: Vec<RouteFlip>,
    pub missing_on: Option<Side>,
    pub notes: Vec<String>,
}

impl Row {
    pub(super) fn new(key: Key, threshold: Threshold) -> Row {
        Row {
            key,
            verdict: Verdict::Match,
            downstream: false,
            near_tie: false,
            shape_ref: None,
            shape_cand: None,
            compared_by: ComparedBy::Shape,
            metrics: None,
            max_abs_at: None,
            nonfinite_ref_at: None,
            nonfinite_cand_at: None,
            threshold,
            excluded_positions: 0,
            route_flips: Vec::new(),
            missing_on: None,
            notes: Vec::new(),
        }
    }

    /// Whether this row fails the diff: any non-Match except a RouteFlip made only of near ties.
    pub fn fails(&self) -> bool {
        !(self.verdict.is_match() || (self.verdict == Verdict::RouteFlip && self.near_tie))
    }

    /// Values that are NaN or infinite on either side (equal infinities on both sides are not
    /// counted).
    pub fn nonfinite(&self) -> u64 {
        self.metrics
            .as_ref()
            .map_or(0, |m| m.nonfinite_ref.count + m.nonfinite_cand.count)
    }

    /// The metrics when they describe the whole row: `None` when nothing was compared, or when
    /// non-finite values were left out of them (cosine, errors and max would then cover only the
    /// finite pairs, and a NaN row would read as a perfect match).
    pub fn finite_metrics(&self) -> Option<&Metrics> {
        self.metrics.as_ref().filter(|_| self.nonfinite() == 0)
    }

    /// Relative L2 error over the whole row; `None` as for [`Row::finite_metrics`].
    pub fn rel_l2(&self) -> Option<f64> {
        self.finite_metrics().map(|m| m.rel_l2)
    }
}

/// A warning when the two sides were traced from different model files (both name a sha256,
/// and they differ). Not refused: a transformers model against its GGUF is a fair comparison.
pub(super) fn model_warning(reference: &SideInfo, candidate: &SideInfo) -> Option<String> {
    let (r, c) = (&reference.model_sha256, &candidate.model_sha256);
    if r.is_empty() || c.is_empty() || r.eq_ignore_ascii_case(c) {
        return None;
    }
    let name = |s: &SideInfo| {
        if s.model.is_empty() {
            String::new()
        } else {
            format!("{} ", s.model)
        }
    };
    let short = |h: &str| h.chars().take(12).collect::<String>();
    Some(format!(
        "the traces are of different model files: reference {}(sha256 {}…), candidate {}(sha256 {}…); \
         differences may come from the models, not the engines",
        name(reference),
        short(r),
        name(candidate),
        short(c)
    ))
}

/// Where attribution (teacher-forced replay) places the origin of the divergence.
#[derive(Clone, Debug, PartialEq)]
pub struct Origin {
    pub key: Key,
    pub verdict: Verdict,
    /// The stage's own relative L2 error, with its inputs replaced by the reference's.
    pub own_rel_l2: Option<f64>,
}

/// Counts per verdict and totals.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub counts: BTreeMap<Verdict, usize>,
    /// Rows where data was actually compared.
    pub compared: usize,
    pub excluded_positions: usize,
    pub near_tie_flips: usize,
    pub failing: usize,
}

/// The result of a diff.
#[derive(Clone, Debug)]
pub struct DiffReport {
    pub reference: SideInfo,
    pub candidate: SideInfo,
    pub tags: SideTags,
    /// One row per key present on either side, in forward order.
    pub rows: Vec<Row>,
    /// Index into `rows` of the earliest failing row.
    pub first_divergence: Option<usize>,
    /// Filled by attribution when it ran.
    pub origin: Option<Origin>,
    /// The logits as next-token distributions (KL divergence, top-1, top-k), when both sides
    /// hold finite f32 logits of one `[T, V]` shape.
    pub logits: Option<super::logits::LogitAgreement>,
    /// Layers ranked by their own error: set when the sides are two model files and the
    /// teacher-forced replay ran (a drift check).
    pub drift: Option<super::drift::Drift>,
    /// No failing row, and something was compared.
    pub holds: bool,
    /// Notes on the whole diff (names ignored, nothing compared, ...).
    pub notes: Vec<String>,
    /// What a reader must not miss although the diff ran (the traces are of different model
    /// files); every report format shows them.
    pub warnings: Vec<String>,
    /// Payload bytes of both sides that were compared.
    pub bytes: u64,
    pub elapsed: Duration,
    pub near_tie: f64,
}

impl DiffReport {
    /// The token piece at prompt position `p`: the reference's, else the candidate's.
    pub fn piece(&self, p: usize) -> Option<&str> {
        [&self.reference, &self.candidate]
            .into_iter()
            .find_map(|s| s.pieces.get(p))
            .map(String::as_str)
    }

    /// `position 3`, with the token's text when known: `position 3 " world"` (quoted and
    /// escaped, so spaces and newlines show), and the step that computed it when a side ran
    /// under a schedule: `position 37, decode step 5` (each side's, labelled, when both ran
    /// under different schedules).
    pub fn position_text(&self, p: usize) -> String {
        let base = match self.piece(p) {
            Some(piece) => format!("position {p} {piece:?}"),
            None => format!("position {p}"),
        };
        let steps: Vec<(&str, String)> = [&self.reference, &self.candidate]
            .into_iter()
            .filter(|s| !s.schedule.is_empty())
            // one step over the whole prompt (an f16 cache alone, a chunk as long as the
            // prompt): no step worth naming
            .filter(|s| {
                s.schedule
                    .parse::<crate::backend::Schedule>()
                    .is_ok_and(|x| x.steps(s.tokens.len()).is_ok_and(|st| st.len() > 1))
            })
            .filter_map(|s| {
                crate::backend::schedule::step_of_position(&s.schedule, s.tokens.len(), p)
                    .ok()
                    .map(|st| (s.label.as_str(), st))
            })
            .collect();
        match steps.as_slice() {
            [] => base,
            [(_, st)] => format!("{base}, {st}"),
            [(_, a), (_, b)] if a == b => format!("{base}, {a}"),
            many => {
                let each: Vec<String> = many.iter().map(|(l, st)| format!("{l} {st}")).collect();
                format!("{base}, {}", each.join(", "))
            }
        }
    }

    pub fn first(&self) -> Option<&Row> {
        self.first_divergence.and_then(|i| self.rows.get(i))
    }

    pub fn verdict_name(&self, v: Verdict) -> String {
        self.tags.name(v)
    }

    pub fn row(&self, key: &Key) -> Option<&Row> {
        self.rows.iter().find(|r| r.key == *key)
    }

    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for r in &self.rows {
            *s.counts.entry(r.verdict).or_default() += 1;
            if r.metrics.as_ref().is_some_and(|m| m.n > 0) {
                s.compared += 1;
            }
            s.excluded_positions += r.excluded_positions;
            s.near_tie_flips += r.route_flips.iter().filter(|f| f.near_tie).count();
            if r.fails() {
                s.failing += 1;
            }
        }
        s
    }

    /// Recompute `first_divergence`, `downstream` flags and `holds` from the rows' verdicts.
    pub fn settle(&mut self) {
        self.rows.sort_by_key(|r| r.key);
        self.first_divergence = self.rows.iter().position(|r| r.fails());
        let first = self.first_divergence;
        for (i, r) in self.rows.iter_mut().enumerate() {
            r.downstream = first.is_some_and(|f| i > f) && !r.verdict.is_match();
        }
        let compared = self.summary().compared;
        self.holds = compared > 0 && first.is_none();
        let none = "nothing was compared: no stage holds data on both sides";
        self.notes.retain(|n| n != none);
        if compared == 0 {
            self.notes.push(none.to_string());
        }
    }
}

/// Flat index to (head, position, feature) for reports.
pub fn index_of(stage: Stage, shape: Option<&[usize]>, flat: usize) -> Index {
    let mut ix = Index {
        flat,
        head: None,
        position: None,
        feature: None,
    };
    let Some(shape) = shape else {
        return ix;
    };
    match (stage, shape) {
        (Stage::AttnProbs, [_, tq, tk]) if *tq > 0 && *tk > 0 => {
            ix.head = Some(flat / (tq * tk));
            ix.position = Some((flat / tk) % tq);
            ix.feature = Some(flat % tk);
        }
        (_, []) => {}
        (_, [_]) => ix.position = Some(flat),
        (_, [_, rest @ ..]) => {
            let row: usize = rest.iter().product();
            if let (Some(p), Some(f)) = (flat.checked_div(row), flat.checked_rem(row)) {
                ix.position = Some(p);
                ix.feature = Some(f);
            }
        }
    }
    ix
}
