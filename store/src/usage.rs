//! How much disk a tree of runs takes: allocated blocks, not file lengths, with each file that
//! is hard-linked more than once (`best`, `last` and their epoch) counted once. The benches
//! compare layouts by it.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Bytes the files under `dir` occupy on disk (its subdirectories included, symlinks not
/// followed), each inode counted once.
pub fn disk_usage(dir: &Path) -> std::io::Result<u64> {
    fn walk(dir: &Path, seen: &mut HashSet<(u64, u64)>) -> std::io::Result<u64> {
        let mut total = 0;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                total += walk(&entry.path(), seen)?;
            } else if seen.insert((meta.dev(), meta.ino())) {
                total += meta.blocks() * 512;
            }
        }
        Ok(total)
    }
    walk(dir, &mut HashSet::new())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hard_links_count_once_and_subdirectories_count() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a"), vec![1u8; 100_000]).unwrap();
        let one = disk_usage(dir.path()).unwrap();
        assert!(one >= 100_000, "{one}");
        std::fs::hard_link(dir.path().join("sub/a"), dir.path().join("b")).unwrap();
        assert_eq!(disk_usage(dir.path()).unwrap(), one);
        std::fs::write(dir.path().join("c"), vec![2u8; 100_000]).unwrap();
        assert!(disk_usage(dir.path()).unwrap() >= one + 100_000);
        assert!(disk_usage(&dir.path().join("missing")).is_err());
    }
}
