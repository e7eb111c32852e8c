//! Contracts: YAML files that name the checks (falsifiers) a build must pass, the models and
//! prompts they run on, and how far each check has been proven.
//!
//! - [`schema`]: the typed shape of a contract file (unknown keys are errors).
//! - [`lint`]: every rule a contract set must satisfy, each error with file:line.
//! - [`promote`]: move statuses forward on evidence, editing the YAML in place.
//! - [`evidence`]: the part of a run's report.json that promotion reads.
//!
//! # The status ladder
//!
//! Each falsifier climbs `PROPOSED < ACTIVE_ALGORITHM_LEVEL < FUNCTIONAL < DISCHARGED`:
//!
//! | level | evidence |
//! |---|---|
//! | `PROPOSED` | none: the check is written down, nothing has run it |
//! | `ACTIVE_ALGORITHM_LEVEL` | a holding run with reference and candidate both on the CPU, or a planted-fault self-test on the CPU: the algorithm and the check itself are right |
//! | `FUNCTIONAL` | a holding run of the contracted backend pair on real hardware (e.g. cpu vs cuda on a GPU) |
//! | `DISCHARGED` | FUNCTIONAL on every model of the falsifier, the heavy ones included |
//!
//! A falsifier runs once per model, and report.json has one row per falsifier x model whose
//! `level` is what that one trial proves ([`evidence::trial_level`]: ACTIVE_ALGORITHM_LEVEL for
//! a CPU pair, FUNCTIONAL for a GPU pair that ran on a device, null for a skipped trial), so
//! promotion never guesses. Promote combines the rows ([`evidence::Report::verdict`]): any failing
//! row fails the falsifier; otherwise its level is the lowest over its models, raised to
//! DISCHARGED when every model of the falsifier is there at FUNCTIONAL or above, and capped at
//! FUNCTIONAL when some model has no row (partial coverage never discharges).
//!
//! A contract's status is the minimum of its falsifiers' statuses: a contract is only as proven as
//! its weakest check, so one PROPOSED falsifier keeps the whole contract PROPOSED. The field is
//! derived and written by `promote`; lint rejects a hand edit that disagrees.
//!
//! # The evidence rule
//!
//! A status above PROPOSED must be backed by evidence in the contract's own amendment_history:
//! every promotion appends an entry whose `evidence.levels` maps each promoted falsifier to the
//! level its report showed. For a falsifier with status S > PROPOSED, take the **last**
//! amendment_history entry whose `evidence.levels` names it; that level must be >= S. (A later
//! report that shows less does not demote, it is a regression `promote` reports and refuses.)
//!
//! # Model paths
//!
//! A model `path` is relative to the repository root: the nearest ancestor of the contract file
//! that holds a `Cargo.toml`, or, when there is none (a copy of contracts/ in a temp dir), the
//! current directory. See [`resolve_model_path`].

pub mod evidence;
pub mod index;
pub mod lint;
pub mod nesting;
pub mod promote;
pub mod schema;
pub mod shape;

use std::fmt;
use std::path::{Path, PathBuf};

pub use index::{LineIndex, Pos};
pub use schema::{
    Amendment, AmendmentKind, BackendName, Check, Contract, EvidenceRef, Expect, Falsifier,
    FaultSpec, ModelSpec, Selection, Side, Status,
};

use crate::{Error, Result};

/// One problem in one contract file, at a line and column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diag {
    pub file: PathBuf,
    pub pos: Pos,
    pub msg: String,
}

impl fmt::Display for Diag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.pos.line,
            self.pos.column,
            self.msg
        )
    }
}

/// A contract file's text, in memory (promote lints edited text before it writes it).
#[derive(Clone, Debug)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

/// A parsed contract with what is needed to point at its lines.
#[derive(Clone, Debug)]
pub struct LoadedContract {
    pub path: PathBuf,
    pub text: String,
    pub contract: Contract,
    pub index: LineIndex,
}

impl LoadedContract {
    /// A diagnostic at the key `path` of this file (see [`LineIndex`] for the path syntax).
    pub fn diag(&self, path: &str, msg: impl Into<String>) -> Diag {
        Diag {
            file: self.path.clone(),
            pos: self.index.find(path),
            msg: msg.into(),
        }
    }

    /// The model a falsifier names, if the contract defines it.
    pub fn model(&self, name: &str) -> Option<&ModelSpec> {
        self.contract.models.get(name)
    }
}

/// Parse one contract text. A YAML or schema error comes back as a [`Diag`] at the place
/// yaml_serde reports; flow nesting past [`nesting::MAX_FLOW_DEPTH`] is refused first.
pub fn parse(source: &Source) -> std::result::Result<LoadedContract, Diag> {
    if let Some(at) = nesting::too_deep(&source.text, nesting::MAX_FLOW_DEPTH) {
        let lc = yaml_edit::byte_offset_to_line_column(&source.text, at);
        return Err(Diag {
            file: source.path.clone(),
            pos: Pos {
                line: lc.line,
                column: lc.column,
            },
            msg: format!(
                "flow collections ([...] and {{...}}) nest deeper than {} levels here (refused before parsing; a contract needs a few)",
                nesting::MAX_FLOW_DEPTH
            ),
        });
    }
    match serde_yaml::from_str::<Contract>(&source.text) {
        Ok(contract) => Ok(LoadedContract {
            path: source.path.clone(),
            text: source.text.clone(),
            contract,
            index: LineIndex::build(&source.text),
        }),
        Err(e) => {
            let pos = e.location().map_or(Pos { line: 1, column: 1 }, |l| Pos {
                line: l.line(),
                column: l.column(),
            });
            let mut msg = e.to_string();
            // yaml_serde appends " at line L column C"; the Diag already says where.
            if let Some(cut) = msg.rfind(" at line ") {
                msg.truncate(cut);
            }
            Err(Diag {
                file: source.path.clone(),
                pos,
                msg,
            })
        }
    }
}

/// Expand files and directories into contract files: a directory contributes its `*.yaml` and
/// `*.yml` files (not recursive), sorted by name. No argument means `contracts/`.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let default = [PathBuf::from("contracts")];
    let paths = if paths.is_empty() {
        &default[..]
    } else {
        paths
    };
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let rd = std::fs::read_dir(p).map_err(|e| Error::io(p, "read directory", e))?;
            let mut files = Vec::new();
            for entry in rd {
                let entry = entry.map_err(|e| Error::io(p, "read directory", e))?;
                let f = entry.path();
                let yaml = matches!(
                    f.extension().and_then(|e| e.to_str()),
                    Some("yaml") | Some("yml")
                );
                if yaml && f.is_file() {
                    files.push(f);
                }
            }
            files.sort();
            out.extend(files);
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            return Err(Error::input(format!(
                "{}: no such contract file or directory",
                p.display()
            )));
        }
    }
    Ok(out)
}

/// Read contract files into memory.
pub fn read_sources(files: &[PathBuf]) -> Result<Vec<Source>> {
    files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).map_err(|e| Error::io(f, "read", e))?;
            Ok(Source {
                path: f.clone(),
                text,
            })
        })
        .collect()
}

/// Load and lint contracts (files or directories; none means `contracts/`). Any lint error fails
/// the whole load, every error listed, so a runner never runs a contract lint would reject.
pub fn load_checked(paths: &[PathBuf]) -> Result<Vec<LoadedContract>> {
    let sources = read_sources(&collect_files(paths)?)?;
    let (loaded, diags) = lint::lint(&sources);
    if diags.is_empty() {
        Ok(loaded)
    } else {
        let lines: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        Err(Error::input(lines.join("\n")))
    }
}

/// Resolve a model `path` of a contract: absolute paths stay; relative ones are taken from the
/// repository root (the nearest ancestor of the contract file with a `Cargo.toml`), or from the
/// current directory when the contract lives outside a repository.
pub fn resolve_model_path(contract_file: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    let dir = contract_file
        .parent()
        .map(|d| {
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }
        })
        .and_then(|d| d.canonicalize().ok());
    if let Some(dir) = dir {
        for anc in dir.ancestors() {
            if anc.join("Cargo.toml").is_file() {
                return anc.join(p);
            }
        }
    }
    p.to_path_buf()
}
