//! `falsifier promote`: move falsifier statuses forward to the level a run's report shows, and
//! never further; never backwards either (a failing falsifier above PROPOSED is a regression:
//! reported, left as it is, and the command exits 1).
//!
//! The YAML is edited in place through yaml-edit's lossless tree: only the changed scalars
//! (`status` of each promoted falsifier, the contract's `status` and `version`) are replaced and
//! one flow-style amendment_history entry is appended, so every comment, the key order and the
//! formatting survive. The edited text is linted together with the other contracts before it is
//! written. The changed files are replaced all or nothing, even across a kill ([`fileset`]:
//! temps, a journal, renames), and a promote first completes or undoes what a killed one left.
//! A second promote with the same report finds nothing to move and changes nothing.
//!
//! Nothing in the report is taken on its word: each row's level is recomputed from the row and
//! the contract ([`Report::row_level`]), and the report's commit must be a commit of the
//! contracts' git repository ([`commit`]).
//!
//! When a report holds a regression and promotions at once, the promotions are still applied:
//! each rests on its own falsifier's evidence.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use yaml_edit::Document;

use super::evidence::{Report, Verdict};
use super::schema::{Status, parse_version};
use super::{LoadedContract, Source, collect_files, commit, fileset, lint, read_sources};
use crate::{Error, Result};

/// What to promote from where.
#[derive(Clone, Debug)]
pub struct Options {
    pub evidence: PathBuf,
    /// Contract files or directories (empty: `contracts/`).
    pub contracts: Vec<PathBuf>,
    pub dry_run: bool,
    /// Date for the amendment entry (`YYYY-MM-DD`); None: today, UTC.
    pub today: Option<String>,
}

/// One status move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub falsifier: String,
    pub from: Status,
    pub to: Status,
}

/// One contract file promote changed (or would change, with --dry-run).
#[derive(Clone, Debug)]
pub struct FileChange {
    pub path: PathBuf,
    pub contract: String,
    pub moves: Vec<Move>,
    pub old: String,
    pub new: String,
}

#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub changes: Vec<FileChange>,
    /// Falsifiers above PROPOSED whose evidence fails.
    pub regressions: Vec<String>,
    /// Things worth saying that change nothing (incomplete evidence, unknown ids).
    pub notes: Vec<String>,
}

/// Run a promotion. Writes files unless `dry_run`; the caller prints the outcome.
pub fn promote(opts: &Options) -> Result<Outcome> {
    let dirs = contract_dirs(&opts.contracts);
    let recovered = fileset::recover(&dirs, opts.dry_run)?;
    let report = Report::load(&opts.evidence)?;
    let sources = read_sources(&collect_files(&opts.contracts)?)?;
    let (loaded, diags) = lint::lint(&sources);
    if !diags.is_empty() {
        let lines: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        return Err(Error::input(format!(
            "contracts do not lint clean; fix them before promoting:\n{}",
            lines.join("\n")
        )));
    }
    let today = match &opts.today {
        Some(d) => d.clone(),
        None => today_utc(),
    };

    commit::check(report.environment.commit.as_deref(), &opts.evidence, &dirs)?;

    let mut out = Outcome {
        notes: recovered,
        ..Outcome::default()
    };
    for r in &report.falsifiers {
        let known = loaded.iter().any(|c| {
            c.contract.contract == r.contract && c.contract.falsifiers.iter().any(|f| f.id == r.id)
        });
        if !known
            && !out
                .notes
                .iter()
                .any(|n| n.contains(&format!("{} of {}", r.id, r.contract)))
        {
            out.notes.push(format!(
                "report names {} of {}, which is not among the contracts; ignored",
                r.id, r.contract
            ));
        }
    }

    let mut edited: Vec<Source> = sources.clone();
    for (ci, c) in loaded.iter().enumerate() {
        let mut moves = Vec::new();
        for f in &c.contract.falsifiers {
            let verdict = report.verdict(&c.contract.contract, f);
            if let Verdict::Level { discounted, .. } | Verdict::NoLevel { discounted } = &verdict {
                out.notes.extend(discounted.iter().cloned());
            }
            match verdict {
                Verdict::Absent => {}
                Verdict::Fails { models } => {
                    if f.status > Status::Proposed {
                        out.regressions.push(format!(
                            "REGRESSION {} ({}): status {} but the evidence fails on {}; status left as it is",
                            f.id,
                            c.path.display(),
                            f.status,
                            models.join(", ")
                        ));
                    }
                }
                Verdict::NoLevel { .. } => out.notes.push(format!(
                    "{}: holds, but the report gives no level for any model; not promoted",
                    f.id
                )),
                Verdict::Level { level, missing, .. } => {
                    if !missing.is_empty() && level > f.status {
                        out.notes.push(format!(
                            "{}: no level for model(s) {}: at most FUNCTIONAL",
                            f.id,
                            missing.join(", ")
                        ));
                    }
                    if level > f.status {
                        moves.push(Move {
                            falsifier: f.id.clone(),
                            from: f.status,
                            to: level,
                        });
                    }
                }
            }
        }
        if moves.is_empty() {
            continue;
        }
        let new = edit(c, &moves, &report, &opts.evidence, &today)?;
        edited[ci].text = new.clone();
        out.changes.push(FileChange {
            path: c.path.clone(),
            contract: c.contract.contract.clone(),
            moves,
            old: c.text.clone(),
            new,
        });
    }

    if out.changes.is_empty() {
        return Ok(out);
    }
    // Re-validate everything as it would be on disk, and check the edit did what it meant to.
    let (reloaded, diags) = lint::lint(&edited);
    if !diags.is_empty() {
        let lines: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        return Err(Error::internal(format!(
            "promote produced contracts that do not lint; nothing written:\n{}",
            lines.join("\n")
        )));
    }
    for ch in &out.changes {
        let c = reloaded
            .iter()
            .find(|c| c.path == ch.path)
            .ok_or_else(|| Error::internal(format!("{}: lost after edit", ch.path.display())))?;
        for m in &ch.moves {
            let got = c
                .contract
                .falsifiers
                .iter()
                .find(|f| f.id == m.falsifier)
                .map(|f| f.status);
            if got != Some(m.to) {
                return Err(Error::internal(format!(
                    "{}: edit of {} gave status {got:?}, wanted {}; nothing written",
                    ch.path.display(),
                    m.falsifier,
                    m.to
                )));
            }
        }
    }
    if !opts.dry_run {
        let files: Vec<(PathBuf, String)> = out
            .changes
            .iter()
            .map(|ch| (ch.path.clone(), ch.new.clone()))
            .collect();
        fileset::replace_all(&files)?;
    }
    Ok(out)
}

/// The directories the contracts live in (none given: `contracts/`), where a killed promotion
/// may have left a journal or temp files and whose git repository must hold the evidence's
/// commit.
fn contract_dirs(paths: &[PathBuf]) -> Vec<PathBuf> {
    let default = [PathBuf::from("contracts")];
    let paths = if paths.is_empty() {
        &default[..]
    } else {
        paths
    };
    // a path that does not exist is reported by collect_files
    let mut dirs: Vec<PathBuf> = paths
        .iter()
        .filter(|p| p.exists())
        .map(|p| {
            if p.is_dir() {
                p.clone()
            } else {
                match p.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                    _ => PathBuf::from("."),
                }
            }
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

fn opt_quoted(s: &Option<String>) -> String {
    s.as_deref().map_or("null".to_string(), quoted)
}

/// Apply `moves` to one contract's text.
fn edit(
    c: &LoadedContract,
    moves: &[Move],
    report: &Report,
    evidence: &Path,
    today: &str,
) -> Result<String> {
    let file = c.path.display();
    let bad = |what: &str| Error::internal(format!("{file}: cannot edit: {what}"));
    let doc = Document::from_str(&c.text).map_err(|e| bad(&e.to_string()))?;
    let root = doc
        .as_mapping()
        .ok_or_else(|| bad("top level is not a mapping"))?;
    let falsifiers = root
        .get_sequence("falsifiers")
        .ok_or_else(|| bad("no falsifiers sequence"))?;

    let mut statuses: BTreeMap<String, Status> = c
        .contract
        .falsifiers
        .iter()
        .map(|f| (f.id.clone(), f.status))
        .collect();
    for m in moves {
        let item = falsifiers
            .values()
            .find(|v| {
                v.as_mapping()
                    .and_then(|mp| mp.get("id"))
                    .and_then(|id| id.as_scalar().map(|s| s.as_string()))
                    .as_deref()
                    == Some(m.falsifier.as_str())
            })
            .ok_or_else(|| bad(&format!("falsifier {} not found", m.falsifier)))?;
        let status = item
            .as_mapping()
            .and_then(|mp| mp.get("status"))
            .ok_or_else(|| bad(&format!("{} has no status", m.falsifier)))?;
        status
            .as_scalar()
            .ok_or_else(|| bad(&format!("{}: status is not a scalar", m.falsifier)))?
            .set_value(m.to.name());
        statuses.insert(m.falsifier.clone(), m.to);
    }

    let contract_status = statuses.values().copied().min().unwrap_or(Status::Proposed);
    if contract_status != c.contract.status {
        root.get("status")
            .and_then(|s| s.as_scalar().cloned())
            .ok_or_else(|| bad("contract status is not a scalar"))?
            .set_value(contract_status.name());
    }

    let (ma, mi, pa) = parse_version(&c.contract.version)
        .ok_or_else(|| bad("version is not MAJOR.MINOR.PATCH"))?;
    let version = format!("{ma}.{mi}.{}", pa.saturating_add(1));
    root.get("version")
        .and_then(|s| s.as_scalar().cloned())
        .ok_or_else(|| bad("version is not a scalar"))?
        .set_value(&version);

    let title: Vec<String> = moves
        .iter()
        .map(|m| format!("{}: {} -> {}", m.falsifier, m.from, m.to))
        .collect();
    let levels: Vec<String> = moves
        .iter()
        .map(|m| format!("{}: {}", m.falsifier, m.to))
        .collect();
    let env = &report.environment;
    let entry = format!(
        "{{ version: {version}, date: {today}, kind: promotion, title: {}, evidence: {{ report: {}, commit: {}, date: {}, card: {}, command: {}, levels: {{ {} }} }} }}",
        quoted(&title.join("; ")),
        quoted(&evidence.display().to_string()),
        opt_quoted(&env.commit),
        opt_quoted(&report.created),
        opt_quoted(&env.card),
        opt_quoted(&report.command),
        levels.join(", ")
    );
    let entry_doc = Document::from_str(&entry).map_err(|e| bad(&e.to_string()))?;
    let entry_map = entry_doc
        .as_mapping()
        .ok_or_else(|| bad("amendment entry is not a mapping"))?;
    root.get_sequence("amendment_history")
        .ok_or_else(|| bad("no amendment_history sequence"))?
        .push(entry_map);
    Ok(doc.to_string())
}

/// Today's date, UTC, as `YYYY-MM-DD`.
pub fn today_utc() -> String {
    date_of(std::time::SystemTime::now())
}

/// The date part of [`crate::report::rfc3339`].
fn date_of(t: std::time::SystemTime) -> String {
    crate::report::rfc3339(t)[..10].to_string()
}

/// A unified-style line diff of `old` -> `new` with 3 lines of context.
pub fn unified_diff(path: &Path, old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // LCS table (contracts are a few hundred lines).
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    // Edit script: (' ' | '-' | '+', old line no, new line no, text)
    let mut ops: Vec<(char, usize, usize, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((' ', i, j, a[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', i, j, a[i]));
            i += 1;
        } else {
            ops.push(('+', i, j, b[j]));
            j += 1;
        }
    }
    let mut out = format!(
        "--- {}\n+++ {} (promoted)\n",
        path.display(),
        path.display()
    );
    const CTX: usize = 3;
    let changed: Vec<usize> = (0..ops.len()).filter(|&k| ops[k].0 != ' ').collect();
    let mut k = 0;
    while k < changed.len() {
        let start = changed[k].saturating_sub(CTX);
        let mut end = changed[k];
        while k < changed.len() && changed[k] <= end + 2 * CTX + 1 {
            end = changed[k];
            k += 1;
        }
        let end = (end + CTX + 1).min(ops.len());
        let hunk = &ops[start..end];
        let old_len = hunk.iter().filter(|o| o.0 != '+').count();
        let new_len = hunk.iter().filter(|o| o.0 != '-').count();
        out.push_str(&format!(
            "@@ -{},{old_len} +{},{new_len} @@\n",
            hunk[0].1 + 1,
            hunk[0].2 + 1
        ));
        for (c, _, _, t) in hunk {
            out.push_str(&format!("{c}{t}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        let day = |d: u64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(d * 86_400);
        assert_eq!(date_of(day(0)), "1970-01-01");
        assert_eq!(date_of(day(20_417)), "2025-11-25");
        assert_eq!(date_of(day(11_016)), "2000-02-29");
    }

    #[test]
    fn diff_shows_only_changes_with_context() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n";
        let new = "a\nb\nc\nd\nE\nf\ng\nh\ni\nj\nk\n";
        let d = unified_diff(Path::new("x.yaml"), old, new);
        assert!(d.contains("-e\n+E\n"), "{d}");
        assert!(d.contains("+k\n"), "{d}");
        assert!(!d.contains(" a\n"), "{d}");
        assert!(
            d.starts_with("--- x.yaml\n+++ x.yaml (promoted)\n@@ -2,"),
            "{d}"
        );
    }
}
