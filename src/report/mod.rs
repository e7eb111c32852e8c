//! Reports of a diff: `report.json` (versioned, machine-read), `report.md` (for a pull request or
//! an issue), `report.html` (self-contained heatmap), and a compact terminal summary.

pub mod html;
pub mod json;
pub mod markdown;
pub mod terminal;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::diff::{DiffReport, Index, Metrics, Row, Verdict};
use crate::error::{Error, Result};

/// Outcome of one contract falsifier, filled in by the contract runner (report.json's
/// `falsifiers` list).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FalsifierResult {
    pub id: String,
    pub contract: String,
    pub model: String,
    /// (reference, candidate) backends.
    pub backends: Vec<String>,
    pub holds: bool,
    /// The trial's state in a combined run report: `holds`, `FAILS`, `skipped`, `not run` or
    /// `ERROR` (`holds` is true exactly when it is `holds`). Absent from older reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The expected first divergence of a planted-fault check (`layer.3.ffn_out: NanGpu`).
    pub expected: Option<String>,
    /// The first divergence found (`layer.3.ffn_out: NanGpu`), `None` when none.
    pub first_divergence: Option<String>,
    /// The origin attribution placed it at (`layer.3.ffn_out`), `None` when it did not run or
    /// found none.
    pub origin: Option<String>,
    pub report_dir: Option<String>,
    /// The status level the evidence supports (e.g. FUNCTIONAL); `None` when the trial proves
    /// nothing (it failed, or a GPU trial found no device).
    pub level: Option<String>,
    /// A drift check's bounds on the logits (`kld <= 0.001, top1 >= 1`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<String>,
}

impl FalsifierResult {
    /// What the trial expected, in words: the planted fault's place, a drift check's bounds,
    /// or `all Match`.
    pub fn expectation(&self) -> String {
        match (&self.expected, &self.drift) {
            (Some(e), _) => e.clone(),
            (None, Some(b)) => format!("drift within {b}"),
            (None, None) => "all Match".to_string(),
        }
    }
}

/// Where a report was made.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    pub host: String,
    pub card: Option<String>,
    pub driver: Option<String>,
    pub commit: Option<String>,
}

impl Environment {
    /// Host name and git commit (when run inside a git checkout). Card and driver are left for
    /// a backend that knows them.
    pub fn detect() -> Environment {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        // FALSIFIER_COMMIT names the commit where there is no checkout (a GPU host that only
        // received the binaries); otherwise ask git.
        let from_env = std::env::var("FALSIFIER_COMMIT")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let commit = from_env.or_else(|| {
            std::process::Command::new("git")
                .args(["rev-parse", "HEAD"])
                .stderr(std::process::Stdio::null())
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        });
        Environment {
            host,
            card: None,
            driver: None,
            commit,
        }
    }
}

/// What a report needs besides the diff.
#[derive(Clone, Debug)]
pub struct ReportContext {
    /// The command line that produced the report.
    pub command: String,
    pub created: SystemTime,
    pub environment: Environment,
    pub falsifiers: Vec<FalsifierResult>,
    /// Set by the contract runner for a planted-fault trial.
    pub planted: Option<Planted>,
    /// Set for a drift check (two model files, judged by bounds on the logits).
    pub drift: Option<DriftCheck>,
}

/// A drift check, judged: two model files of one shape, held to bounds on the logits' KL
/// divergence and top-1 agreement rather than to per-stage thresholds (every stage of a
/// quantized model drifts; how much is what the report shows).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DriftCheck {
    /// The bounds, e.g. `kld <= 0.05, top1 >= 0.9`.
    pub bounds: String,
    pub holds: bool,
    /// What was measured against the bounds, in a sentence.
    pub finding: String,
}

/// A planted-fault trial's expectation, judged. For such a trial a divergence at the planted
/// place is the pass, so its own report leads with this rather than with the diff's verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Planted {
    /// Where the divergence was expected (`layer.2.ffn_out`, or with its origin).
    pub expected: String,
    /// The first divergence and its origin were found where expected.
    pub found: bool,
    /// What was expected and what was found, in a sentence.
    pub finding: String,
}

/// The verdict a report shows in its badge and headline.
#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    /// CSS class: `holds`, `fails` or `expected`.
    pub class: &'static str,
    /// The badge: `HOLDS`, `FAILS` or `EXPECTED DIVERGENCE`.
    pub word: &'static str,
    pub headline: String,
}

/// What a trial's (or a diff's) report says at its top: a planted-fault trial is judged by
/// whether the divergence was found at its planted place, a drift check by its logits bounds,
/// anything else by the diff.
pub fn judgement(report: &DiffReport, ctx: &ReportContext) -> Judgement {
    if let Some(d) = &ctx.drift {
        let losers = report
            .drift
            .as_ref()
            .map(|r| format!(" {}.", capitalise(&r.summary())))
            .unwrap_or_default();
        return Judgement {
            class: if d.holds { "holds" } else { "fails" },
            word: if d.holds { "HOLDS" } else { "FAILS" },
            headline: format!(
                "Drift {} the bounds ({}): {}.{losers}",
                if d.holds { "within" } else { "outside" },
                d.bounds,
                d.finding
            ),
        };
    }
    match ctx.planted.as_ref() {
        Some(p) if p.found => Judgement {
            class: "expected",
            word: "EXPECTED DIVERGENCE",
            headline: format!(
                "Expected divergence found at its planted place ({}). {}",
                p.expected,
                headline(report)
            ),
        },
        Some(p) => Judgement {
            class: "fails",
            word: "FAILS",
            headline: format!(
                "The planted fault was not found where expected: {}. {}",
                p.finding,
                headline(report)
            ),
        },
        None if report.holds => Judgement {
            class: "holds",
            word: "HOLDS",
            headline: headline(report),
        },
        None => Judgement {
            class: "fails",
            word: "FAILS",
            headline: headline(report),
        },
    }
}

impl ReportContext {
    pub fn new(command: impl Into<String>) -> ReportContext {
        ReportContext {
            command: command.into(),
            created: SystemTime::now(),
            environment: Environment::detect(),
            falsifiers: Vec::new(),
            planted: None,
            drift: None,
        }
    }
}

/// Write report.json, report.md and report.html into `dir` (created if needed).
pub fn write_reports(dir: &Path, report: &DiffReport, ctx: &ReportContext) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "creating report directory", e))?;
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| Error::io(&path, "writing report", e))
    };
    write("report.json", json::to_string(report, ctx)?)?;
    write("report.md", markdown::render(report, ctx))?;
    write("report.html", html::render(report, ctx))?;
    Ok(())
}

/// `reports/diff-<UTC timestamp>/`.
pub fn default_report_dir(now: SystemTime) -> PathBuf {
    let ts = rfc3339(now).replace([':', '-'], "");
    PathBuf::from("reports").join(format!("diff-{}", ts.trim_end_matches('Z')))
}

/// RFC 3339 UTC timestamp (`2026-11-25T19:01:04Z`), from the civil-from-days algorithm.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days -> (year, month, day)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// A number for people: `3.1e-2`, `0`, `inf`, `-`.
pub fn sci(x: Option<f64>) -> String {
    match x {
        None => "-".into(),
        Some(0.0) => "0".into(),
        Some(v) if v.is_nan() => "nan".into(),
        Some(v) if v.is_infinite() => if v > 0.0 { "inf" } else { "-inf" }.into(),
        Some(v) => format!("{v:.1e}"),
    }
}

/// Cosine with enough digits to tell 0.9999 from 0.999999.
pub fn cos_text(x: Option<f64>) -> String {
    match x {
        None => "-".into(),
        Some(v) if v.is_nan() => "nan".into(),
        Some(v) if (1.0 - v).abs() < 1e-10 => "1".into(),
        Some(v) if v > 0.99 => {
            // as many decimals as it takes to show the first non-9 digit, plus one
            let nines = (-(1.0 - v).log10()).floor().clamp(0.0, 12.0) as usize;
            format!("{v:.*}", nines + 2)
        }
        Some(v) => format!("{v:.4}"),
    }
}

/// A row's metric for people: `format` of the value, or `— (N non-finite)` when the row holds
/// non-finite values. The metrics then cover only the finite pairs, and a NaN row would read as
/// cosine 1, rel L2 0.
pub fn metric_text(
    row: &Row,
    value: fn(&Metrics) -> f64,
    format: fn(Option<f64>) -> String,
) -> String {
    match row.nonfinite() {
        0 => format(row.metrics.as_ref().map(value)),
        n => format!("— ({n} non-finite)"),
    }
}

/// The short metric of a row in a sentence: `rel L2 3.1e-2, cos 0.9995`, or what it is instead.
pub fn row_detail(report: &DiffReport, row: &Row) -> String {
    match row.verdict {
        Verdict::Missing => format!(
            "absent from the {}",
            row.missing_on.map(|s| s.name()).unwrap_or("other side")
        ),
        Verdict::ShapeMismatch => row.notes.first().cloned().unwrap_or_default(),
        Verdict::RouteFlip if !row.route_flips.is_empty() => {
            let f = &row.route_flips[0];
            format!(
                "{} position(s) route differently, first at {} ({:?} vs {:?}, reference margin {})",
                row.route_flips.len(),
                report.position_text(f.position),
                f.ref_ids,
                f.cand_ids,
                f.margin
                    .map(|m| format!("{m:.3e}"))
                    .unwrap_or("unknown".into())
            )
        }
        v if v.is_nan() => {
            let m = row.metrics.as_ref();
            let count = |side: &str, nf: Option<&crate::diff::NonFinite>, at: &Option<Index>| {
                nf.filter(|n| n.count > 0).map(|n| {
                    format!(
                        "{} non-finite on the {side} side, first at {}",
                        n.count,
                        at.map(|i| index_text(report, &i))
                            .or(n.first.map(|i| format!("flat {i}")))
                            .unwrap_or_default()
                    )
                })
            };
            let parts: Vec<String> = [
                count(
                    &format!("reference ({})", report.reference.label),
                    m.map(|m| &m.nonfinite_ref),
                    &row.nonfinite_ref_at,
                ),
                count(
                    &format!("candidate ({})", report.candidate.label),
                    m.map(|m| &m.nonfinite_cand),
                    &row.nonfinite_cand_at,
                ),
            ]
            .into_iter()
            .flatten()
            .collect();
            // the row's cosine and errors leave the non-finite positions out, so none is shown
            format!(
                "{}; cosine and errors not shown (they would cover the finite pairs only)",
                parts.join("; ")
            )
        }
        _ => format!(
            "rel L2 {}, cos {}",
            metric_text(row, |m| m.rel_l2, sci),
            metric_text(row, |m| m.cosine, cos_text)
        ),
    }
}

/// An index in words: `flat 70 (position 1 " world", feature 6)`, `flat 171 (head 2, query 5,
/// key 3)`; a position shows its token's text when the report knows it.
pub fn index_text(report: &DiffReport, i: &Index) -> String {
    match (i.head, i.position, i.feature) {
        (Some(h), Some(q), Some(k)) => format!("flat {} (head {h}, query {q}, key {k})", i.flat),
        (None, Some(p), Some(f)) => {
            format!("flat {} ({}, feature {f})", i.flat, report.position_text(p))
        }
        (None, Some(p), None) => format!("flat {} ({})", i.flat, report.position_text(p)),
        _ => format!("flat {}", i.flat),
    }
}

/// Where a key sits, in words: `layer 6, ffn_out` or `logits`.
pub fn place(row: &Row) -> String {
    match row.key.layer {
        Some(l) => format!("layer {l}, {}", row.key.stage),
        None => row.key.stage.to_string(),
    }
}

/// The one-sentence answer at the top of every report.
pub fn headline(report: &DiffReport) -> String {
    let (r, c) = (&report.reference.label, &report.candidate.label);
    let s = report.summary();
    match report.first() {
        None if s.compared == 0 => format!(
            "Nothing was compared between the candidate ({c}) and the reference ({r}): no stage holds data on both sides, so nothing holds."
        ),
        None => {
            let near = if s.near_tie_flips > 0 {
                format!(
                    " ({} near-tie route flip(s) reported, not counted as failures)",
                    s.near_tie_flips
                )
            } else {
                String::new()
            };
            format!(
                "The candidate ({c}) matches the reference ({r}) at all {} compared stages{near}.",
                s.compared
            )
        }
        Some(row) => {
            let later = report.rows.iter().filter(|r| r.downstream).count();
            let origin = match &report.origin {
                Some(o) if o.key != row.key => format!(
                    " Attribution places the origin at {}: {}{}.",
                    o.key,
                    report.verdict_name(o.verdict),
                    // none when the origin holds non-finite values: no error is meaningful then
                    o.own_rel_l2
                        .map(|e| format!(" (own rel L2 {})", sci(Some(e))))
                        .unwrap_or_default()
                ),
                Some(_) => " Attribution confirms it as the origin.".to_string(),
                None => String::new(),
            };
            format!(
                "The candidate ({c}) first leaves the reference ({r}) at {}: {} ({}); {later} later cell{} downstream.{origin}",
                place(row),
                report.verdict_name(row.verdict),
                row_detail(report, row),
                if later == 1 { " is" } else { "s are" },
            )
        }
    }
}

/// `Top-1 differs at position 0 "T", position 2 "e" and 3 more.` (at most 16 positions named,
/// each with its token text when known), or `None` when every position agrees.
pub fn top1_misses_text(report: &DiffReport) -> Option<String> {
    const NAMED: usize = 16;
    let misses = report.logits.as_ref()?.top1_misses();
    if misses.is_empty() {
        return None;
    }
    let shown: Vec<String> = misses
        .iter()
        .take(NAMED)
        .map(|&p| report.position_text(p))
        .collect();
    let more = misses.len().saturating_sub(NAMED);
    Some(format!(
        "Top-1 differs at {}{}.",
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    ))
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_795_633_264);
        assert_eq!(rfc3339(t), "2026-11-25T19:01:04Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400); // leap day
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00Z");
        assert_eq!(
            default_report_dir(t),
            PathBuf::from("reports/diff-20000229T000000")
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(sci(Some(0.031)), "3.1e-2");
        assert_eq!(sci(None), "-");
        assert_eq!(cos_text(Some(0.99951)), "0.99951");
        assert_eq!(cos_text(Some(1.0)), "1");
    }
}
