//! The combined report of a `falsifier run`: report.json (schema falsifier-report/1, with one
//! `falsifiers` entry per trial — what `falsifier promote` reads), report.md and report.html
//! (an index of the trials linking each trial's own report).

use std::fmt::Write;
use std::path::Path;

use serde::Serialize;

use super::{TrialOutcome, TrialSpec};
use crate::error::{Error, Result};
use crate::report::json::SCHEMA as REPORT_SCHEMA;
use crate::report::{Environment, FalsifierResult, rfc3339};

/// One trial as the combined report lists it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub spec: TrialSpec,
    pub outcome: std::result::Result<TrialOutcome, String>,
}

impl Entry {
    fn state(&self) -> &'static str {
        match &self.outcome {
            Ok(TrialOutcome::Ran(r)) if r.holds => "holds",
            Ok(TrialOutcome::Ran(_)) => "FAILS",
            Ok(TrialOutcome::NoDevice(_)) => "skipped (no CUDA device)",
            Err(_) => "ERROR",
        }
    }

    fn record(&self) -> FalsifierResult {
        match &self.outcome {
            Ok(TrialOutcome::Ran(r)) => r.record.clone(),
            _ => FalsifierResult {
                id: self.spec.falsifier.id.clone(),
                contract: self.spec.contract.clone(),
                model: self.spec.model_name.clone(),
                backends: self
                    .spec
                    .falsifier
                    .backends
                    .iter()
                    .map(|b| b.name().to_string())
                    .collect(),
                holds: matches!(self.outcome, Ok(TrialOutcome::NoDevice(_))),
                expected: super::expected_text(&self.spec.falsifier),
                ..FalsifierResult::default()
            },
        }
    }

    fn detail(&self) -> String {
        match &self.outcome {
            Ok(TrialOutcome::Ran(r)) => r.message.clone(),
            Ok(TrialOutcome::NoDevice(why)) => why.clone(),
            Err(e) => e.clone(),
        }
    }
}

/// Whether a run holds: every trial that ran held, none errored; skipped GPU trials count
/// as failures only when `require_gpu`.
pub fn holds(entries: &[Entry], require_gpu: bool) -> bool {
    entries.iter().all(|e| match &e.outcome {
        Ok(TrialOutcome::Ran(r)) => r.holds,
        Ok(TrialOutcome::NoDevice(_)) => !require_gpu,
        Err(_) => false,
    })
}

#[derive(Serialize)]
struct Json<'a> {
    schema: &'static str,
    tool: serde_json::Value,
    created: String,
    command: &'a str,
    environment: &'a Environment,
    holds: bool,
    summary: serde_json::Value,
    first_divergence: Option<serde_json::Value>,
    falsifiers: Vec<FalsifierResult>,
    trials: Vec<serde_json::Value>,
}

/// Write report.json, report.md and report.html of a run into `dir`.
pub fn write(
    dir: &Path,
    entries: &[Entry],
    command: &str,
    environment: &Environment,
    require_gpu: bool,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "creating report directory", e))?;
    let created = rfc3339(std::time::SystemTime::now());
    let count = |s: &str| entries.iter().filter(|e| e.state() == s).count();
    let holds = holds(entries, require_gpu);
    // the first failing trial's first divergence, so a reader of report.json sees it at once
    let first = entries.iter().find_map(|e| match &e.outcome {
        Ok(TrialOutcome::Ran(r)) if !r.holds => r.diff.first().map(|row| {
            serde_json::json!({
                "trial": e.name,
                "layer": row.key.layer,
                "stage": row.key.stage.name(),
                "key": row.key.to_string(),
                "verdict": r.diff.verdict_name(row.verdict),
                "origin": r.diff.origin.as_ref().map(|o| serde_json::json!({
                    "layer": o.key.layer, "stage": o.key.stage.name(), "key": o.key.to_string(),
                    "verdict": r.diff.verdict_name(o.verdict), "own_rel_l2": o.own_rel_l2,
                })),
            })
        }),
        _ => None,
    });
    let json = Json {
        schema: REPORT_SCHEMA,
        tool: serde_json::json!({"name": "falsifier", "version": env!("CARGO_PKG_VERSION")}),
        created: created.clone(),
        command,
        environment,
        holds,
        summary: serde_json::json!({
            "trials": entries.len(),
            "holds": count("holds"),
            "fails": count("FAILS"),
            "skipped_no_device": count("skipped (no CUDA device)"),
            "errors": count("ERROR"),
        }),
        first_divergence: first,
        falsifiers: entries.iter().map(Entry::record).collect(),
        trials: entries
            .iter()
            .map(|e| {
                let elapsed = match &e.outcome {
                    Ok(TrialOutcome::Ran(r)) => Some(r.elapsed.as_secs_f64()),
                    _ => None,
                };
                serde_json::json!({"name": e.name, "state": e.state(), "detail": e.detail(), "seconds": elapsed})
            })
            .collect(),
    };
    let text = serde_json::to_string_pretty(&json)
        .map_err(|e| Error::internal(format!("serialising report.json: {e}")))?;
    let put = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| Error::io(&p, "writing report", e))
    };
    put("report.json", text)?;
    put(
        "report.md",
        markdown(entries, command, environment, &created, holds, dir),
    )?;
    put(
        "report.html",
        html(entries, command, environment, &created, holds, dir),
    )?;
    Ok(())
}

fn rel_link(dir: &Path, e: &Entry, file: &str) -> Option<String> {
    match &e.outcome {
        Ok(TrialOutcome::Ran(r)) => {
            let p = r.report_dir.join(file);
            Some(
                p.strip_prefix(dir)
                    .map(|q| q.display().to_string())
                    .unwrap_or_else(|_| p.display().to_string()),
            )
        }
        _ => None,
    }
}

fn markdown(
    entries: &[Entry],
    command: &str,
    env: &Environment,
    created: &str,
    holds: bool,
    dir: &Path,
) -> String {
    let mut s = String::new();
    let failing: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.state() != "holds" && !e.state().starts_with("skipped"))
        .collect();
    let _ = writeln!(s, "# falsifier run\n");
    if holds {
        let _ = writeln!(
            s,
            "All {} trial(s) hold (skipped GPU trials: {}).\n",
            entries.len(),
            entries
                .iter()
                .filter(|e| e.state().starts_with("skipped"))
                .count()
        );
    } else {
        let _ = writeln!(
            s,
            "{} of {} trial(s) do not hold.\n",
            failing.len(),
            entries.len()
        );
    }
    let _ = writeln!(
        s,
        "- command: `{command}`\n- created: {created}\n- host: {}\n- commit: {}\n- card: {}\n",
        env.host,
        env.commit.as_deref().unwrap_or("-"),
        env.card.as_deref().unwrap_or("-")
    );
    let _ = writeln!(
        s,
        "| trial | result | first divergence | origin | expected | report |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for e in entries {
        let r = e.record();
        let link = rel_link(dir, e, "report.md")
            .map(|l| format!("[report]({l})"))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} | {} | {link} |",
            e.name,
            e.state(),
            r.first_divergence.as_deref().unwrap_or("-"),
            r.origin.as_deref().unwrap_or("-"),
            r.expected.as_deref().unwrap_or("all Match"),
        );
    }
    if !failing.is_empty() {
        let _ = writeln!(s, "\n## Failures\n");
        for e in failing {
            let _ = writeln!(s, "### `{}`\n\n```\n{}\n```\n", e.name, e.detail());
        }
    }
    s
}

fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html(
    entries: &[Entry],
    command: &str,
    env: &Environment,
    created: &str,
    holds: bool,
    dir: &Path,
) -> String {
    let mut rows = String::new();
    for e in entries {
        let r = e.record();
        let class = match e.state() {
            "holds" => "ok",
            s if s.starts_with("skipped") => "skip",
            _ => "bad",
        };
        let link = rel_link(dir, e, "report.html")
            .map(|l| format!("<a href=\"{}\">report</a>", esc(&l)))
            .unwrap_or_default();
        let _ = write!(
            rows,
            "<tr class=\"{class}\"><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{link}</td></tr>\n<tr class=\"detail {class}\"><td colspan=\"6\"><pre>{}</pre></td></tr>\n",
            esc(&e.name),
            esc(e.state()),
            esc(r.first_divergence.as_deref().unwrap_or("-")),
            esc(r.origin.as_deref().unwrap_or("-")),
            esc(r.expected.as_deref().unwrap_or("all Match")),
            esc(&e.detail()),
        );
    }
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>falsifier run</title>
<style>
body{{font:14px system-ui,sans-serif;margin:24px;color:#1d2330}}
h1{{font-size:20px}} .verdict{{font-size:16px;font-weight:600;margin:8px 0 16px}}
table{{border-collapse:collapse;width:100%}} td,th{{padding:4px 8px;border-bottom:1px solid #e3e6ec;text-align:left;vertical-align:top}}
tr.ok td:nth-child(2){{color:#1a7f37}} tr.bad td:nth-child(2){{color:#c62828;font-weight:600}} tr.skip td:nth-child(2){{color:#8a8f98}}
tr.detail td{{border-bottom:2px solid #d5d9e0}} tr.detail.ok pre,tr.detail.skip pre{{color:#59606b}}
pre{{margin:0;white-space:pre-wrap;font-size:12px}} code{{font-size:12px}}
.meta{{color:#59606b;font-size:12px;margin-bottom:12px}}
</style></head><body>
<h1>falsifier run</h1>
<div class="verdict">{}</div>
<div class="meta">command <code>{}</code> · created {} · host {} · commit {} · card {}</div>
<table><tr><th>trial</th><th>result</th><th>first divergence</th><th>origin</th><th>expected</th><th></th></tr>
{rows}</table></body></html>
"#,
        if holds {
            format!("All {} trial(s) hold.", entries.len())
        } else {
            "Some trials do not hold.".to_string()
        },
        esc(command),
        esc(created),
        esc(&env.host),
        esc(env.commit.as_deref().unwrap_or("-")),
        esc(env.card.as_deref().unwrap_or("-")),
    )
}
