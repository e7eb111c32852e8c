//! The part of a run's `report.json` (schema `falsifier-report/1`, written by `falsifier run`)
//! that promotion reads. Unknown fields are ignored here: a report grows, a contract must not.

use std::path::Path;

use serde::Deserialize;

use super::schema::Status;
use crate::{Error, Result};

pub const REPORT_SCHEMA: &str = "falsifier-report/1";

/// Where and how the run happened.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Environment {
    pub host: Option<String>,
    /// GPU the candidate ran on; null on CPU-only runs.
    pub card: Option<String>,
    pub driver: Option<String>,
    /// Git commit of the harness that ran.
    pub commit: Option<String>,
}

/// One falsifier on one model.
#[derive(Clone, Debug, Deserialize)]
pub struct FalsifierResult {
    pub id: String,
    pub contract: String,
    pub model: String,
    #[serde(default)]
    pub backends: Vec<String>,
    pub holds: bool,
    /// Level this run proves when it holds (null: it proves nothing, e.g. skipped).
    pub level: Option<Status>,
    #[serde(default)]
    pub report_dir: Option<String>,
}

/// A combined run report.
#[derive(Clone, Debug, Deserialize)]
pub struct Report {
    pub schema: String,
    pub created: Option<String>,
    pub command: Option<String>,
    #[serde(default)]
    pub environment: Environment,
    pub holds: bool,
    pub falsifiers: Vec<FalsifierResult>,
}

/// What a report says about one falsifier over all its models.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not in the report at all.
    Absent,
    /// At least one model failed.
    Fails { models: Vec<String> },
    /// Some models ran and held, but not all of the falsifier's models have a level.
    Incomplete { missing: Vec<String> },
    /// Every model held; the lowest level reached over them.
    Level(Status),
}

impl Report {
    pub fn load(path: &Path) -> Result<Report> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "read", e))?;
        let report: Report = serde_json::from_str(&text).map_err(|e| {
            Error::input(format!(
                "{}:{}:{}: {e}",
                path.display(),
                e.line(),
                e.column()
            ))
        })?;
        if report.schema != REPORT_SCHEMA {
            return Err(Error::input(format!(
                "{}: schema is `{}`, expected `{REPORT_SCHEMA}`",
                path.display(),
                report.schema
            )));
        }
        Ok(report)
    }

    /// The verdict on falsifier `id` of contract `contract`, which runs on `models`.
    pub fn verdict(&self, contract: &str, id: &str, models: &[String]) -> Verdict {
        let rows: Vec<&FalsifierResult> = self
            .falsifiers
            .iter()
            .filter(|r| r.contract == contract && r.id == id)
            .collect();
        if rows.is_empty() {
            return Verdict::Absent;
        }
        let failed: Vec<String> = rows
            .iter()
            .filter(|r| !r.holds)
            .map(|r| r.model.clone())
            .collect();
        if !failed.is_empty() {
            return Verdict::Fails { models: failed };
        }
        let mut level: Option<Status> = None;
        let mut missing = Vec::new();
        for m in models {
            // A model may appear more than once (e.g. two runs merged): every row must carry a
            // level, and the lowest counts.
            let ls: Vec<Option<Status>> = rows
                .iter()
                .filter(|r| &r.model == m)
                .map(|r| r.level)
                .collect();
            match ls.iter().copied().collect::<Option<Vec<Status>>>() {
                Some(v) if !v.is_empty() => {
                    let lo = v.into_iter().min().unwrap_or(Status::Proposed);
                    level = Some(level.map_or(lo, |l| l.min(lo)));
                }
                _ => missing.push(m.clone()),
            }
        }
        match level {
            Some(l) if missing.is_empty() => Verdict::Level(l),
            _ => Verdict::Incomplete { missing },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(rows: &[(&str, bool, Option<&str>)]) -> Report {
        let rows: Vec<String> = rows
            .iter()
            .map(|(m, h, l)| {
                format!(
                    r#"{{"id":"FALSIFY-X","contract":"C-X","model":"{m}","backends":["cpu","cuda"],"holds":{h},"level":{},"first_divergence":null}}"#,
                    l.map_or("null".to_string(), |l| format!("\"{l}\""))
                )
            })
            .collect();
        let text = format!(
            r#"{{"schema":"falsifier-report/1","holds":true,"extra":1,"falsifiers":[{}]}}"#,
            rows.join(",")
        );
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn verdicts() {
        let models = vec!["a".to_string(), "b".to_string()];
        let r = report(&[
            ("a", true, Some("FUNCTIONAL")),
            ("b", true, Some("DISCHARGED")),
        ]);
        assert_eq!(
            r.verdict("C-X", "FALSIFY-X", &models),
            Verdict::Level(Status::Functional)
        );
        assert_eq!(r.verdict("C-Y", "FALSIFY-X", &models), Verdict::Absent);
        let r = report(&[("a", true, Some("FUNCTIONAL"))]);
        assert_eq!(
            r.verdict("C-X", "FALSIFY-X", &models),
            Verdict::Incomplete {
                missing: vec!["b".into()]
            }
        );
        let r = report(&[("a", true, Some("FUNCTIONAL")), ("b", true, None)]);
        assert!(matches!(
            r.verdict("C-X", "FALSIFY-X", &models),
            Verdict::Incomplete { .. }
        ));
        let r = report(&[("a", false, None), ("b", true, Some("FUNCTIONAL"))]);
        assert_eq!(
            r.verdict("C-X", "FALSIFY-X", &models),
            Verdict::Fails {
                models: vec!["a".into()]
            }
        );
    }
}
