//! report.md: the first divergence in one sentence, a layers × stages table of verdicts and
//! cosines, the model-level rows, the worst elements and the route flips.

use std::fmt::Write;

use super::{ReportContext, cos_text, judgement, metric_text, rfc3339, sci};
use crate::diff::{DiffReport, Index, Row, Verdict};
use crate::trace::stage::Stage;

fn cell(report: &DiffReport, r: &Row, first: bool) -> String {
    let cos = r.finite_metrics().map(|m| m.cosine);
    let mut s = match r.verdict {
        Verdict::Match => format!("ok {}", cos_text(cos)),
        Verdict::Diverge => format!("**Diverge** {}", cos_text(cos)),
        Verdict::RouteFlip if r.near_tie => {
            format!("RouteFlip (near tie, {})", r.route_flips.len())
        }
        Verdict::RouteFlip => format!("**RouteFlip** ({})", r.route_flips.len()),
        v => format!("**{}**", report.verdict_name(v)),
    };
    if first {
        s = format!("▶ {s}");
    } else if r.downstream {
        s.push_str(" ↓");
    }
    s
}

/// Text for a table cell: a token piece may hold `|` (`<|im_start|>`), which would end the cell.
fn cell_text(s: &str) -> String {
    s.replace('|', "\\|")
}

fn at_text(report: &DiffReport, i: &Option<Index>) -> String {
    match i {
        None => "-".into(),
        Some(i) => {
            let mut parts = vec![format!("flat {}", i.flat)];
            if let Some(h) = i.head {
                parts.push(format!("head {h}"));
            }
            match (i.head.is_some(), i.position, i.feature) {
                (true, Some(q), Some(k)) => parts.push(format!("query {q}, key {k}")),
                (_, Some(p), Some(f)) => {
                    parts.push(format!("{}, feature {f}", report.position_text(p)))
                }
                (_, Some(p), None) => parts.push(report.position_text(p)),
                _ => {}
            }
            parts.join(", ")
        }
    }
}

pub fn render(report: &DiffReport, ctx: &ReportContext) -> String {
    let mut out = String::new();
    let first = report.first_divergence;
    let _ = writeln!(out, "# falsifier diff\n");
    let verdict = judgement(report, ctx);
    let _ = writeln!(out, "{}\n", verdict.headline);
    let _ = writeln!(out, "**{}**\n", verdict.word);
    let _ = writeln!(out, "- reference: {}", report.reference.describe());
    let _ = writeln!(out, "- candidate: {}", report.candidate.describe());
    if !report.reference.tokens.is_empty() {
        let _ = writeln!(out, "- tokens: {:?}", report.reference.tokens);
        if !report.reference.pieces.is_empty() {
            let _ = writeln!(out, "- pieces: {:?}", report.reference.pieces);
        }
    }
    let _ = writeln!(out, "- command: `{}`", ctx.command);
    let _ = writeln!(out, "- created: {}", rfc3339(ctx.created));
    let s = report.summary();
    let counts: Vec<String> = s
        .counts
        .iter()
        .map(|(v, n)| format!("{} {n}", report.verdict_name(*v)))
        .collect();
    let _ = writeln!(
        out,
        "- rows: {} ({}); compared {}; positions excluded by route flips {}",
        report.rows.len(),
        counts.join(", "),
        s.compared,
        s.excluded_positions
    );
    for w in &report.warnings {
        let _ = writeln!(out, "- **warning:** {w}");
    }
    for n in &report.notes {
        let _ = writeln!(out, "- note: {n}");
    }
    drift_sections(&mut out, report);

    // layers x stages
    let stages: Vec<Stage> = Stage::ALL
        .into_iter()
        .filter(|st| st.is_layer_stage() && report.rows.iter().any(|r| r.key.stage == *st))
        .collect();
    let layers: Vec<usize> = {
        let mut l: Vec<usize> = report.rows.iter().filter_map(|r| r.key.layer).collect();
        l.dedup();
        l.sort_unstable();
        l.dedup();
        l
    };
    if !layers.is_empty() {
        let _ = writeln!(out, "\n## Layers × stages\n");
        let _ = writeln!(
            out,
            "Verdict and cosine per cell; ▶ first divergence, ↓ downstream of it.\n"
        );
        let _ = write!(out, "| layer |");
        for st in &stages {
            let _ = write!(out, " {st} |");
        }
        let _ = write!(out, "\n|---|");
        for _ in &stages {
            let _ = write!(out, "---|");
        }
        out.push('\n');
        for l in &layers {
            let _ = write!(out, "| {l} |");
            for st in &stages {
                let idx = report
                    .rows
                    .iter()
                    .position(|r| r.key.layer == Some(*l) && r.key.stage == *st);
                let text = idx
                    .map(|i| cell(report, &report.rows[i], first == Some(i)))
                    .unwrap_or_default();
                let _ = write!(out, " {text} |");
            }
            out.push('\n');
        }
    }

    // model-level rows
    let model: Vec<(usize, &Row)> = report
        .rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.key.layer.is_none())
        .collect();
    if !model.is_empty() {
        let _ = writeln!(out, "\n## Model-level stages\n");
        let _ = writeln!(
            out,
            "| stage | verdict | cosine | rel L2 | max abs | note |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        for (i, r) in model {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                r.key,
                cell(report, r, first == Some(i)),
                metric_text(r, |m| m.cosine, cos_text),
                metric_text(r, |m| m.rel_l2, sci),
                metric_text(r, |m| m.max_abs, sci),
                r.notes.join("; ")
            );
        }
    }

    // worst elements: failing rows first (forward order), then the largest rel-L2 errors
    let mut worst: Vec<&Row> = report
        .rows
        .iter()
        .filter(|r| r.metrics.as_ref().is_some_and(|m| m.n > 0))
        .collect();
    worst.sort_by(|a, b| {
        let key = |r: &Row| r.rel_l2().filter(|x| !x.is_nan()).unwrap_or(f64::INFINITY);
        key(b).total_cmp(&key(a))
    });
    if !worst.is_empty() {
        let _ = writeln!(out, "\n## Worst elements\n");
        let _ = writeln!(
            out,
            "| key | verdict | rel L2 | threshold | max abs | at | non-finite (ref / cand) |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        for r in worst.iter().take(12) {
            let m = r.metrics.as_ref();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} / {} |",
                r.key,
                report.verdict_name(r.verdict),
                metric_text(r, |m| m.rel_l2, sci),
                sci(Some(r.threshold.rel_l2)),
                metric_text(r, |m| m.max_abs, sci),
                cell_text(&at_text(report, &r.max_abs_at)),
                m.map_or(0, |m| m.nonfinite_ref.count),
                m.map_or(0, |m| m.nonfinite_cand.count),
            );
        }
    }

    // route flips
    let flips: Vec<&Row> = report
        .rows
        .iter()
        .filter(|r| !r.route_flips.is_empty())
        .collect();
    if !flips.is_empty() {
        let _ = writeln!(out, "\n## Route flips\n");
        let _ = writeln!(
            out,
            "Reference margin = its k-th minus (k+1)-th router logit; near tie when margin ≤ {} × ‖logit row‖₂.\n",
            report.near_tie
        );
        let _ = writeln!(
            out,
            "| layer | position | reference experts | candidate experts | margin | near tie |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        for r in flips {
            for f in &r.route_flips {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:?} | {:?} | {} | {} |",
                    r.key.layer.map(|l| l.to_string()).unwrap_or("-".into()),
                    cell_text(
                        &report
                            .piece(f.position)
                            .map_or(f.position.to_string(), |p| format!("{} {p:?}", f.position))
                    ),
                    f.ref_ids,
                    f.cand_ids,
                    f.margin
                        .map(|m| format!("{m:.3e}"))
                        .unwrap_or("unknown".into()),
                    if f.near_tie { "yes" } else { "no" }
                );
            }
        }
    }

    // notes of non-matching rows
    let noted: Vec<&Row> = report
        .rows
        .iter()
        .filter(|r| !r.verdict.is_match() && !r.notes.is_empty())
        .collect();
    if !noted.is_empty() {
        let _ = writeln!(out, "\n## Notes\n");
        for r in noted.iter().take(50) {
            let _ = writeln!(out, "- {}: {}", r.key, r.notes.join("; "));
        }
    }
    out
}

/// The logits as distributions, and for a diff of two model files the layers that lose most.
fn drift_sections(out: &mut String, report: &DiffReport) {
    if let Some(g) = &report.logits {
        let _ = writeln!(out, "\n## Logits as next-token distributions\n");
        let _ = writeln!(
            out,
            "KL(reference ‖ candidate) per position, in nats; top-1: the same most likely token.\n"
        );
        let _ = writeln!(
            out,
            "| KL mean | KL p99 | KL max | top-1 agreement | top-{} overlap |",
            g.k
        );
        let _ = writeln!(out, "|---|---|---|---|---|");
        let _ = writeln!(
            out,
            "| {:.3e} | {:.3e} | {:.3e} | {}/{} ({:.1}%) | {:.3} |",
            g.kld_mean(),
            g.kld_p99(),
            g.kld_max(),
            g.top1.iter().filter(|&&s| s).count(),
            g.positions,
            100.0 * g.top1_rate(),
            g.topk_overlap_mean()
        );
        if let Some(text) = crate::report::top1_misses_text(report) {
            let _ = writeln!(out, "\n{text}");
        }
    }
    if let Some(d) = &report.drift {
        let _ = writeln!(out, "\n## The places that lose most\n");
        let _ = writeln!(
            out,
            "Own error: relative L2 of a layer's `layer_out` when the layer starts from the reference's input (teacher-forced replay), of the `embedding`, and of the `logits` computed from the reference's `final_norm` (the output head); accumulated: the same stage running free, with everything inherited.\n"
        );
        let _ = writeln!(
            out,
            "| rank | place | own rel L2 | worst own stage | accumulated rel L2 |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|");
        for (i, l) in d.top().iter().enumerate() {
            let _ = writeln!(
                out,
                "| {} | {} | {:.3e} | {} ({:.3e}) | {} |",
                i + 1,
                l.place(),
                l.own_rel_l2,
                l.worst_stage,
                l.worst_own_rel_l2,
                crate::report::sci(l.accumulated_rel_l2)
            );
        }
        if d.layers.is_empty() {
            let _ = writeln!(out, "{}", d.summary());
        }
    }
}
