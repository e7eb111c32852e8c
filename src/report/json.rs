//! report.json, schema `falsifier-report/1` (docs/design.md "Reports"): both sides'
//! descriptions, the first divergence, one row per layer × stage with verdict, downstream flag
//! and metrics, and the falsifier results a contract run adds. Non-finite numbers are written as
//! null (JSON has no NaN).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{DriftCheck, Environment, FalsifierResult, Planted, ReportContext, judgement, rfc3339};
use crate::diff::{DiffReport, Index, NonFinite, Row, SideInfo, Verdict};
use crate::error::{Error, Result};

pub const SCHEMA: &str = "falsifier-report/1";

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct JsonReport {
    pub schema: String,
    pub tool: Tool,
    pub created: String,
    pub command: String,
    pub reference: JsonSide,
    pub candidate: JsonSide,
    /// The diff's verdict: no failing row, and something was compared.
    pub holds: bool,
    /// The sentence at the top of report.md and report.html (for a planted-fault trial, whether
    /// the divergence was found at its planted place).
    #[serde(default)]
    pub headline: String,
    /// A planted-fault trial's expectation and whether it was met: for such a trial this, not
    /// `holds`, is the verdict.
    #[serde(default)]
    pub planted: Option<Planted>,
    /// A drift check's bounds and whether they were met: for such a trial this, not `holds`,
    /// is the verdict.
    #[serde(default)]
    pub drift_check: Option<DriftCheck>,
    /// The logits as next-token distributions, when both sides hold finite logits.
    #[serde(default)]
    pub logits: Option<JsonLogits>,
    /// Layers ranked by their own (teacher-forced) error, for a diff of two model files.
    #[serde(default)]
    pub drift: Option<JsonDrift>,
    pub summary: JsonSummary,
    pub first_divergence: Option<JsonFirst>,
    pub rows: Vec<JsonRow>,
    pub falsifiers: Vec<FalsifierResult>,
    pub environment: Environment,
    pub notes: Vec<String>,
    /// What a reader must not miss although the diff ran (traces of different model files).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// `logits`: KL(P_ref ‖ P_cand) in nats per position with its mean, 99th percentile and max;
/// top-1 agreement (fraction of positions); top-k overlap (k = `k`, mean fraction).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct JsonLogits {
    pub positions: usize,
    pub vocab: usize,
    pub kld_mean: f64,
    pub kld_p99: f64,
    pub kld_max: f64,
    pub top1: f64,
    pub k: usize,
    pub topk_overlap: f64,
    /// Positions whose top-1 token differs.
    pub top1_misses: Vec<usize>,
    pub per_position: Vec<JsonLogitsAt>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct JsonLogitsAt {
    pub position: usize,
    pub kld: f64,
    pub top1: bool,
    pub topk_overlap: f64,
}

/// `drift`: every layer (`layer.N.layer_out`), the embedding and the output head (`logits`),
/// ranked by `own_rel_l2` (the stage's relative L2 in the teacher-forced replay), largest first;
/// `shown` is how many the report lists as the places that lose most.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct JsonDrift {
    pub shown: usize,
    pub layers: Vec<JsonLayerLoss>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct JsonLayerLoss {
    pub key: String,
    pub layer: Option<usize>,
    pub stage: String,
    pub own_rel_l2: f64,
    pub worst_stage: String,
    pub worst_own_rel_l2: f64,
    pub accumulated_rel_l2: Option<f64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub version: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct JsonSide {
    pub label: String,
    pub backend: String,
    pub source: String,
    pub format: String,
    pub model: String,
    pub model_sha256: String,
    pub tokens: Vec<u32>,
    /// Each prompt position's token piece (`pieces[p]` is position p's text), when known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pieces: Vec<String>,
    pub device: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct JsonSummary {
    /// Printed verdict name -> rows.
    pub counts: BTreeMap<String, usize>,
    pub compared: usize,
    pub excluded_positions: usize,
    pub near_tie_flips: usize,
    pub failing: usize,
    pub rows: usize,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct JsonOrigin {
    pub layer: Option<usize>,
    pub stage: String,
    pub key: String,
    pub verdict: String,
    pub own_rel_l2: Option<f64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct JsonFirst {
    pub layer: Option<usize>,
    pub stage: String,
    pub key: String,
    /// Printed name (NanGpu for a cpu-vs-cuda pair).
    pub verdict: String,
    /// Side-neutral name (NanCand).
    pub verdict_code: String,
    pub origin: Option<JsonOrigin>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct JsonIndex {
    pub flat: usize,
    /// attn_probs only.
    pub head: Option<usize>,
    /// Token position (the query position for attn_probs).
    pub position: Option<usize>,
    /// Flat index within the position's row (the key position for attn_probs).
    pub feature: Option<usize>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct JsonNonFinite {
    pub count: u64,
    pub first: Option<usize>,
    pub first_at: Option<JsonIndex>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct JsonThreshold {
    pub rel_l2: f64,
    pub source: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct JsonFlip {
    pub position: usize,
    pub ref_ids: Vec<i32>,
    pub cand_ids: Vec<i32>,
    pub margin: Option<f64>,
    pub margin_rel: Option<f64>,
    pub near_tie: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct JsonRow {
    pub layer: Option<usize>,
    pub stage: String,
    pub key: String,
    pub verdict: String,
    pub verdict_code: String,
    pub downstream: bool,
    pub near_tie: bool,
    pub shape_ref: Option<Vec<usize>>,
    pub shape_cand: Option<Vec<usize>>,
    pub compared_by: String,
    pub n: usize,
    pub cosine: Option<f64>,
    pub nmse: Option<f64>,
    pub rel_l2: Option<f64>,
    pub max_abs: Option<f64>,
    pub max_abs_at: Option<JsonIndex>,
    /// Non-finite values on either side. When it is not 0, `cosine`, `nmse`, `rel_l2` and
    /// `max_abs` are null: over the finite pairs only they would mislead.
    #[serde(default)]
    pub nonfinite: u64,
    pub nonfinite_ref: JsonNonFinite,
    pub nonfinite_cand: JsonNonFinite,
    pub threshold: JsonThreshold,
    pub excluded_positions: usize,
    pub route_flips: Vec<JsonFlip>,
    pub missing_on: Option<String>,
    pub note: String,
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

fn index(i: &Index) -> JsonIndex {
    JsonIndex {
        flat: i.flat,
        head: i.head,
        position: i.position,
        feature: i.feature,
    }
}

fn side(s: &SideInfo) -> JsonSide {
    JsonSide {
        label: s.label.clone(),
        backend: s.backend.clone(),
        source: s.source.clone(),
        format: s.format.clone(),
        model: s.model.clone(),
        model_sha256: s.model_sha256.clone(),
        tokens: s.tokens.clone(),
        pieces: s.pieces.clone(),
        device: s.device.clone(),
    }
}

fn nonfinite(n: Option<&NonFinite>, at: Option<&Index>) -> JsonNonFinite {
    JsonNonFinite {
        count: n.map_or(0, |n| n.count),
        first: n.and_then(|n| n.first),
        first_at: at.map(index),
    }
}

fn row(report: &DiffReport, r: &Row) -> JsonRow {
    let m = r.metrics.as_ref();
    let whole = r.finite_metrics();
    JsonRow {
        layer: r.key.layer,
        stage: r.key.stage.to_string(),
        key: r.key.to_string(),
        verdict: report.verdict_name(r.verdict),
        verdict_code: r.verdict.code().to_string(),
        downstream: r.downstream,
        near_tie: r.near_tie,
        shape_ref: r.shape_ref.clone(),
        shape_cand: r.shape_cand.clone(),
        compared_by: r.compared_by.name().to_string(),
        n: m.map_or(0, |m| m.n),
        cosine: whole.and_then(|m| finite(m.cosine)),
        nmse: whole.and_then(|m| finite(m.nmse)),
        rel_l2: whole.and_then(|m| finite(m.rel_l2)),
        max_abs: whole.and_then(|m| finite(m.max_abs)),
        max_abs_at: r.max_abs_at.as_ref().filter(|_| whole.is_some()).map(index),
        nonfinite: r.nonfinite(),
        nonfinite_ref: nonfinite(m.map(|m| &m.nonfinite_ref), r.nonfinite_ref_at.as_ref()),
        nonfinite_cand: nonfinite(m.map(|m| &m.nonfinite_cand), r.nonfinite_cand_at.as_ref()),
        threshold: JsonThreshold {
            rel_l2: r.threshold.rel_l2,
            source: r.threshold.source.name().to_string(),
        },
        excluded_positions: r.excluded_positions,
        route_flips: r
            .route_flips
            .iter()
            .map(|f| JsonFlip {
                position: f.position,
                ref_ids: f.ref_ids.clone(),
                cand_ids: f.cand_ids.clone(),
                margin: f.margin.and_then(finite),
                margin_rel: f.margin_rel.and_then(finite),
                near_tie: f.near_tie,
            })
            .collect(),
        missing_on: r.missing_on.map(|s| s.name().to_string()),
        note: r.notes.join("; "),
    }
}

/// The report as its JSON document.
pub fn to_json(report: &DiffReport, ctx: &ReportContext) -> JsonReport {
    let s = report.summary();
    let first = report.first().map(|r| JsonFirst {
        layer: r.key.layer,
        stage: r.key.stage.to_string(),
        key: r.key.to_string(),
        verdict: report.verdict_name(r.verdict),
        verdict_code: r.verdict.code().to_string(),
        origin: report.origin.as_ref().map(|o| JsonOrigin {
            layer: o.key.layer,
            stage: o.key.stage.to_string(),
            key: o.key.to_string(),
            verdict: report.verdict_name(o.verdict),
            own_rel_l2: o.own_rel_l2.and_then(finite),
        }),
    });
    let mut counts = BTreeMap::new();
    for v in Verdict::ALL {
        counts.insert(
            report.verdict_name(v),
            s.counts.get(&v).copied().unwrap_or(0),
        );
    }
    JsonReport {
        schema: SCHEMA.into(),
        tool: Tool {
            name: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        created: rfc3339(ctx.created),
        command: ctx.command.clone(),
        reference: side(&report.reference),
        candidate: side(&report.candidate),
        holds: report.holds,
        headline: judgement(report, ctx).headline,
        planted: ctx.planted.clone(),
        drift_check: ctx.drift.clone(),
        logits: report.logits.as_ref().map(|g| JsonLogits {
            positions: g.positions,
            vocab: g.vocab,
            kld_mean: g.kld_mean(),
            kld_p99: g.kld_p99(),
            kld_max: g.kld_max(),
            top1: g.top1_rate(),
            k: g.k,
            topk_overlap: g.topk_overlap_mean(),
            top1_misses: g.top1_misses(),
            per_position: (0..g.positions)
                .map(|p| JsonLogitsAt {
                    position: p,
                    kld: g.kld[p],
                    top1: g.top1[p],
                    topk_overlap: g.topk_overlap[p],
                })
                .collect(),
        }),
        drift: report.drift.as_ref().map(|d| JsonDrift {
            shown: d.top().len(),
            layers: d
                .layers
                .iter()
                .map(|l| JsonLayerLoss {
                    key: l.key.to_string(),
                    layer: l.key.layer,
                    stage: l.key.stage.to_string(),
                    own_rel_l2: l.own_rel_l2,
                    worst_stage: l.worst_stage.to_string(),
                    worst_own_rel_l2: l.worst_own_rel_l2,
                    accumulated_rel_l2: l.accumulated_rel_l2.and_then(finite),
                })
                .collect(),
        }),
        summary: JsonSummary {
            counts,
            compared: s.compared,
            excluded_positions: s.excluded_positions,
            near_tie_flips: s.near_tie_flips,
            failing: s.failing,
            rows: report.rows.len(),
        },
        first_divergence: first,
        rows: report.rows.iter().map(|r| row(report, r)).collect(),
        falsifiers: ctx.falsifiers.clone(),
        environment: ctx.environment.clone(),
        notes: report.notes.clone(),
        warnings: report.warnings.clone(),
    }
}

pub fn to_string(report: &DiffReport, ctx: &ReportContext) -> Result<String> {
    serde_json::to_string_pretty(&to_json(report, ctx))
        .map_err(|e| Error::internal(format!("serialising report.json: {e}")))
}
