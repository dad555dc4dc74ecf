//! Crash-safe file operations: every file appears under its final name complete or not at all.
//!
//! A write goes to a temporary file in the same directory (its name holds
//! [`TEMP_MARKER`]), is fsync'd, renamed over the target, and the directory is fsync'd so the
//! rename itself survives a power cut. A crash leaves at most a temporary file behind, which
//! [`remove_temp_leftovers`] deletes when the run is next opened for writing.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use format::layout::TEMP_MARKER;

use super::error::{IoContext, Result, StoreError};

/// Distinguishes temporary files created by one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh temporary name next to `target`: `<name>.tmp-<pid>-<n>`.
pub fn temp_path_for(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    target.with_file_name(format!("{name}{TEMP_MARKER}{}-{n}", std::process::id()))
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Flushes a directory's entries (new names, renames, removals) to disk.
pub fn sync_dir(dir: &Path) -> Result<()> {
    // Directories cannot be opened for fsync on Windows; NTFS journals renames itself.
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("fsync directory", dir)?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Removes a temporary file after a failed write; the original error matters more.
fn discard(temp: &Path) {
    let _ = fs::remove_file(temp);
}

/// Writes `path` atomically: `write` fills a buffered temporary file, which is then fsync'd and
/// renamed over `path`. On any error the temporary file is removed and `path` is untouched.
pub fn write_atomic<R>(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<R>,
) -> Result<R> {
    let (mut staged, value) = StagedFile::write(path, write)?;
    staged.sync()?;
    staged.publish()?;
    Ok(value)
}

/// The two halves of [`write_atomic`], for a caller that overlaps independent fsyncs: the bytes
/// of `target` written under a temporary name, not yet fsync'd nor renamed. [`sync`] makes them
/// durable; [`publish`] (after `sync`) renames them over the target and fsyncs its directory.
/// Dropped unpublished, the temporary file is removed and the target is untouched.
///
/// [`sync`]: StagedFile::sync
/// [`publish`]: StagedFile::publish
#[derive(Debug)]
pub struct StagedFile {
    temp: PathBuf,
    target: PathBuf,
    file: Option<File>,
    synced: bool,
    published: bool,
}

impl StagedFile {
    /// Writes `target`'s bytes (filled in by `write`) into a fresh temporary file beside it.
    pub fn write<R>(
        target: &Path,
        write: impl FnOnce(&mut BufWriter<File>) -> Result<R>,
    ) -> Result<(Self, R)> {
        let temp = temp_path_for(target);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .ctx("create a temporary file for", target)?;
        let mut staged = Self {
            temp,
            target: target.to_path_buf(),
            file: None,
            synced: false,
            published: false,
        };
        let mut writer = BufWriter::with_capacity(1 << 20, file);
        // Failures name the file being written, not its temporary name, which is gone afterwards.
        let value = write(&mut writer)?;
        let file = writer
            .into_inner()
            .map_err(|e| StoreError::io("write", target, e.into_error()))?;
        staged.file = Some(file);
        Ok((staged, value))
    }

    /// Writes `bytes` as `target`'s content.
    pub fn bytes(target: &Path, bytes: &[u8]) -> Result<Self> {
        Ok(Self::write(target, |w| w.write_all(bytes).ctx("write", target))?.0)
    }

    /// The file this will become.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Makes the written bytes durable (fsync of the temporary file).
    pub fn sync(&mut self) -> Result<()> {
        if let Some(file) = self.file.take() {
            file.sync_all().ctx("fsync", &self.target)?;
        }
        self.synced = true;
        Ok(())
    }

    /// Renames the (synced) bytes over the target and fsyncs the directory, so the new name
    /// survives a power cut. Until this returns, the target is its old content or absent.
    pub fn publish(mut self) -> Result<()> {
        if !self.synced {
            self.sync()?;
        }
        fs::rename(&self.temp, &self.target).ctx("rename into place", &self.target)?;
        self.published = true;
        sync_dir(parent_dir(&self.target))
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if !self.published {
            self.file.take();
            discard(&self.temp);
        }
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    StagedFile::bytes(path, bytes)?.publish()
}

/// How [`link_or_copy_atomic`] made the new name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// A hard link: no bytes copied.
    HardLink,
    /// A full copy, where the filesystem refused a hard link.
    Copy,
}

/// Makes `dst` name the same content as `src`, atomically replacing any existing `dst`.
///
/// A hard link is made under a temporary name and renamed over `dst`, so readers of `dst` see
/// the old file or the new one, never a missing or partial one. Where hard links are
/// impossible (another filesystem, FAT), the bytes are copied and fsync'd instead.
pub fn link_or_copy_atomic(src: &Path, dst: &Path) -> Result<LinkKind> {
    let kind = link_or_copy_unsynced(src, dst)?;
    sync_dir(parent_dir(dst))?;
    Ok(kind)
}

/// As [`link_or_copy_atomic`] without the directory fsync: readers and a crashed process see
/// the same, but after an OS crash `dst` may still name its previous content (a complete file).
/// Only for names derived from durable records that are re-pointed on open, such as the
/// `best`/`last` links ([`crate::CheckpointManager`]'s `repair`).
pub fn link_or_copy_unsynced(src: &Path, dst: &Path) -> Result<LinkKind> {
    let temp = temp_path_for(dst);
    let kind = match fs::hard_link(src, &temp) {
        Ok(()) => LinkKind::HardLink,
        Err(link_err) if link_err.kind() == io::ErrorKind::NotFound => {
            return Err(StoreError::io("link", src, link_err));
        }
        Err(_) => {
            let copied = fs::copy(src, &temp)
                .and_then(|_| File::open(&temp))
                .and_then(|f| f.sync_all())
                .ctx("copy", src);
            if let Err(e) = copied {
                discard(&temp);
                return Err(e);
            }
            LinkKind::Copy
        }
    };
    if let Err(e) = fs::rename(&temp, dst) {
        discard(&temp);
        return Err(StoreError::io("rename into place", dst, e));
    }
    Ok(kind)
}

/// True when both paths name the same file (same device and inode).
pub fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (fs::metadata(a), fs::metadata(b)) {
            (Ok(ma), Ok(mb)) => ma.dev() == mb.dev() && ma.ino() == mb.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        // Without a stable file id in std, assume different: callers then relink, which is safe.
        let _ = (a, b);
        false
    }
}

/// Deletes crash leftovers (names holding [`TEMP_MARKER`]) directly inside `dir`; returns them.
///
/// Call only while holding the run's writer lock: a live writer's temporary files look the same.
pub fn remove_temp_leftovers(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io("list", dir, e)),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.ctx("list", dir)?;
        if !entry.file_name().to_string_lossy().contains(TEMP_MARKER) {
            continue;
        }
        let path = entry.path();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        let outcome = if is_dir {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match outcome {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("remove crash leftover", path, e)),
        }
    }
    if !removed.is_empty() {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// Removes `path` if it exists.
pub fn remove_if_exists(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::io("remove", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_bytes_atomic(&path, b"one").unwrap();
        write_bytes_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_bytes_atomic(&path, b"old").unwrap();
        let err = write_atomic(&path, |w| {
            w.write_all(b"partial").unwrap();
            Err::<(), _>(StoreError::io(
                "write",
                &path,
                io::Error::other("disk full"),
            ))
        });
        assert!(err.is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp file removed"
        );
    }

    #[test]
    fn a_staged_file_is_invisible_until_published_and_gone_if_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_bytes_atomic(&path, b"old").unwrap();
        let mut staged = StagedFile::bytes(&path, b"new").unwrap();
        staged.sync().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"old", "synced but not published");
        drop(staged);
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp file removed"
        );
        StagedFile::bytes(&path, b"new").unwrap().publish().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn link_replaces_atomically_and_shares_the_inode() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, link) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("best"),
        );
        fs::write(&a, b"A").unwrap();
        fs::write(&b, b"B").unwrap();
        assert_eq!(link_or_copy_atomic(&a, &link).unwrap(), LinkKind::HardLink);
        assert!(same_file(&a, &link));
        link_or_copy_atomic(&b, &link).unwrap();
        assert!(same_file(&b, &link));
        assert_eq!(fs::read(&link).unwrap(), b"B");
        assert!(link_or_copy_atomic(&dir.path().join("missing"), &link).is_err());
    }

    #[test]
    fn leftovers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let keep = dir.path().join("epoch_001.safetensors");
        let junk = temp_path_for(&keep);
        fs::write(&keep, b"k").unwrap();
        fs::write(&junk, b"j").unwrap();
        assert_eq!(
            remove_temp_leftovers(dir.path()).unwrap(),
            vec![junk.clone()]
        );
        assert!(keep.exists() && !junk.exists());
    }
}
