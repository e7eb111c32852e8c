//! The evidence's commit, checked against the contracts' git repository: a report says which
//! code made it (`environment.commit`), and promote takes that on no one's word.
//!
//! The commit must be a full object id (40 or 64 hex digits, not all zeros) and a commit of the
//! git repository every contract directory is in (`git cat-file -e ID^{commit}`). Promotion is
//! a maintainer's act on a checkout, so there is no way around the check: without git on PATH,
//! outside a git repository, or with a commit the repository does not hold, promote refuses
//! (bad input, exit 2) and says which of these it is.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Result};

/// Check `commit` (from the report at `evidence`) against the repositories of `dirs`.
pub fn check(commit: Option<&str>, evidence: &Path, dirs: &[PathBuf]) -> Result<()> {
    let ev = evidence.display();
    let commit = commit.map(str::trim).ok_or_else(|| {
        Error::input(format!(
            "{ev}: environment.commit is null: the report does not say which code made it, so it cannot promote"
        ))
    })?;
    let hex = commit.bytes().all(|b| b.is_ascii_hexdigit());
    if !(hex && matches!(commit.len(), 40 | 64)) || commit.bytes().all(|b| b == b'0') {
        return Err(Error::input(format!(
            "{ev}: environment.commit `{commit}` is not a full commit id (40 or 64 hex digits, not all zeros)"
        )));
    }
    for dir in dirs {
        let git = |args: &[&str]| {
            Command::new("git")
                .arg("-C")
                .arg(dir)
                .args(args)
                .output()
                .map_err(|e| {
                    Error::input(format!(
                        "promote checks that the evidence's commit is in the contracts' git repository, and git could not be run ({e}); install git (promotion is refused without the check)"
                    ))
                })
        };
        let found = git(&["cat-file", "-e", &format!("{commit}^{{commit}}")])?;
        if found.status.success() {
            continue;
        }
        let repo = git(&["rev-parse", "--git-dir"])?;
        if !repo.status.success() {
            return Err(Error::input(format!(
                "{}: not in a git repository, so the evidence's commit {commit} cannot be checked; promote the contracts inside the git checkout the report's run came from",
                dir.display()
            )));
        }
        return Err(Error::input(format!(
            "{ev}: commit {commit} is not in the git repository of {}: the report was not made by code this repository holds",
            dir.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    #[test]
    fn the_commit_must_be_full_and_in_the_repository() {
        let base = std::env::temp_dir().join(format!("falsifier-commit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (repo, plain) = (base.join("repo"), base.join("plain"));
        std::fs::create_dir_all(&repo).unwrap();
        std::fs::create_dir_all(&plain).unwrap();
        git(&repo, &["init", "-q"]);
        git(&repo, &["commit", "-q", "--allow-empty", "-m", "x"]);
        let head = git(&repo, &["rev-parse", "HEAD"]);
        let tree = git(&repo, &["rev-parse", "HEAD^{tree}"]);
        let ev = Path::new("report.json");
        let dirs = [repo.clone()];
        check(Some(&head), ev, &dirs).unwrap();
        let err = |c: Option<&str>, dirs: &[PathBuf]| check(c, ev, dirs).unwrap_err().to_string();
        assert!(err(None, &dirs).contains("environment.commit is null"));
        for bad in [
            "0000000000000000000000000000000000000000",
            &head[..12],
            "xyz",
        ] {
            assert!(
                err(Some(bad), &dirs).contains("is not a full commit id"),
                "{bad}"
            );
        }
        // a well-formed id the repository does not hold, and an object that is no commit
        let other = "1234567890abcdef1234567890abcdef12345678";
        assert!(err(Some(other), &dirs).contains("is not in the git repository of"));
        assert!(err(Some(&tree), &dirs).contains("is not in the git repository of"));
        // contracts outside any repository (the temp dir has none above it)
        if Command::new("git")
            .arg("-C")
            .arg(&plain)
            .args(["rev-parse", "--git-dir"])
            .output()
            .is_ok_and(|o| !o.status.success())
        {
            assert!(
                err(Some(&head), std::slice::from_ref(&plain)).contains("not in a git repository")
            );
        }
        std::fs::remove_dir_all(&base).unwrap();
    }
}
