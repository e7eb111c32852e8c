//! report.html: one self-contained page (inline CSS and JS, no network). A heatmap of layers ×
//! stages coloured by relative L2 error on a log scale; non-finite, missing, shape-mismatch and
//! route-flip cells get their own colours. Hovering a cell shows its metrics; the first
//! divergence is outlined and downstream cells are marked. The table is rendered here, not by
//! script, so the page reads even with JavaScript off; the script only drives the tooltip and
//! sets `data-rendered="ok"` on `<body>` (the rendering test looks for it).

use std::fmt::Write;

use super::{
    ReportContext, cos_text, index_text, judgement, metric_text, rfc3339, row_detail, sci,
};
use crate::diff::{DiffReport, Index, Row, SideInfo, Verdict};
use crate::trace::stage::Stage;

/// Escape text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Log-scale colour of a relative L2 error: green at 1e-9 and below, yellow at 1e-4 (the default
/// threshold), red at 1 and above.
pub fn heat(rel_l2: f64) -> (u8, u8, u8) {
    let t = if rel_l2 > 0.0 {
        ((rel_l2.log10() + 9.0) / 9.0).clamp(0.0, 1.0)
    } else {
        0.0
    };
    const STOPS: [(f64, (f64, f64, f64)); 4] = [
        (0.0, (26.0, 152.0, 80.0)),
        (0.35, (145.0, 207.0, 96.0)),
        (5.0 / 9.0, (254.0, 224.0, 139.0)),
        (1.0, (215.0, 48.0, 39.0)),
    ];
    let mut out = STOPS[0].1;
    for w in STOPS.windows(2) {
        let ((t0, c0), (t1, c1)) = (w[0], w[1]);
        if t >= t0 && t <= t1 {
            let f = (t - t0) / (t1 - t0);
            out = (
                c0.0 + f * (c1.0 - c0.0),
                c0.1 + f * (c1.1 - c0.1),
                c0.2 + f * (c1.2 - c0.2),
            );
        }
    }
    (out.0 as u8, out.1 as u8, out.2 as u8)
}

fn at_text(report: &DiffReport, i: &Option<Index>) -> String {
    i.as_ref().map_or("-".into(), |i| index_text(report, i))
}

/// Tooltip text of a row (newline-separated; escaped by the caller).
fn tip(report: &DiffReport, r: &Row, first: bool) -> String {
    let mut t = format!("{}\n{}", r.key, report.verdict_name(r.verdict));
    if report.origin.as_ref().is_some_and(|o| o.key == r.key) {
        t.push_str("  (origin)");
    }
    if first {
        t.push_str("  (first divergence)");
    } else if r.downstream {
        t.push_str("  (downstream)");
    }
    if r.near_tie {
        t.push_str("  (near tie)");
    }
    if let Some(m) = &r.metrics {
        let at = if r.nonfinite() == 0 {
            format!(" at {}", at_text(report, &r.max_abs_at))
        } else {
            String::new()
        };
        let _ = write!(
            t,
            "\nrel L2 {}  (threshold {}, {})\ncosine {}\nNMSE {}\nmax |a-b| {}{at}\nn {}",
            metric_text(r, |m| m.rel_l2, sci),
            sci(Some(r.threshold.rel_l2)),
            r.threshold.source.name(),
            metric_text(r, |m| m.cosine, cos_text),
            metric_text(r, |m| m.nmse, sci),
            metric_text(r, |m| m.max_abs, sci),
            m.n
        );
        if m.nonfinite_ref.count > 0 {
            let _ = write!(
                t,
                "\nnon-finite in the reference ({}): {} (first {})",
                report.reference.label,
                m.nonfinite_ref.count,
                at_text(report, &r.nonfinite_ref_at)
            );
        }
        if m.nonfinite_cand.count > 0 {
            let _ = write!(
                t,
                "\nnon-finite in the candidate ({}): {} (first {})",
                report.candidate.label,
                m.nonfinite_cand.count,
                at_text(report, &r.nonfinite_cand_at)
            );
        }
    }
    let shape = |s: &Option<Vec<usize>>| s.as_ref().map_or("no shape".into(), |s| format!("{s:?}"));
    let _ = write!(
        t,
        "\nshape {} / {} (by {})",
        shape(&r.shape_ref),
        shape(&r.shape_cand),
        r.compared_by.name()
    );
    if r.excluded_positions > 0 {
        let _ = write!(t, "\nexcluded positions {}", r.excluded_positions);
    }
    for f in r.route_flips.iter().take(4) {
        let _ = write!(
            t,
            "\n{}: {:?} -> {:?}, margin {}{}",
            report.position_text(f.position),
            f.ref_ids,
            f.cand_ids,
            f.margin.map_or("unknown".into(), |m| format!("{m:.2e}")),
            if f.near_tie { " (near tie)" } else { "" }
        );
    }
    if r.route_flips.len() > 4 {
        let _ = write!(t, "\n... {} more flips", r.route_flips.len() - 4);
    }
    for n in &r.notes {
        let _ = write!(t, "\n{n}");
    }
    t
}

/// Class, inline style and short text of a cell.
fn cell_look(r: &Row) -> (&'static str, String, String) {
    match r.verdict {
        Verdict::Match | Verdict::Diverge if r.nonfinite() == 0 => {
            let x = r.rel_l2().unwrap_or(0.0);
            let (cr, cg, cb) = heat(x);
            // exact agreement stays blank: the colour says it, and the eye finds the numbers
            let text = if x > 0.0 && x.is_finite() {
                format!("{:.0}", x.log10().floor())
            } else if x == 0.0 {
                String::new()
            } else {
                "inf".into()
            };
            let class = if r.verdict == Verdict::Diverge {
                "c num div"
            } else {
                "c num"
            };
            // dark text on light cells, white on dark ones (relative luminance)
            let lum = 0.2126 * cr as f64 + 0.7152 * cg as f64 + 0.0722 * cb as f64;
            let fg = if lum > 150.0 { "#1d2330" } else { "#fff" };
            (
                class,
                format!("background:rgb({cr},{cg},{cb});color:{fg}"),
                text,
            )
        }
        Verdict::NanCand
        | Verdict::NanRef
        | Verdict::NanBoth
        | Verdict::Match
        | Verdict::Diverge => ("c nan", String::new(), "NaN".into()),
        Verdict::Missing => ("c miss", String::new(), "∅".into()),
        Verdict::ShapeMismatch => ("c shape", String::new(), "≠".into()),
        Verdict::RouteFlip if r.near_tie => ("c flip tie", String::new(), "⇄".into()),
        Verdict::RouteFlip => ("c flip", String::new(), "⇄".into()),
    }
}

fn td(report: &DiffReport, idx: Option<usize>) -> String {
    let Some(i) = idx else {
        return "<td class=\"c none\"></td>".into();
    };
    let r = &report.rows[i];
    let first = report.first_divergence == Some(i);
    let (class, style, text) = cell_look(r);
    let mut class = class.to_string();
    if report.origin.as_ref().is_some_and(|o| o.key == r.key) {
        class.push_str(" origin");
    }
    if first {
        class.push_str(" first");
    } else if r.downstream {
        class.push_str(" down");
    }
    format!(
        "<td class=\"{class}\" style=\"{style}\" data-tip=\"{}\">{}</td>",
        esc(&tip(report, r, first)),
        esc(&text)
    )
}

fn side_card(title: &str, s: &SideInfo) -> String {
    let mut rows = vec![
        ("label", s.label.clone()),
        ("source", format!("{} ({})", s.source, s.format)),
    ];
    for (k, v) in [
        ("backend", &s.backend),
        ("device", &s.device),
        ("model", &s.model),
        ("model sha256", &s.model_sha256),
    ] {
        if !v.is_empty() {
            rows.push((k, v.clone()));
        }
    }
    if !s.tokens.is_empty() {
        rows.push(("tokens", format!("{:?}", s.tokens)));
    }
    if !s.pieces.is_empty() {
        rows.push(("pieces", format!("{:?}", s.pieces)));
    }
    let mut h = format!("<div class=\"side\"><h3>{}</h3><dl>", esc(title));
    for (k, v) in rows {
        let _ = write!(h, "<dt>{}</dt><dd>{}</dd>", esc(k), esc(&v));
    }
    h.push_str("</dl></div>");
    h
}

const CSS: &str = r#"
:root { --fg:#1d2330; --muted:#5b6474; --line:#d9dde5; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); margin: 0; background: #f6f7f9; }
header { background: #fff; border-bottom: 1px solid var(--line); padding: 18px 28px 14px; }
h1 { font-size: 20px; margin: 0 0 6px; display: flex; align-items: center; gap: 12px; }
.badge { font-size: 13px; font-weight: 700; padding: 3px 10px; border-radius: 12px; color: #fff; letter-spacing: .04em; }
.badge.holds { background: #1a9850; } .badge.fails { background: #c62828; } .badge.expected { background: #00796b; }
.headline { font-size: 16px; margin: 4px 0 12px; max-width: 1200px; }
.sides { display: flex; gap: 16px; flex-wrap: wrap; }
.side { background: #f6f7f9; border: 1px solid var(--line); border-radius: 8px; padding: 8px 14px; min-width: 360px; flex: 1; }
.side h3 { margin: 0 0 4px; font-size: 13px; text-transform: uppercase; color: var(--muted); letter-spacing: .05em; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 1px 12px; margin: 0; font-size: 12.5px; }
dt { color: var(--muted); } dd { margin: 0; word-break: break-all; font-family: ui-monospace, Menlo, Consolas, monospace; }
main { padding: 16px 28px 40px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 14px 18px; margin-bottom: 16px; overflow-x: auto; }
h2 { font-size: 15px; margin: 0 0 10px; }
.summary span { margin-right: 14px; white-space: nowrap; }
table.heat { border-collapse: separate; border-spacing: 2px; }
table.heat th { font-size: 11px; font-weight: 600; color: var(--muted); padding: 2px 3px; }
table.heat th.stage { height: 92px; vertical-align: bottom; white-space: nowrap; }
table.heat th.stage div { transform: rotate(-50deg); transform-origin: 8px 0; width: 22px; }
table.heat th.layer { text-align: right; padding-right: 6px; }
td.c { width: 34px; min-width: 34px; height: 22px; text-align: center; font-size: 10px; color: rgba(0,0,0,.55); border-radius: 3px; cursor: default; position: relative; }
td.none { background: transparent; }
td.div { font-weight: 800; }
td.nan { background: #8e24aa; color: #fff; font-weight: 700; }
td.miss { background: repeating-linear-gradient(45deg, #c9ced6 0 4px, #eef0f3 4px 8px); color: #444; }
td.shape { background: #8d6e63; color: #fff; font-weight: 700; }
td.flip { background: #1e63d6; color: #fff; font-weight: 700; }
td.flip.tie { background: #9dbcf2; color: #17346b; }
td.first { outline: 3px solid #111; outline-offset: 1px; z-index: 2; }
td.down::after { content: ""; position: absolute; right: 0; top: 0; border-style: solid; border-width: 0 8px 8px 0; border-color: transparent #111 transparent transparent; opacity: .7; border-top-right-radius: 3px; }
td.origin { box-shadow: inset 0 0 0 3px #2962ff; }
td.c:hover { outline: 2px solid #2962ff; outline-offset: 0; }
.legend { display: flex; gap: 18px; align-items: center; flex-wrap: wrap; font-size: 12px; color: var(--muted); margin-top: 12px; }
.legend .sw { display: inline-block; width: 22px; height: 14px; border-radius: 3px; vertical-align: middle; margin-right: 5px; position: relative; }
.scale { display: inline-flex; align-items: center; gap: 6px; }
.scale .bar { width: 240px; height: 14px; border-radius: 3px; background: linear-gradient(90deg, rgb(26,152,80) 0%, rgb(145,207,96) 35%, rgb(254,224,139) 55.6%, rgb(215,48,39) 100%); }
table.rows { border-collapse: collapse; font-size: 12.5px; }
table.rows th, table.rows td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
table.rows th { white-space: nowrap; }
table.rows td.num { white-space: nowrap; font-family: ui-monospace, Menlo, Consolas, monospace; text-align: right; }
.note { color: var(--muted); font-size: 12.5px; }
#tip { position: fixed; pointer-events: none; background: #1d2330; color: #f1f3f7; font: 12px/1.4 ui-monospace, Menlo, Consolas, monospace; padding: 8px 10px; border-radius: 6px; white-space: pre; max-width: 560px; box-shadow: 0 4px 16px rgba(0,0,0,.25); display: none; z-index: 10; }
"#;

const JS: &str = r#"
(function () {
  var tip = document.getElementById('tip');
  function place(e) {
    var x = e.clientX + 14, y = e.clientY + 14;
    var w = tip.offsetWidth, h = tip.offsetHeight;
    if (x + w > window.innerWidth - 8) x = e.clientX - w - 14;
    if (y + h > window.innerHeight - 8) y = e.clientY - h - 14;
    tip.style.left = Math.max(4, x) + 'px';
    tip.style.top = Math.max(4, y) + 'px';
  }
  var cells = document.querySelectorAll('td[data-tip]');
  for (var i = 0; i < cells.length; i++) {
    cells[i].addEventListener('mouseenter', function (e) {
      tip.textContent = this.getAttribute('data-tip');
      tip.style.display = 'block';
      place(e);
    });
    cells[i].addEventListener('mousemove', place);
    cells[i].addEventListener('mouseleave', function () { tip.style.display = 'none'; });
  }
  document.body.setAttribute('data-rendered', 'ok');
  document.body.setAttribute('data-cells', String(cells.length));
})();
"#;

pub fn render(report: &DiffReport, ctx: &ReportContext) -> String {
    let mut h = String::new();
    let verdict = judgement(report, ctx);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>falsifier diff: {} vs {}</title><style>{CSS}</style></head><body>",
        esc(&report.reference.label),
        esc(&report.candidate.label)
    );
    let _ = write!(
        h,
        "<header><h1>falsifier diff <span class=\"badge {}\">{}</span></h1><p class=\"headline\">{}</p><div class=\"sides\">{}{}</div></header><main>",
        verdict.class,
        verdict.word,
        esc(&verdict.headline),
        side_card("reference", &report.reference),
        side_card("candidate", &report.candidate)
    );

    // summary
    let s = report.summary();
    h.push_str("<section class=\"summary\"><h2>Summary</h2>");
    for (v, n) in &s.counts {
        let _ = write!(
            h,
            "<span><b>{}</b> {n}</span>",
            esc(&report.verdict_name(*v))
        );
    }
    let _ = write!(
        h,
        "<span>compared <b>{}</b></span><span>positions excluded <b>{}</b></span><span>near-tie flips <b>{}</b></span>",
        s.compared, s.excluded_positions, s.near_tie_flips
    );
    for w in &report.warnings {
        let _ = write!(h, "<p class=\"note\"><b>warning:</b> {}</p>", esc(w));
    }
    for n in &report.notes {
        let _ = write!(h, "<p class=\"note\">{}</p>", esc(n));
    }
    h.push_str("</section>");
    drift_sections(&mut h, report);

    // heatmap
    let stages: Vec<Stage> = Stage::ALL
        .into_iter()
        .filter(|st| st.is_layer_stage() && report.rows.iter().any(|r| r.key.stage == *st))
        .collect();
    let mut layers: Vec<usize> = report.rows.iter().filter_map(|r| r.key.layer).collect();
    layers.sort_unstable();
    layers.dedup();
    let find = |layer: Option<usize>, st: Stage| {
        report
            .rows
            .iter()
            .position(|r| r.key.layer == layer && r.key.stage == st)
    };
    h.push_str("<section><h2>Layers × stages</h2><table class=\"heat\"><tr><th></th>");
    for st in &stages {
        let _ = write!(h, "<th class=\"stage\"><div>{}</div></th>", esc(st.name()));
    }
    h.push_str("</tr>");
    for l in &layers {
        let _ = write!(h, "<tr><th class=\"layer\">{l}</th>");
        for st in &stages {
            h.push_str(&td(report, find(Some(*l), *st)));
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
    let model: Vec<Stage> = Stage::ALL
        .into_iter()
        .filter(|st| !st.is_layer_stage() && report.rows.iter().any(|r| r.key.stage == *st))
        .collect();
    if !model.is_empty() {
        h.push_str("<h2 style=\"margin-top:14px\">Model level</h2><table class=\"heat\"><tr>");
        for st in &model {
            let _ = write!(h, "<th>{}</th>", esc(st.name()));
        }
        h.push_str("</tr><tr>");
        for st in &model {
            h.push_str(&td(report, find(None, *st)));
        }
        h.push_str("</tr></table>");
    }
    h.push_str(concat!(
        "<div class=\"legend\"><span class=\"scale\">rel L2 <span>1e-9</span><span class=\"bar\"></span><span>1</span></span>",
        "<span>(cell text: log10 of rel L2; default threshold 1e-4 sits at yellow)</span>",
        "<span><span class=\"sw\" style=\"background:#8e24aa\"></span>NaN / Inf</span>",
        "<span><span class=\"sw\" style=\"background:repeating-linear-gradient(45deg,#c9ced6 0 4px,#eef0f3 4px 8px)\"></span>missing</span>",
        "<span><span class=\"sw\" style=\"background:#8d6e63\"></span>shape mismatch</span>",
        "<span><span class=\"sw\" style=\"background:#1e63d6\"></span>route flip</span>",
        "<span><span class=\"sw\" style=\"background:#9dbcf2\"></span>near-tie flip</span>",
        "<span><span class=\"sw\" style=\"background:#eee;outline:3px solid #111\"></span>first divergence</span>",
        "<span><span class=\"sw\" style=\"background:#eee;box-shadow:inset 0 0 0 3px #2962ff\"></span>origin (attribution)</span>",
        "<span><span class=\"sw\" style=\"background:#eee;border-top:8px solid #111;border-left:14px solid transparent;height:0;width:0\"></span>downstream</span>",
        "</div></section>"
    ));

    // non-matching rows
    let bad: Vec<&Row> = report
        .rows
        .iter()
        .filter(|r| !r.verdict.is_match())
        .collect();
    if !bad.is_empty() {
        h.push_str("<section><h2>Non-matching cells</h2><table class=\"rows\"><tr><th>key</th><th>verdict</th><th>rel L2</th><th>threshold</th><th>cosine</th><th>max |a−b|</th><th>at</th><th>note</th></tr>");
        for r in bad.iter().take(200) {
            // for non-finite rows the place that matters is the first NaN/Inf
            let at = if r.verdict.is_nan() {
                let first = match (&r.nonfinite_cand_at, &r.nonfinite_ref_at) {
                    (Some(c), _) => Some(*c),
                    (None, r) => *r,
                };
                format!("first non-finite: {}", at_text(report, &first))
            } else {
                at_text(report, &r.max_abs_at)
            };
            let note = if r.verdict.is_nan() {
                let mut n = vec![row_detail(report, r)];
                n.extend(r.notes.iter().cloned());
                n.retain(|s| !s.is_empty());
                n.join("; ")
            } else {
                r.notes.join("; ")
            };
            let mark = if report.first().is_some_and(|f| f.key == r.key) {
                " (first)"
            } else if r.downstream {
                " (downstream)"
            } else {
                ""
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"note\">{}</td></tr>",
                esc(&r.key.to_string()),
                esc(&report.verdict_name(r.verdict)),
                mark,
                metric_text(r, |m| m.rel_l2, sci),
                sci(Some(r.threshold.rel_l2)),
                metric_text(r, |m| m.cosine, cos_text),
                metric_text(r, |m| m.max_abs, sci),
                esc(&at),
                esc(&note)
            );
        }
        h.push_str("</table></section>");
    }

    let _ = write!(
        h,
        "<p class=\"note\">command: <code>{}</code> · created {} · host {} · commit {}</p>",
        esc(&ctx.command),
        rfc3339(ctx.created),
        esc(&ctx.environment.host),
        esc(ctx.environment.commit.as_deref().unwrap_or("-"))
    );
    let _ = writeln!(
        h,
        "</main><div id=\"tip\"></div><script>{JS}</script></body></html>"
    );
    h
}

/// The logits as distributions, and for a diff of two model files the layers that lose most.
fn drift_sections(h: &mut String, report: &DiffReport) {
    if let Some(g) = &report.logits {
        let _ = write!(
            h,
            "<section><h2>Logits as next-token distributions</h2><table class=\"rows\"><tr><th>KL mean (nats)</th><th>KL p99</th><th>KL max</th><th>top-1 agreement</th><th>top-{} overlap</th></tr><tr><td>{:.3e}</td><td>{:.3e}</td><td>{:.3e}</td><td>{}/{} ({:.1}%)</td><td>{:.3}</td></tr></table>",
            g.k,
            g.kld_mean(),
            g.kld_p99(),
            g.kld_max(),
            g.top1.iter().filter(|&&s| s).count(),
            g.positions,
            100.0 * g.top1_rate(),
            g.topk_overlap_mean()
        );
        if let Some(text) = super::top1_misses_text(report) {
            let _ = write!(h, "<p class=\"note\">{}</p>", esc(&text));
        }
        h.push_str("</section>");
    }
    if let Some(d) = &report.drift {
        h.push_str("<section><h2>The places that lose most</h2><p class=\"note\">Own error: relative L2 of a layer's <code>layer_out</code> when the layer starts from the reference's input (teacher-forced replay), of the <code>embedding</code>, and of the <code>logits</code> computed from the reference's <code>final_norm</code> (the output head); accumulated: the same stage running free, with everything inherited.</p><table class=\"rows\"><tr><th>rank</th><th>place</th><th>own rel L2</th><th>worst own stage</th><th>accumulated rel L2</th></tr>");
        for (i, l) in d.top().iter().enumerate() {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{:.3e}</td><td>{} ({:.3e})</td><td>{}</td></tr>",
                i + 1,
                esc(&l.place()),
                l.own_rel_l2,
                esc(l.worst_stage.name()),
                l.worst_own_rel_l2,
                esc(&super::sci(l.accumulated_rel_l2))
            );
        }
        h.push_str("</table></section>");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heat_scale_and_escaping() {
        assert_eq!(heat(0.0), (26, 152, 80));
        assert_eq!(heat(1.0), (215, 48, 39));
        assert_eq!(heat(10.0), (215, 48, 39));
        let (r, g, _) = heat(1e-4);
        assert!(r > 250 && g > 220, "{r} {g}");
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
