//! Replace several files all or nothing, even across a kill (what a promotion touching several
//! contracts needs: a rename is atomic for one file, not for a set).
//!
//! [`replace_all`]:
//! 1. writes each new text to a temp file beside its target ([`crate::fs::tmp_path`]:
//!    `NAME.PID.N.tmp`) and fsyncs it;
//! 2. writes a journal naming every (temp, target) pair, [`JOURNAL`] in the first target's
//!    directory (itself through a temp file, fsync and rename): from here the set is committed;
//! 3. renames each temp onto its target and fsyncs the directories;
//! 4. removes the journal.
//!
//! An error before 2 removes the temps: the old files stand. A kill before 2 leaves temps but
//! no journal: [`recover`] removes them (they are orphans), the old files stand. A kill after 2
//! leaves the journal: [`recover`] finishes the renames (a temp already renamed is gone and is
//! skipped), the new files stand. `falsifier promote` runs [`recover`] first, so after any kill
//! the next promote sees either every old file or every new one.
//!
//! Two promotes of the same contracts at once are not supported: a journal of a live process
//! other than this one is an error rather than something to finish.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The journal's file name, in the directory of a promotion's first target.
pub const JOURNAL: &str = ".falsifier-promote.journal";

#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    /// The process that wrote it.
    pid: u32,
    /// (temp, target), absolute.
    renames: Vec<(PathBuf, PathBuf)>,
}

/// Where [`replace_all_with`] stops early, for the tests: a write error (cleaned up as any
/// error is), or a "kill" (returns at once, leaving on disk what a killed process would).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    Never,
    WriteError(usize),
    KillBeforeJournal,
    KillAfterRenames(usize),
}

/// Replace each `(path, text)` all or nothing (see the module docs).
pub fn replace_all(files: &[(PathBuf, String)]) -> Result<()> {
    replace_all_with(files, Stop::Never)
}

pub(crate) fn replace_all_with(files: &[(PathBuf, String)], stop: Stop) -> Result<()> {
    let Some((first, _)) = files.first() else {
        return Ok(());
    };
    let mut temps = Vec::new();
    if let Err(e) = write_temps(files, stop, &mut temps) {
        remove_all(&temps);
        return Err(e);
    }
    if stop == Stop::KillBeforeJournal {
        return Err(Error::internal("injected kill before the journal"));
    }
    let mut renames = Vec::new();
    for (tmp, (target, _)) in temps.iter().zip(files) {
        renames.push((absolute(tmp)?, absolute(target)?));
    }
    let journal = dir_of(first).join(JOURNAL);
    let record = Journal {
        pid: std::process::id(),
        renames,
    };
    if let Err(e) = write_journal(&journal, &record) {
        remove_all(&temps);
        return Err(e);
    }
    finish(&journal, &record.renames, stop)
}

fn write_temps(files: &[(PathBuf, String)], stop: Stop, temps: &mut Vec<PathBuf>) -> Result<()> {
    for (i, (path, text)) in files.iter().enumerate() {
        let tmp = crate::fs::tmp_path(path);
        temps.push(tmp.clone());
        if stop == Stop::WriteError(i) {
            return Err(Error::io(
                &tmp,
                "write",
                std::io::Error::other("injected write error"),
            ));
        }
        write_synced(&tmp, text.as_bytes())?;
    }
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, "create", e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(path, "write", e))
}

fn write_journal(journal: &Path, record: &Journal) -> Result<()> {
    let text = serde_json::to_string_pretty(record)
        .map_err(|e| Error::internal(format!("promotion journal: {e}")))?;
    let tmp = crate::fs::tmp_path(journal);
    let written = write_synced(&tmp, text.as_bytes()).and_then(|_| {
        std::fs::rename(&tmp, journal).map_err(|e| Error::io(journal, "rename temp file onto", e))
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    sync_dir(&dir_of(journal))
}

/// Step 3 and 4: rename every temp that is still there onto its target, then drop the journal.
fn finish(journal: &Path, renames: &[(PathBuf, PathBuf)], stop: Stop) -> Result<()> {
    for (i, (tmp, target)) in renames.iter().enumerate() {
        if stop == Stop::KillAfterRenames(i) {
            return Err(Error::internal("injected kill between renames"));
        }
        if !tmp.exists() {
            continue; // renamed before a kill
        }
        std::fs::rename(tmp, target).map_err(|e| {
            Error::io(
                target,
                &format!(
                    "rename {} onto (the promotion is committed in {}; the next `falsifier promote` completes it)",
                    tmp.display(),
                    journal.display()
                ),
                e,
            )
        })?;
    }
    let mut dirs: Vec<PathBuf> = renames.iter().map(|(_, t)| dir_of(t)).collect();
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        sync_dir(d)?;
    }
    std::fs::remove_file(journal).map_err(|e| Error::io(journal, "remove", e))?;
    sync_dir(&dir_of(journal))
}

/// Finish or undo what killed promotions left in `dirs`: complete a journal's renames, and
/// remove orphan temp files (`NAME.yaml.PID.N.tmp` of a process that is gone, and the journal's
/// own). With `dry_run` nothing is touched: a journal is an error (the contracts are half
/// promoted until it is completed), orphans are only named. Returns notes on what was done.
pub fn recover(dirs: &[PathBuf], dry_run: bool) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    for dir in dirs {
        let journal = dir.join(JOURNAL);
        if journal.exists() {
            let text =
                std::fs::read_to_string(&journal).map_err(|e| Error::io(&journal, "read", e))?;
            let record: Journal = serde_json::from_str(&text).map_err(|e| {
                Error::input(format!(
                    "{}: unreadable promotion journal ({e}); check the files it names and remove it by hand",
                    journal.display()
                ))
            })?;
            if record.pid != std::process::id() && pid_alive(record.pid) {
                return Err(Error::input(format!(
                    "{}: another promote (pid {}) is replacing contracts here; wait for it to end",
                    journal.display(),
                    record.pid
                )));
            }
            if dry_run {
                return Err(Error::input(format!(
                    "{}: a promotion was interrupted after it committed, and its files are half written; run `falsifier promote` without --dry-run to complete it",
                    journal.display()
                )));
            }
            finish(&journal, &record.renames, Stop::Never)?;
            notes.push(format!(
                "completed an interrupted promotion of {} file(s) ({})",
                record.renames.len(),
                journal.display()
            ));
        }
        let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, "read directory", e))?;
        for entry in rd {
            let path = entry
                .map_err(|e| Error::io(dir, "read directory", e))?
                .path();
            let Some(pid) = orphan_pid(&path) else {
                continue;
            };
            if pid == std::process::id() || pid_alive(pid) {
                continue;
            }
            if dry_run {
                notes.push(format!(
                    "{}: temp file of a killed promotion (a promote without --dry-run removes it)",
                    path.display()
                ));
            } else {
                std::fs::remove_file(&path).map_err(|e| Error::io(&path, "remove", e))?;
                notes.push(format!(
                    "removed {}, the temp file of a promotion killed before it committed",
                    path.display()
                ));
            }
        }
    }
    Ok(notes)
}

/// The writer's pid when `path` is a temp file a promotion writes: `X.yaml.PID.N.tmp`,
/// `X.yml.PID.N.tmp` or the journal's `JOURNAL.PID.N.tmp`.
fn orphan_pid(path: &Path) -> Option<u32> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_suffix(".tmp")?;
    let (rest, n) = rest.rsplit_once('.')?;
    let (base, pid) = rest.rsplit_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(n) || !digits(pid) {
        return None;
    }
    let ours = base.ends_with(".yaml") || base.ends_with(".yml") || base == JOURNAL;
    if !ours {
        return None;
    }
    pid.parse().ok()
}

/// Whether process `pid` runs. Where there is no /proc to ask, every writer counts as gone.
fn pid_alive(pid: u32) -> bool {
    Path::new("/proc/self").exists() && Path::new("/proc").join(pid.to_string()).exists()
}

fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::io(path, "resolve", e))
}

fn remove_all(paths: &[PathBuf]) {
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
}

/// Make a directory's entries (renames, removals) durable. Unix only: elsewhere a directory
/// cannot be opened for it, and the rename is what there is.
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(dir, "sync directory", e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("falsifier-fileset-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Three files "old-i", and the set that replaces them with "new-i".
    fn setup(tag: &str) -> (PathBuf, Vec<(PathBuf, String)>) {
        let d = dir(tag);
        let mut set = Vec::new();
        for i in 0..3 {
            let p = d.join(format!("c{i}.yaml"));
            std::fs::write(&p, format!("old-{i}")).unwrap();
            set.push((p, format!("new-{i}")));
        }
        (d, set)
    }

    fn contents(set: &[(PathBuf, String)]) -> Vec<String> {
        set.iter()
            .map(|(p, _)| std::fs::read_to_string(p).unwrap())
            .collect()
    }

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    const CLEAN: [&str; 3] = ["c0.yaml", "c1.yaml", "c2.yaml"];

    #[test]
    fn replaces_every_file_and_leaves_nothing_behind() {
        let (d, set) = setup("ok");
        replace_all(&set).unwrap();
        assert_eq!(contents(&set), ["new-0", "new-1", "new-2"]);
        assert_eq!(names(&d), CLEAN);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_error_while_writing_changes_nothing() {
        let (d, set) = setup("err");
        replace_all_with(&set, Stop::WriteError(2)).unwrap_err();
        assert_eq!(contents(&set), ["old-0", "old-1", "old-2"]);
        assert_eq!(names(&d), CLEAN, "temps removed");
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A kill after the temps are written but before the journal: the next start removes
    /// the temps and the old set stands.
    #[test]
    fn a_kill_before_the_journal_is_undone() {
        let (d, set) = setup("kill-early");
        replace_all_with(&set, Stop::KillBeforeJournal).unwrap_err();
        assert_eq!(names(&d).len(), 6, "temps left as a kill leaves them");
        // a temp of this very process is no orphan
        assert!(recover(std::slice::from_ref(&d), false).unwrap().is_empty());
        assert_eq!(names(&d).len(), 6);
        // as the next process sees them: the writer (pid above Linux's largest) is gone
        for n in names(&d) {
            if let Some(rest) = n.strip_suffix(".tmp") {
                let (base, k) = rest.rsplit_once('.').unwrap();
                let (base, _) = base.rsplit_once('.').unwrap();
                std::fs::rename(d.join(&n), d.join(format!("{base}.4194305.{k}.tmp"))).unwrap();
            }
        }
        let notes = recover(std::slice::from_ref(&d), true).unwrap();
        assert_eq!(notes.len(), 3, "a dry run names them: {notes:?}");
        assert_eq!(names(&d).len(), 6, "a dry run removes nothing");
        let notes = recover(std::slice::from_ref(&d), false).unwrap();
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert_eq!(contents(&set), ["old-0", "old-1", "old-2"]);
        assert_eq!(names(&d), CLEAN);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A kill between renames, after the journal: one file new, the others old until the next
    /// start, which completes the set.
    #[test]
    fn a_kill_between_renames_is_completed() {
        for k in 0..3 {
            let (d, set) = setup(&format!("kill-mid-{k}"));
            replace_all_with(&set, Stop::KillAfterRenames(k)).unwrap_err();
            let mixed = contents(&set);
            assert_eq!(
                mixed.iter().filter(|t| t.starts_with("new")).count(),
                k,
                "{mixed:?}"
            );
            assert!(d.join(JOURNAL).exists());
            let e = recover(std::slice::from_ref(&d), true).unwrap_err();
            assert!(e.to_string().contains("without --dry-run"), "{e}");
            let notes = recover(std::slice::from_ref(&d), false).unwrap();
            assert!(
                notes[0].starts_with("completed an interrupted promotion of 3 file(s)"),
                "{notes:?}"
            );
            assert_eq!(contents(&set), ["new-0", "new-1", "new-2"]);
            assert_eq!(names(&d), CLEAN);
            std::fs::remove_dir_all(&d).unwrap();
        }
    }

    #[test]
    fn only_promotion_temps_of_dead_writers_are_orphans() {
        let p = |s: &str| orphan_pid(Path::new(s));
        assert_eq!(p("a/c.yaml.123.0.tmp"), Some(123));
        assert_eq!(p("c.yml.7.12.tmp"), Some(7));
        assert_eq!(p(&format!("{JOURNAL}.9.0.tmp")), Some(9));
        for not in [
            "c.yaml",
            "c.yaml.tmp",
            "c.yaml.x.0.tmp",
            "c.txt.1.0.tmp",
            "c.yaml.1.0.bak",
        ] {
            assert_eq!(p(not), None, "{not}");
        }
        assert!(pid_alive(std::process::id()) || !Path::new("/proc/self").exists());
        assert!(!pid_alive(4_194_305), "above Linux's largest pid");
    }
}
