//! `falsifier lint [CONTRACT.yaml|DIR ...]`: check contracts (default: contracts/). Prints every
//! problem as `file:line:column: message`; exit 0 when clean, 2 on any problem.

use std::path::PathBuf;

use super::Outcome;
use crate::Error;
use crate::contract::{collect_files, lint};

pub fn run(paths: &[PathBuf]) -> crate::Result<Outcome> {
    let files = collect_files(paths)?;
    if files.is_empty() {
        return Err(Error::input("no contract files (*.yaml) found"));
    }
    let diags = lint::lint_paths(&files)?;
    for d in &diags {
        eprintln!("{d}");
    }
    if diags.is_empty() {
        println!("{} contract file(s) lint clean", files.len());
        Ok(Outcome::Holds)
    } else {
        Err(Error::input(format!(
            "{} problem(s) in {} contract file(s)",
            diags.len(),
            files.len()
        )))
    }
}
