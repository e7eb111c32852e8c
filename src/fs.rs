//! Atomic file replacement: write a sibling temp file, then rename it over the target, so a
//! reader (or a memory map of the old file) never sees a half-written file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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

#[cfg(test)]
mod tests {
    #[test]
    fn temp_paths_are_unique_and_beside_the_target() {
        let target = std::path::Path::new("/some/dir/model.gguf");
        let (a, b) = (super::tmp_path(target), super::tmp_path(target));
        assert_ne!(a, b);
        assert_eq!(a.parent(), target.parent());
        assert!(
            a.to_string_lossy()
                .contains(&std::process::id().to_string())
        );
    }
}
