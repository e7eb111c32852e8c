//! Regression tracking for the nightly GPU runner: compare this run's trials with the last
//! run's (both combined report.json files of `falsifier run`) and say what got worse.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// One trial as a combined report lists it.
#[derive(Clone, Debug, Deserialize)]
pub struct TrialLine {
    pub name: String,
    /// `holds`, `FAILS`, `skipped`, `not run` or `ERROR` (older reports: `skipped (no CUDA
    /// device)`).
    pub state: String,
    /// Why a trial was skipped or not run.
    #[serde(default)]
    pub reason: Option<String>,
    pub seconds: Option<f64>,
}

impl TrialLine {
    /// A trial left out of this run on purpose (a heavy one in a `--no-heavy` rehearsal): it
    /// says nothing about the code, so it is neither a regression nor a removal.
    fn left_out(&self) -> bool {
        self.state == "not run"
    }

    fn label(&self) -> String {
        match &self.reason {
            Some(r) => format!("{} ({r})", self.state),
            None => self.state.clone(),
        }
    }
}

#[derive(Deserialize)]
struct RunJson {
    trials: Vec<TrialLine>,
}

/// The trials of a combined report.json.
pub fn load_trials(report: &Path) -> Result<Vec<TrialLine>> {
    let text =
        std::fs::read_to_string(report).map_err(|e| Error::io(report, "reading report", e))?;
    let run: RunJson = serde_json::from_str(&text).map_err(|e| {
        Error::input(format!(
            "{}:{}:{}: not a falsifier run report: {e}",
            report.display(),
            e.line(),
            e.column()
        ))
    })?;
    Ok(run.trials)
}

/// The newest run directory under `history` (names are UTC timestamps, so they sort by time)
/// holding a report.json, other than `exclude`.
pub fn previous_run(history: &Path, exclude: &Path) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(history)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("report.json").is_file() && p != exclude)
        .collect();
    dirs.sort();
    dirs.pop()
}

/// What changed between two runs.
#[derive(Debug, Default)]
pub struct Changes {
    /// Held before, does not hold now (fails, errors, or was skipped).
    pub regressions: Vec<(String, String, String)>,
    /// Did not hold before, holds now.
    pub fixed: Vec<String>,
    pub new: Vec<String>,
    pub removed: Vec<String>,
    /// Trials that held both times but took more than twice as long (and over 1 s).
    pub slower: Vec<(String, f64, f64)>,
}

impl Changes {
    pub fn between(before: &[TrialLine], now: &[TrialLine]) -> Changes {
        let old: BTreeMap<&str, &TrialLine> = before.iter().map(|t| (t.name.as_str(), t)).collect();
        let cur: BTreeMap<&str, &TrialLine> = now.iter().map(|t| (t.name.as_str(), t)).collect();
        let mut c = Changes::default();
        for (name, t) in &cur {
            if t.left_out() {
                continue;
            }
            match old.get(name) {
                None => c.new.push(name.to_string()),
                Some(o) if o.state == "holds" && t.state != "holds" => {
                    c.regressions.push((name.to_string(), o.label(), t.label()))
                }
                Some(o) if o.state != "holds" && t.state == "holds" => {
                    c.fixed.push(name.to_string())
                }
                Some(o) => {
                    if let (Some(a), Some(b)) = (o.seconds, t.seconds)
                        && t.state == "holds"
                        && b > 2.0 * a
                        && b > 1.0
                    {
                        c.slower.push((name.to_string(), a, b));
                    }
                }
            }
        }
        c.removed = old
            .keys()
            .filter(|n| !cur.contains_key(*n))
            .map(|n| n.to_string())
            .collect();
        c
    }

    pub fn markdown(&self, previous: &Path) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Nightly changes against {}\n", previous.display());
        let list = |s: &mut String, title: &str, items: Vec<String>| {
            let _ = writeln!(s, "## {title} ({})\n", items.len());
            for i in items {
                let _ = writeln!(s, "- {i}");
            }
            let _ = writeln!(s);
        };
        list(
            &mut s,
            "Regressions",
            self.regressions
                .iter()
                .map(|(n, a, b)| format!("`{n}`: {a} -> {b}"))
                .collect(),
        );
        list(
            &mut s,
            "Fixed",
            self.fixed.iter().map(|n| format!("`{n}`")).collect(),
        );
        list(
            &mut s,
            "Slower than twice the last run",
            self.slower
                .iter()
                .map(|(n, a, b)| format!("`{n}`: {a:.2} s -> {b:.2} s"))
                .collect(),
        );
        list(
            &mut s,
            "New trials",
            self.new.iter().map(|n| format!("`{n}`")).collect(),
        );
        list(
            &mut s,
            "Removed trials",
            self.removed.iter().map(|n| format!("`{n}`")).collect(),
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, state: &str, s: f64) -> TrialLine {
        TrialLine {
            name: name.into(),
            state: state.into(),
            reason: None,
            seconds: Some(s),
        }
    }

    #[test]
    fn regressions_fixes_and_slowdowns() {
        let before = [
            t("a", "holds", 1.0),
            t("b", "FAILS", 1.0),
            t("c", "holds", 1.0),
            t("d", "holds", 1.0),
            t("gone", "holds", 1.0),
            t("heavy", "holds", 1.0),
        ];
        let now = [
            t("a", "FAILS", 1.0),
            t("b", "holds", 1.0),
            t("c", "holds", 3.0),
            t("d", "skipped (no CUDA device)", 0.0),
            t("e", "holds", 1.0),
            t("heavy", "not run", 0.0),
        ];
        let c = Changes::between(&before, &now);
        let reg: Vec<&str> = c.regressions.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(reg, ["a", "d"]);
        assert_eq!(c.fixed, ["b"]);
        assert_eq!(c.slower.len(), 1);
        assert_eq!(c.new, ["e"]);
        assert_eq!(c.removed, ["gone"]);
        assert!(c.markdown(Path::new("x")).contains("`a`: holds -> FAILS"));
    }
}
