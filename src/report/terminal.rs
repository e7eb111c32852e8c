//! The compact terminal summary: the headline, verdict counts and the first failing rows.
//! Coloured with ANSI escapes only when stdout is a terminal and NO_COLOR is unset.

use std::fmt::Write;
use std::io::IsTerminal;

use super::{headline, row_detail, sci};
use crate::diff::{DiffReport, Verdict};

/// Whether to colour stdout.
pub fn use_color() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stdout().is_terminal()
}

struct Paint(bool);

impl Paint {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    fn verdict(&self, report: &DiffReport, v: Verdict, near_tie: bool) -> String {
        let name = report.verdict_name(v);
        let code = match v {
            Verdict::Match => "32",
            Verdict::RouteFlip if near_tie => "33",
            Verdict::Diverge | Verdict::RouteFlip => "31",
            Verdict::Missing | Verdict::ShapeMismatch => "35",
            _ => "1;31",
        };
        self.paint(code, &name)
    }
}

/// The summary as text; `color` adds ANSI escapes.
pub fn render(report: &DiffReport, color: bool, report_dir: Option<&std::path::Path>) -> String {
    let verdict = if report.holds { "HOLDS" } else { "FAILS" };
    render_judged(report, color, report_dir, (verdict, &headline(report)))
}

/// [`render`] with the verdict a report's context gives (`report::judgement`: a drift check's
/// bounds, not the stage thresholds), as `(word, headline)`.
pub fn render_judged(
    report: &DiffReport,
    color: bool,
    report_dir: Option<&std::path::Path>,
    (word, headline): (&str, &str),
) -> String {
    let p = Paint(color);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {}",
        p.paint("1", "reference"),
        report.reference.describe()
    );
    let _ = writeln!(
        out,
        "{} {}",
        p.paint("1", "candidate"),
        report.candidate.describe()
    );
    let status = if word == "HOLDS" {
        p.paint("1;32", word)
    } else {
        p.paint("1;31", word)
    };
    let _ = writeln!(out, "{status}  {headline}");
    let s = report.summary();
    let counts: Vec<String> = s
        .counts
        .iter()
        .map(|(v, n)| format!("{} {n}", p.verdict(report, *v, false)))
        .collect();
    let secs = report.elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        format!(", {:.2} GB/s", report.bytes as f64 / secs / 1e9)
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "  {}; {} compared, {} positions excluded; {:.3} s{rate}",
        counts.join("  "),
        s.compared,
        s.excluded_positions,
        secs
    );
    if let Some(g) = &report.logits {
        let _ = writeln!(out, "  logits: {}", g.summary());
    }
    if let Some(d) = &report.drift {
        let _ = writeln!(out, "  drift: {}", d.summary());
    }
    for w in &report.warnings {
        let _ = writeln!(out, "  {} {w}", p.paint("1;33", "warning:"));
    }
    for n in &report.notes {
        let _ = writeln!(out, "  note: {n}");
    }
    let failing: Vec<_> = report
        .rows
        .iter()
        .filter(|r| !r.verdict.is_match())
        .collect();
    for r in failing.iter().take(8) {
        let tag = if report.first().is_some_and(|f| f.key == r.key) {
            p.paint("1", "first")
        } else if r.downstream {
            "  ↓  ".to_string()
        } else {
            "     ".to_string()
        };
        let _ = writeln!(
            out,
            "  {tag} {:<24} {:<14} {}",
            r.key.to_string(),
            p.verdict(report, r.verdict, r.near_tie),
            row_detail(report, r)
        );
    }
    if failing.len() > 8 {
        let _ = writeln!(
            out,
            "        ... {} more non-Match rows (max rel L2 {})",
            failing.len() - 8,
            sci(failing
                .iter()
                .filter(|r| r.key.stage.dtype() == crate::trace::stage::StageDtype::F32)
                .filter_map(|r| r.rel_l2())
                .filter(|x| x.is_finite())
                .reduce(f64::max))
        );
    }
    if let Some(dir) = report_dir {
        let _ = writeln!(out, "  report: {}", dir.join("report.html").display());
    }
    out
}
