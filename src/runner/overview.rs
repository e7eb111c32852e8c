//! report.html of a `falsifier run`: one self-contained page (inline CSS, a small script, no
//! network). From the top: the verdict with the counts by state in colour, a contracts × models
//! matrix, the failures (open) and the skips (folded by reason), then every trial as a
//! collapsible `<details>`. The
//! script only marks `<body data-rendered="ok">` for the rendering test; the page reads the same
//! without it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use super::TrialOutcome;
use super::summary::{Counts, Entry, TrialState, headline, rel_link};
use crate::report::Environment;
use crate::report::html::esc;

/// What the page shows.
pub struct Page<'a> {
    pub entries: &'a [Entry],
    pub counts: &'a Counts,
    pub require_gpu: bool,
    pub command: &'a str,
    pub env: &'a Environment,
    pub created: &'a str,
    pub dir: &'a Path,
}

const CSS: &str = r#"
:root { --fg:#1d2330; --muted:#5b6474; --line:#d9dde5;
  --holds:#1a7f37; --fails:#c62828; --error:#7b1fa2; --skipped:#b26a00; --notrun:#5b6474; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); margin: 0; background: #f6f7f9; }
header { background: #fff; border-bottom: 1px solid var(--line); padding: 18px 28px 14px; }
h1 { font-size: 20px; margin: 0 0 6px; display: flex; align-items: center; gap: 12px; }
h2 { font-size: 15px; margin: 0 0 10px; }
.badge { font-size: 13px; font-weight: 700; padding: 3px 10px; border-radius: 12px; color: #fff; letter-spacing: .04em; }
.badge.holds { background: var(--holds); } .badge.fails { background: var(--fails); } .badge.partial { background: var(--skipped); }
.headline { font-size: 16px; margin: 4px 0 12px; }
.counts { display: flex; gap: 10px; flex-wrap: wrap; margin-bottom: 10px; }
.chip { border-radius: 8px; padding: 6px 12px; color: #fff; font-size: 13px; }
.chip b { font-size: 18px; margin-right: 6px; }
.chip.zero { opacity: .45; }
.holds { --c: var(--holds); } .fails { --c: var(--fails); } .error { --c: var(--error); }
.skipped { --c: var(--skipped); } .notrun { --c: var(--notrun); }
.chip { background: var(--c); }
.meta { color: var(--muted); font-size: 12px; }
main { padding: 16px 28px 40px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 14px 18px; margin-bottom: 16px; overflow-x: auto; }
.state { display: inline-block; min-width: 86px; font-weight: 700; color: var(--c); }
details { border-bottom: 1px solid var(--line); padding: 4px 0; }
details > summary { cursor: pointer; list-style-position: outside; margin-left: 16px; }
details > summary code { font-size: 12.5px; }
details .what { color: var(--muted); font-size: 12.5px; margin-left: 10px; }
details .body { padding: 6px 0 8px 16px; }
pre { margin: 6px 0 0; white-space: pre-wrap; font-size: 12px; background: #f6f7f9; border-radius: 6px; padding: 8px 10px; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 1px 12px; margin: 0; font-size: 12.5px; }
dt { color: var(--muted); } dd { margin: 0; font-family: ui-monospace, Menlo, Consolas, monospace; }
table.matrix { border-collapse: separate; border-spacing: 3px; }
table.matrix th { font-size: 12px; color: var(--muted); text-align: left; padding: 2px 8px; white-space: nowrap; }
table.matrix td { padding: 6px 10px; border-radius: 5px; color: #fff; background: var(--c); font-size: 12.5px; white-space: nowrap; }
table.matrix td.none { background: transparent; }
.good { color: var(--holds); font-weight: 600; }
"#;

const JS: &str = r#"
(function () {
  document.body.setAttribute('data-rendered', 'ok');
  document.body.setAttribute('data-trials', String(document.querySelectorAll('#trials details.trial').length));
})();
"#;

fn chip(class: &str, n: usize, text: &str) -> String {
    format!(
        "<span class=\"chip {class}{}\"><b>{n}</b>{}</span>",
        if n == 0 { " zero" } else { "" },
        esc(text)
    )
}

/// The counts by state, in colour: holds and fails always, the rest when present.
fn chips(c: &Counts) -> String {
    let mut h = String::from("<div class=\"counts\">");
    h.push_str(&chip("holds", c.holds, "hold"));
    h.push_str(&chip("fails", c.fails, "fail"));
    for (r, n) in &c.skipped {
        h.push_str(&chip("skipped", *n, &format!("skipped ({r})")));
    }
    for (r, n) in &c.not_run {
        h.push_str(&chip("notrun", *n, &format!("not run ({r})")));
    }
    if c.errors > 0 {
        h.push_str(&chip("error", c.errors, "error"));
    }
    h.push_str("</div>");
    h
}

/// One trial as a collapsible block: the state, name and first divergence in its summary line;
/// what it expected, found and why in its body.
fn trial(p: &Page, e: &Entry, open: bool) -> String {
    let state = e.state(p.require_gpu);
    let r = e.record(p.require_gpu);
    let mut facts = vec![
        ("contract", r.contract.clone()),
        ("model", r.model.clone()),
        ("backends", r.backends.join(" vs ")),
        ("expected", r.expectation()),
    ];
    if let Some(f) = &r.first_divergence {
        facts.push(("first divergence", f.clone()));
    }
    if let Some(o) = &r.origin {
        facts.push(("origin", o.clone()));
    }
    if let Some(Ok(TrialOutcome::Ran(run))) = &e.outcome {
        facts.push(("time", format!("{:.2?}", run.elapsed)));
    }
    let mut dl = String::from("<dl>");
    for (k, v) in facts {
        let _ = write!(dl, "<dt>{}</dt><dd>{}</dd>", esc(k), esc(&v));
    }
    if let Some(l) = rel_link(p.dir, e, "report.html") {
        let _ = write!(
            dl,
            "<dt>report</dt><dd><a href=\"{}\">{}</a></dd>",
            esc(&l),
            esc(&l)
        );
    }
    dl.push_str("</dl>");
    let planted = r.expected.is_some();
    let what = match (&r.first_divergence, state.reason()) {
        (_, Some(why)) => why.to_string(),
        (Some(f), None) if planted && state == TrialState::Holds => {
            format!("expected divergence found at its planted place: {f}")
        }
        (Some(f), None) => format!("first divergence {f}"),
        (None, None) => String::new(),
    };
    format!(
        "<details class=\"trial {}\"{}><summary><span class=\"state\">{}</span><code>{}</code><span class=\"what\">{}</span></summary><div class=\"body\">{dl}<pre>{}</pre></div></details>\n",
        state.class(),
        if open { " open" } else { "" },
        esc(state.name()),
        esc(&e.name),
        esc(&what),
        esc(&e.detail(p.require_gpu))
    )
}

/// Failures and errors one by one, open; skipped and left-out trials folded, one group per
/// reason, so that a long list of GPU trials skipped on a CPU host does not bury a failure.
fn attention(p: &Page) -> String {
    let mut h = String::from("<section id=\"attention\"><h2>Failures and skips</h2>");
    let states: Vec<(&Entry, TrialState)> = p
        .entries
        .iter()
        .map(|e| (e, e.state(p.require_gpu)))
        .collect();
    if states.iter().all(|(_, s)| *s == TrialState::Holds) {
        h.push_str("<p class=\"good\">Every selected trial ran and held.</p>");
    }
    for (e, s) in &states {
        if matches!(s, TrialState::Fails | TrialState::Error) {
            h.push_str(&trial(p, e, true));
        }
    }
    let mut groups: Vec<(&TrialState, Vec<&Entry>)> = Vec::new();
    for (e, s) in &states {
        if s.reason().is_none() {
            continue;
        }
        match groups.iter_mut().find(|(g, _)| *g == s) {
            Some((_, list)) => list.push(e),
            None => groups.push((s, vec![e])),
        }
    }
    groups.sort_by_key(|(s, _)| s.rank());
    for (s, list) in groups {
        let _ = write!(
            h,
            "<details class=\"group {}\"><summary><span class=\"state\">{}</span>{} trial(s): {}</summary><div class=\"body\">",
            s.class(),
            esc(s.name()),
            list.len(),
            esc(s.reason().unwrap_or_default())
        );
        for e in list {
            h.push_str(&trial(p, e, false));
        }
        h.push_str("</div></details>");
    }
    h.push_str("</section>");
    h
}

/// Contracts down, models across; each cell counts its trials by state and takes the colour of
/// the worst.
fn matrix(p: &Page) -> String {
    let mut models: Vec<&str> = Vec::new();
    let mut contracts: Vec<&str> = Vec::new();
    let mut cells: BTreeMap<(&str, &str), Vec<TrialState>> = BTreeMap::new();
    for e in p.entries {
        let (c, m) = (e.spec.contract.as_str(), e.spec.model_name.as_str());
        if !contracts.contains(&c) {
            contracts.push(c);
        }
        if !models.contains(&m) {
            models.push(m);
        }
        cells
            .entry((c, m))
            .or_default()
            .push(e.state(p.require_gpu));
    }
    let mut h = String::from("<table class=\"matrix\"><tr><th>contract \\ model</th>");
    for m in &models {
        let _ = write!(h, "<th>{}</th>", esc(m));
    }
    h.push_str("</tr>");
    for c in &contracts {
        let _ = write!(h, "<tr><th>{}</th>", esc(c));
        for m in &models {
            let Some(states) = cells.get(&(*c, *m)) else {
                h.push_str("<td class=\"none\"></td>");
                continue;
            };
            let mut by: Vec<(&TrialState, usize)> = Vec::new();
            for s in states {
                match by.iter_mut().find(|(t, _)| *t == s) {
                    Some((_, n)) => *n += 1,
                    None => by.push((s, 1)),
                }
            }
            by.sort_by_key(|(s, _)| s.rank());
            let text: Vec<String> = by
                .iter()
                .map(|(s, n)| format!("{n} {}", s.name()))
                .collect();
            let _ = write!(
                h,
                "<td class=\"{}\" title=\"{}\">{}</td>",
                by[0].0.class(),
                esc(&format!("{c} on {m}: {} trial(s)", states.len())),
                esc(&text.join(" · "))
            );
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
    h
}

pub fn html(p: &Page) -> String {
    let c = p.counts;
    let (badge_class, badge) = if c.all_hold() {
        ("holds", "HOLDS")
    } else if c.holds() {
        ("partial", "NOT ALL RAN")
    } else {
        ("fails", "FAILS")
    };
    let mut h = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>falsifier run</title><style>{CSS}</style></head><body>"
    );
    let _ = write!(
        h,
        "<header><h1>falsifier run <span class=\"badge {badge_class}\">{badge}</span></h1><p class=\"headline\">{}</p>{}<div class=\"meta\">command <code>{}</code> · created {} · host {} · commit {} · card {}</div></header><main>",
        esc(&headline(c)),
        chips(c),
        esc(p.command),
        esc(p.created),
        esc(&p.env.host),
        esc(p.env.commit.as_deref().unwrap_or("-")),
        esc(p.env.card.as_deref().unwrap_or("-")),
    );

    let _ = write!(
        h,
        "<section id=\"matrix\"><h2>Contracts × models</h2>{}</section>",
        matrix(p)
    );
    h.push_str(&attention(p));

    h.push_str("<section id=\"trials\"><h2>All trials</h2>");
    for e in p.entries {
        h.push_str(&trial(p, e, false));
    }
    let _ = writeln!(h, "</section></main><script>{JS}</script></body></html>");
    h
}
