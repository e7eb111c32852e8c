//! `falsifier promote --evidence REPORT.json [--dry-run] [--contracts DIR]`: move falsifier
//! statuses forward to what the report shows (see `contract::promote`). Exit 0 when nothing
//! regressed, 1 on a regression (reported on stderr, not applied), 2 on bad input.

use std::path::PathBuf;

use super::Outcome;
use crate::contract::promote::{Options, promote, unified_diff};

pub fn run(evidence: PathBuf, contracts: Vec<PathBuf>, dry_run: bool) -> crate::Result<Outcome> {
    let out = promote(&Options {
        evidence,
        contracts,
        dry_run,
        today: None,
    })?;
    for n in &out.notes {
        eprintln!("note: {n}");
    }
    for ch in &out.changes {
        if dry_run {
            print!("{}", unified_diff(&ch.path, &ch.old, &ch.new));
        }
        for m in &ch.moves {
            println!(
                "{}{}: {} {} -> {} ({})",
                if dry_run {
                    "would promote "
                } else {
                    "promoted "
                },
                ch.contract,
                m.falsifier,
                m.from,
                m.to,
                ch.path.display()
            );
        }
    }
    if out.changes.is_empty() {
        println!("nothing to promote");
    }
    for r in &out.regressions {
        eprintln!("{r}");
    }
    Ok(if out.regressions.is_empty() {
        Outcome::Holds
    } else {
        Outcome::Fails
    })
}
