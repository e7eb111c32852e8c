//! Atomic file replacement: write a sibling temp file, then rename it over the target, so a
//! reader (or a memory map of the old file) never sees a half-written file. And a cache of
//! large files' digests, so that a 17 GB model is not hashed again on every run.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

/// A temp path beside `path`, unique across processes (pid) and threads (a counter): two
/// writers of the same target never share a temp file; the last rename wins whole.
pub fn tmp_path(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    path.with_file_name(name)
}

/// What identifies one version of a file on disk: its canonical path, length, modification
/// time and (on Unix) device and inode. A rewrite changes the time or the inode; an in-place
/// rewrite within the file system's time granularity that keeps the length is the one change
/// it can miss.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStamp {
    key: String,
}

impl FileStamp {
    /// The stamp of `path` now, or `None` when the file system cannot tell.
    pub fn of(path: &Path) -> Option<FileStamp> {
        Self::of_open(path, &std::fs::File::open(path).ok()?)
    }

    /// The stamp of `file`, open at `path` (its metadata come from the open file, so the stamp
    /// describes what is read through it even if the path is replaced meanwhile).
    pub fn of_open(path: &Path, file: &std::fs::File) -> Option<FileStamp> {
        let canon = std::fs::canonicalize(path).ok()?;
        let meta = file.metadata().ok()?;
        let mtime = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
        #[cfg(unix)]
        let inode = {
            use std::os::unix::fs::MetadataExt;
            format!("{}:{}", meta.dev(), meta.ino())
        };
        #[cfg(not(unix))]
        let inode = String::new();
        Some(FileStamp {
            key: format!(
                "{}\n{}\n{}.{:09}\n{inode}",
                canon.display(),
                meta.len(),
                mtime.as_secs(),
                mtime.subsec_nanos()
            ),
        })
    }
}

impl FileStamp {
    /// One stamp for several files read as one (the shards of a split model): it changes when
    /// any of them does.
    pub fn joined(stamps: &[&FileStamp]) -> FileStamp {
        let keys: Vec<&str> = stamps.iter().map(|s| s.key.as_str()).collect();
        FileStamp {
            key: keys.join("\n--\n"),
        }
    }
}

/// Where digests are cached: `$FALSIFIER_CACHE_DIR`, else `$XDG_CACHE_HOME/falsifier`, else
/// `~/.cache/falsifier` (then `digests/` below it).
fn digest_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let base = env("FALSIFIER_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("falsifier")))
        .or_else(|| env("HOME").map(|d| d.join(".cache").join("falsifier")))?;
    Some(base.join("digests"))
}

/// `compute()` for the file version `stamp`, remembered across processes: a hit returns the
/// stored digest, a miss computes and stores it (atomically; a cache that cannot be written is
/// skipped silently: it only saves time). `what` names the digest kind ("sha256").
pub fn cached_digest(stamp: &FileStamp, what: &str, compute: impl FnOnce() -> String) -> String {
    use sha2::{Digest, Sha256};
    let name: String = Sha256::digest(format!("{what}\n{}", stamp.key).as_bytes())
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    let Some(dir) = digest_dir() else {
        return compute();
    };
    let entry = dir.join(name);
    // the entry repeats the full key: a hash collision of the name cannot return a wrong digest
    if let Ok(text) = std::fs::read_to_string(&entry)
        && let Some((key, digest)) = text.rsplit_once('\n')
        && key == format!("{what}\n{}", stamp.key)
        && !digest.is_empty()
    {
        return digest.to_string();
    }
    let digest = compute();
    let store = || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        let tmp = tmp_path(&entry);
        std::fs::write(&tmp, format!("{what}\n{}\n{digest}", stamp.key))?;
        std::fs::rename(&tmp, &entry)
    };
    let _ = store();
    digest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_cached_per_file_version() {
        let dir =
            std::env::temp_dir().join(format!("falsifier-digest-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // SAFETY (of the test): only this test reads FALSIFIER_CACHE_DIR in this process
        unsafe { std::env::set_var("FALSIFIER_CACHE_DIR", dir.join("cache")) };
        let file = dir.join("model.bin");
        std::fs::write(&file, b"version 1").unwrap();
        let stamp = FileStamp::of(&file).unwrap();
        let mut calls = 0;
        let mut get = |s: &FileStamp| {
            cached_digest(s, "sha256", || {
                calls += 1;
                format!("digest-{calls}")
            })
        };
        assert_eq!(get(&stamp), "digest-1");
        assert_eq!(get(&stamp), "digest-1", "second lookup is a hit");
        // a new version of the file (new length, new time) misses
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&file, b"version two").unwrap();
        let stamp2 = FileStamp::of(&file).unwrap();
        assert_ne!(stamp, stamp2);
        assert_eq!(get(&stamp2), "digest-2");
        // another kind of digest of the same version is its own entry
        assert_eq!(cached_digest(&stamp2, "other", || "x".into()), "x");
        unsafe { std::env::remove_var("FALSIFIER_CACHE_DIR") };
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temp_paths_are_unique_and_beside_the_target() {
        let target = std::path::Path::new("/some/dir/model.gguf");
        let (a, b) = (tmp_path(target), tmp_path(target));
        assert_ne!(a, b);
        assert_eq!(a.parent(), target.parent());
        assert!(
            a.to_string_lossy()
                .contains(&std::process::id().to_string())
        );
    }
}
