//! The part of a run's `report.json` (schema `falsifier-report/1`, written by `falsifier run`)
//! that promotion reads. Unknown fields are ignored here: a report grows, a contract must not.
//!
//! A report is a file anyone can write, so nothing in it is taken on its own word: each row's
//! level is recomputed from the row and the contract ([`Report::row_level`]); the row's own
//! `level` may only lower it, or say (null) that the trial proved nothing.

use std::path::Path;

use serde::Deserialize;

use super::schema::{Falsifier, Status};
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
    /// The planted-fault expectation the trial checked (null for a clean falsifier).
    #[serde(default)]
    pub expected: Option<String>,
    /// Level this run claims when it holds (null: it proves nothing, e.g. skipped). Only ever
    /// lowers the level promote recomputes.
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
    /// Every row held, but none proves a level (e.g. every trial was skipped). `discounted`
    /// says why each row that claimed one proves nothing.
    NoLevel { discounted: Vec<String> },
    /// Every row held. `level` is what the falsifier reached (see [`Report::verdict`]);
    /// `missing` lists its models with no level in the report; `discounted` says why rows that
    /// claimed a level prove nothing.
    Level {
        level: Status,
        missing: Vec<String>,
        discounted: Vec<String>,
    },
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

    /// Whether the report names a card: the run had a CUDA trial that ran on a device (`falsifier
    /// run` sets it from the first GPU trial that ran).
    fn ran_on_device(&self) -> bool {
        self.environment
            .card
            .as_deref()
            .is_some_and(|c| !c.trim().is_empty())
    }

    /// The level a holding row proves for falsifier `f`, recomputed from the row and the
    /// contract: the contract's backend pair ([`trial_level`]: a CPU pair proves
    /// ACTIVE_ALGORITHM_LEVEL whatever the row says; a GPU pair FUNCTIONAL only when the report
    /// names the card it ran on), capped by the row's own claim. `Err` says why the row proves
    /// nothing: it claims nothing (skipped, or run with overridden backends), it ran another
    /// backend pair than the contract's, or it checked another planted-fault expectation (an
    /// older version of the falsifier).
    pub fn row_level(
        &self,
        row: &FalsifierResult,
        f: &Falsifier,
    ) -> std::result::Result<Status, String> {
        let on = |why: String| format!("{} on {}: {why}", row.id, row.model);
        let claimed = row
            .level
            .ok_or_else(|| on("the row claims no level (a skipped or overridden trial)".into()))?;
        let pair = f
            .pair()
            .ok_or_else(|| on("the contract's falsifier has no backend pair".into()))?;
        let want = [pair.0.name(), pair.1.name()];
        if row.backends.iter().map(String::as_str).ne(want) {
            return Err(on(format!(
                "the row ran [{}], the contract names [{}]; it proves nothing for this falsifier",
                row.backends.join(", "),
                want.join(", ")
            )));
        }
        let expected = f.expected_text();
        if row.expected != expected {
            let show = |e: &Option<String>| e.clone().unwrap_or_else(|| "none".into());
            return Err(on(format!(
                "the row checked the expectation `{}`, the contract's is `{}`; it proves nothing for this falsifier",
                show(&row.expected),
                show(&expected)
            )));
        }
        let computed = trial_level(pair.clone(), self.ran_on_device()).ok_or_else(|| {
            on(format!(
                "a {}-vs-{} trial, but the report names no card: no GPU trial ran",
                pair.0, pair.1
            ))
        })?;
        Ok(claimed.min(computed))
    }

    /// The verdict on falsifier `f` of contract `contract`.
    ///
    /// Rows are per model. Any failing row fails the falsifier. Otherwise each holding row's
    /// level is recomputed ([`Report::row_level`]), and the falsifier's level is the lowest
    /// over its models that have one; if that is at least FUNCTIONAL and every model of the
    /// falsifier has a level, the falsifier is DISCHARGED (FUNCTIONAL everywhere, heavy models
    /// included); if some model has none, the level is capped at FUNCTIONAL (partial coverage
    /// never discharges).
    pub fn verdict(&self, contract: &str, f: &Falsifier) -> Verdict {
        let rows: Vec<&FalsifierResult> = self
            .falsifiers
            .iter()
            .filter(|r| r.contract == contract && r.id == f.id)
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
        let mut discounted = Vec::new();
        for m in &f.models {
            // A model may appear more than once (merged runs): the lowest level counts, and a row
            // that proves nothing (a skipped trial, a discounted row) proves nothing for that
            // model.
            let mut lowest: Option<Status> = None;
            let mut proven = true;
            for r in rows.iter().filter(|r| &r.model == m) {
                match self.row_level(r, f) {
                    Ok(l) => lowest = Some(lowest.map_or(l, |x| x.min(l))),
                    Err(why) => {
                        proven = false;
                        if r.level.is_some() {
                            discounted.push(why);
                        }
                    }
                }
            }
            match lowest {
                Some(lo) if proven => level = Some(level.map_or(lo, |l| l.min(lo))),
                _ => missing.push(m.clone()),
            }
        }
        match level {
            None => Verdict::NoLevel { discounted },
            Some(l) => {
                let level = if !missing.is_empty() {
                    l.min(Status::Functional)
                } else if l >= Status::Functional {
                    Status::Discharged
                } else {
                    l
                };
                Verdict::Level {
                    level,
                    missing,
                    discounted,
                }
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

    /// A falsifier on models a and b with `backends`, and a planted-fault expectation at
    /// `expect` when given.
    fn falsifier(backends: &str, expect: Option<&str>) -> Falsifier {
        let fault = expect.map_or(String::new(), |at| {
            format!("fault: {{ class: nan, args: [0], at: {at}, side: candidate }}\nexpect: {{ first_divergence: {at} }}\n")
        });
        serde_yaml::from_str(&format!(
            "id: FALSIFY-X\nrule: r\nprediction: p\nif_fails: f\nmodels: [a, b]\nbackends: [{backends}]\ntokens: [1]\nstatus: PROPOSED\n{fault}"
        ))
        .unwrap()
    }

    /// Rows (model, holds, level) of FALSIFY-X run on `backends`, in a report naming `card`.
    fn report_of(
        backends: &str,
        card: Option<&str>,
        expected: Option<&str>,
        rows: &[(&str, bool, Option<&str>)],
    ) -> Report {
        let q = |s: Option<&str>| s.map_or("null".to_string(), |s| format!("\"{s}\""));
        let pair: Vec<String> = backends.split(", ").map(|b| format!("\"{b}\"")).collect();
        let rows: Vec<String> = rows
            .iter()
            .map(|(m, h, l)| {
                format!(
                    r#"{{"id":"FALSIFY-X","contract":"C-X","model":"{m}","backends":[{}],"holds":{h},"expected":{},"level":{},"first_divergence":null}}"#,
                    pair.join(","),
                    q(expected),
                    q(*l)
                )
            })
            .collect();
        let text = format!(
            r#"{{"schema":"falsifier-report/1","holds":true,"extra":1,"environment":{{"card":{}}},"falsifiers":[{}]}}"#,
            q(card),
            rows.join(",")
        );
        serde_json::from_str(&text).unwrap()
    }

    fn report(rows: &[(&str, bool, Option<&str>)]) -> Report {
        report_of("cpu, cuda", Some("NVIDIA H100"), None, rows)
    }

    fn level(level: Status, missing: &[&str]) -> Verdict {
        Verdict::Level {
            level,
            missing: missing.iter().map(|s| s.to_string()).collect(),
            discounted: Vec::new(),
        }
    }

    #[test]
    fn verdicts() {
        let f = falsifier("cpu, cuda", None);
        let v = |r: &Report| r.verdict("C-X", &f);
        // FUNCTIONAL on every model discharges
        let r = report(&[
            ("a", true, Some("FUNCTIONAL")),
            ("b", true, Some("FUNCTIONAL")),
        ]);
        assert_eq!(v(&r), level(Status::Discharged, &[]));
        assert_eq!(r.verdict("C-Y", &f), Verdict::Absent);
        // the weakest model counts
        let r = report(&[
            ("a", true, Some("ACTIVE_ALGORITHM_LEVEL")),
            ("b", true, Some("FUNCTIONAL")),
        ]);
        assert_eq!(v(&r), level(Status::ActiveAlgorithmLevel, &[]));
        // partial coverage: capped at FUNCTIONAL, even if a row claims more
        let r = report(&[("a", true, Some("DISCHARGED"))]);
        assert_eq!(v(&r), level(Status::Functional, &["b"]));
        let r = report(&[("a", true, Some("FUNCTIONAL")), ("b", true, None)]);
        assert_eq!(v(&r), level(Status::Functional, &["b"]));
        let r = report(&[("a", true, None)]);
        assert_eq!(
            v(&r),
            Verdict::NoLevel {
                discounted: Vec::new()
            }
        );
        let r = report(&[("a", false, None), ("b", true, Some("FUNCTIONAL"))]);
        assert_eq!(
            v(&r),
            Verdict::Fails {
                models: vec!["a".into()]
            }
        );
    }

    /// The issue's case: a cpu-vs-cpu-f32 falsifier whose rows claim FUNCTIONAL was written as
    /// DISCHARGED. A CPU pair proves ACTIVE_ALGORITHM_LEVEL, whatever its rows say.
    #[test]
    fn a_cpu_pair_never_discharges_whatever_its_rows_claim() {
        let f = falsifier("cpu, cpu-f32", None);
        for claim in ["FUNCTIONAL", "DISCHARGED"] {
            let r = report_of(
                "cpu, cpu-f32",
                Some("NVIDIA H100"),
                None,
                &[("a", true, Some(claim)), ("b", true, Some(claim))],
            );
            assert_eq!(
                r.verdict("C-X", &f),
                level(Status::ActiveAlgorithmLevel, &[])
            );
        }
    }

    #[test]
    fn a_gpu_pair_proves_functional_only_where_the_report_names_a_card() {
        let f = falsifier("cpu, cuda", None);
        let rows = [
            ("a", true, Some("FUNCTIONAL")),
            ("b", true, Some("FUNCTIONAL")),
        ];
        let r = report_of("cpu, cuda", None, None, &rows);
        match r.verdict("C-X", &f) {
            Verdict::NoLevel { discounted } => {
                assert_eq!(discounted.len(), 2);
                assert!(
                    discounted[0].contains("the report names no card"),
                    "{discounted:?}"
                );
            }
            v => panic!("{v:?}"),
        }
        let r = report_of("cpu, cuda", Some("  "), None, &rows);
        assert!(matches!(r.verdict("C-X", &f), Verdict::NoLevel { .. }));
    }

    #[test]
    fn rows_of_another_pair_or_expectation_prove_nothing() {
        // a row run with other backends (e.g. an overridden candidate) claiming a level
        let f = falsifier("cpu, cpu", None);
        let r = report_of(
            "cpu, cuda",
            Some("NVIDIA H100"),
            None,
            &[
                ("a", true, Some("FUNCTIONAL")),
                ("b", true, Some("FUNCTIONAL")),
            ],
        );
        match r.verdict("C-X", &f) {
            Verdict::NoLevel { discounted } => {
                assert!(
                    discounted[0]
                        .contains("the row ran [cpu, cuda], the contract names [cpu, cpu]"),
                    "{discounted:?}"
                );
            }
            v => panic!("{v:?}"),
        }
        // a planted-fault row checked a different place than the contract now expects
        let f = falsifier("cpu, cpu-f32", Some("layer.1.ffn_out"));
        let rows = [
            ("a", true, Some("ACTIVE_ALGORITHM_LEVEL")),
            ("b", true, Some("ACTIVE_ALGORITHM_LEVEL")),
        ];
        let r = report_of("cpu, cpu-f32", None, Some("layer.0.ffn_out"), &rows);
        match r.verdict("C-X", &f) {
            Verdict::NoLevel { discounted } => assert!(
                discounted[0].contains("the row checked the expectation `layer.0.ffn_out`, the contract's is `layer.1.ffn_out`"),
                "{discounted:?}"
            ),
            v => panic!("{v:?}"),
        }
        // and the same rows with the contract's expectation prove their level
        let r = report_of("cpu, cpu-f32", None, Some("layer.1.ffn_out"), &rows);
        assert_eq!(
            r.verdict("C-X", &f),
            level(Status::ActiveAlgorithmLevel, &[])
        );
        // one model proven, the other discounted: partial coverage, the reason kept
        let r = report_of(
            "cpu, cpu-f32",
            None,
            Some("layer.1.ffn_out"),
            &[("a", true, Some("ACTIVE_ALGORITHM_LEVEL"))],
        );
        assert_eq!(
            r.verdict("C-X", &f),
            level(Status::ActiveAlgorithmLevel, &["b"])
        );
    }

    #[test]
    fn skipped_and_left_out_rows_neither_hold_nor_fail() {
        let f = falsifier("cpu, cuda", None);
        let row = |m: &str, holds: bool, state: &str, level: &str| {
            format!(
                r#"{{"id":"FALSIFY-X","contract":"C-X","model":"{m}","backends":["cpu","cuda"],"holds":{holds},"state":"{state}","level":{level}}}"#
            )
        };
        let text = format!(
            r#"{{"schema":"falsifier-report/1","holds":true,"environment":{{"card":"NVIDIA H100"}},"falsifiers":[{},{}]}}"#,
            row("a", true, "holds", "\"FUNCTIONAL\""),
            row("b", false, "skipped", "null"),
        );
        let r: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(r.verdict("C-X", &f), level(Status::Functional, &["b"]));
        let text = text.replace(r#""state":"skipped""#, r#""state":"FAILS""#);
        let r: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(
            r.verdict("C-X", &f),
            Verdict::Fails {
                models: vec!["b".into()]
            }
        );
    }

    #[test]
    fn trial_levels() {
        use crate::contract::schema::BackendName;
        let b = BackendName::new;
        assert_eq!(
            trial_level((b("cpu"), b("cpu")), false),
            Some(Status::ActiveAlgorithmLevel)
        );
        assert_eq!(
            trial_level((b("cpu"), b("cpu-f32")), true),
            Some(Status::ActiveAlgorithmLevel)
        );
        assert_eq!(
            trial_level((b("cpu"), b("cuda")), true),
            Some(Status::Functional)
        );
        assert_eq!(trial_level((b("cpu"), b("cuda")), false), None);
        // a registered engine is a CPU-level pair unless it needs a GPU
        assert_eq!(
            trial_level((b("cpu"), b("toy")), false),
            Some(Status::ActiveAlgorithmLevel)
        );
    }
}
