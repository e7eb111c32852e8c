//! The part of a run's `report.json` (schema `falsifier-report/1`, written by `falsifier run`)
//! that promotion reads. Unknown fields are ignored here: a report grows, a contract must not.

use std::path::Path;

use serde::Deserialize;

use super::schema::Status;
use crate::{Error, Result};

pub const REPORT_SCHEMA: &str = crate::report::json::SCHEMA;

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
    /// `holds`, `FAILS`, `skipped`, `not run` or `ERROR`; absent from older reports.
    #[serde(default)]
    pub state: Option<String>,
    /// Level this run proves when it holds (null: it proves nothing, e.g. skipped).
    pub level: Option<Status>,
    #[serde(default)]
    pub report_dir: Option<String>,
}

impl FalsifierResult {
    /// A trial that did not run (skipped for want of a device, or left out as heavy): it holds
    /// nothing and fails nothing, so it only leaves its model without a level.
    pub fn did_not_run(&self) -> bool {
        matches!(self.state.as_deref(), Some("skipped" | "not run"))
    }
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
    /// Every row held, but none carries a level (e.g. every trial was skipped).
    NoLevel,
    /// Every row held. `level` is what the falsifier reached (see [`Report::verdict`]);
    /// `missing` lists its models with no level in the report.
    Level { level: Status, missing: Vec<String> },
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
    ///
    /// Rows are per model. Any failing row fails the falsifier. Otherwise its level is the lowest
    /// level over the models that have one; if that is at least FUNCTIONAL and every model of
    /// the falsifier has a level, the falsifier is DISCHARGED (FUNCTIONAL everywhere, heavy
    /// models included); if some model has none, the level is capped at FUNCTIONAL (partial
    /// coverage never discharges).
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
            .filter(|r| !r.holds && !r.did_not_run())
            .map(|r| r.model.clone())
            .collect();
        if !failed.is_empty() {
            return Verdict::Fails { models: failed };
        }
        let mut level: Option<Status> = None;
        let mut missing = Vec::new();
        for m in models {
            // A model may appear more than once (merged runs): the lowest level counts, and a row
            // without a level (a skipped trial) proves nothing for that model.
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
            None => Verdict::NoLevel,
            Some(l) => {
                let level = if !missing.is_empty() {
                    l.min(Status::Functional)
                } else if l >= Status::Functional {
                    Status::Discharged
                } else {
                    l
                };
                Verdict::Level { level, missing }
            }
        }
    }
}

/// The level one holding trial proves, for the runner to write into report.json: a pair of CPU
/// backends proves the algorithm (ACTIVE_ALGORITHM_LEVEL); a pair with a GPU backend that
/// actually ran on a device proves FUNCTIONAL. DISCHARGED is never a single trial's level:
/// promote derives it from FUNCTIONAL on every model of the falsifier.
pub fn trial_level(
    pair: (super::schema::BackendName, super::schema::BackendName),
    ran_on_device: bool,
) -> Option<Status> {
    let gpu = pair.0.needs_gpu() || pair.1.needs_gpu();
    match (gpu, ran_on_device) {
        (false, _) => Some(Status::ActiveAlgorithmLevel),
        (true, true) => Some(Status::Functional),
        (true, false) => None,
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
        let lvl = |level, missing: &[&str]| Verdict::Level {
            level,
            missing: missing.iter().map(|s| s.to_string()).collect(),
        };
        let v = |r: &Report| r.verdict("C-X", "FALSIFY-X", &models);
        // FUNCTIONAL on every model discharges
        let r = report(&[
            ("a", true, Some("FUNCTIONAL")),
            ("b", true, Some("FUNCTIONAL")),
        ]);
        assert_eq!(v(&r), lvl(Status::Discharged, &[]));
        assert_eq!(r.verdict("C-Y", "FALSIFY-X", &models), Verdict::Absent);
        // the weakest model counts
        let r = report(&[
            ("a", true, Some("ACTIVE_ALGORITHM_LEVEL")),
            ("b", true, Some("FUNCTIONAL")),
        ]);
        assert_eq!(v(&r), lvl(Status::ActiveAlgorithmLevel, &[]));
        // partial coverage: capped at FUNCTIONAL, even if a row claims more
        let r = report(&[("a", true, Some("DISCHARGED"))]);
        assert_eq!(v(&r), lvl(Status::Functional, &["b"]));
        let r = report(&[("a", true, Some("FUNCTIONAL")), ("b", true, None)]);
        assert_eq!(v(&r), lvl(Status::Functional, &["b"]));
        let r = report(&[("a", true, None)]);
        assert_eq!(v(&r), Verdict::NoLevel);
        let r = report(&[("a", false, None), ("b", true, Some("FUNCTIONAL"))]);
        assert_eq!(
            v(&r),
            Verdict::Fails {
                models: vec!["a".into()]
            }
        );
    }

    #[test]
    fn skipped_and_left_out_rows_neither_hold_nor_fail() {
        let row = |m: &str, holds: bool, state: &str, level: &str| {
            format!(
                r#"{{"id":"FALSIFY-X","contract":"C-X","model":"{m}","backends":["cpu","cuda"],"holds":{holds},"state":"{state}","level":{level}}}"#
            )
        };
        let text = format!(
            r#"{{"schema":"falsifier-report/1","holds":true,"falsifiers":[{},{}]}}"#,
            row("a", true, "holds", "\"FUNCTIONAL\""),
            row("b", false, "skipped", "null"),
        );
        let r: Report = serde_json::from_str(&text).unwrap();
        let models = vec!["a".to_string(), "b".to_string()];
        assert_eq!(
            r.verdict("C-X", "FALSIFY-X", &models),
            Verdict::Level {
                level: Status::Functional,
                missing: vec!["b".into()]
            }
        );
        let text = text.replace(r#""state":"skipped""#, r#""state":"FAILS""#);
        let r: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(
            r.verdict("C-X", "FALSIFY-X", &models),
            Verdict::Fails {
                models: vec!["b".into()]
            }
        );
    }

    #[test]
    fn trial_levels() {
        use crate::contract::schema::BackendName::*;
        assert_eq!(
            trial_level((Cpu, Cpu), false),
            Some(Status::ActiveAlgorithmLevel)
        );
        assert_eq!(
            trial_level((Cpu, CpuF32), true),
            Some(Status::ActiveAlgorithmLevel)
        );
        assert_eq!(trial_level((Cpu, Cuda), true), Some(Status::Functional));
        assert_eq!(trial_level((Cpu, Cuda), false), None);
    }
}
