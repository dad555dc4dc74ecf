//! `CheckpointsRoot`: the one place where a run's file becomes an open file handle, refusing
//! anything that resolves (through symlinks or otherwise) outside the checkpoints dir.
//!
//! Request data never reaches a path directly: handlers parse run numbers and checkpoint names
//! into typed values first and the paths come from `format::RunLayout`. This module is
//! the second fence: even a well-formed path is canonicalized and checked, and the opened file
//! is checked again by its descriptor so a symlink swapped in between is caught too.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use format::RunLayout;

use crate::error::ApiError;

/// The checkpoints dir, as given and (once it exists) canonicalized.
#[derive(Debug)]
pub struct CheckpointsRoot {
    given: PathBuf,
    canonical: RwLock<Option<PathBuf>>,
    /// The dir is a copy of a bucket's runs (`remote::Follower`): no writer works here, so
    /// a run's recorded status is taken as it is (a bucket has no writer locks).
    follows_bucket: bool,
}

/// Why a confined open failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// The file (or a folder above it) does not exist.
    #[error("{}: not found", .0.display())]
    NotFound(PathBuf),
    /// It resolves outside the checkpoints dir.
    #[error("{}: resolves outside the checkpoints dir", .0.display())]
    Outside(PathBuf),
    /// Any other I/O error.
    #[error("opening {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

impl From<ConfineError> for ApiError {
    fn from(err: ConfineError) -> Self {
        match err {
            ConfineError::NotFound(path) => {
                ApiError::io("opening", path, io::ErrorKind::NotFound.into())
            }
            ConfineError::Outside(path) => ApiError::OutsideRoot(path.display().to_string()),
            ConfineError::Io { path, source } => ApiError::io("opening", path, source),
        }
    }
}

impl CheckpointsRoot {
    /// A root at `dir` (made absolute against the current directory; it may not exist yet).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        let given = if dir.is_absolute() {
            dir
        } else {
            std::env::current_dir()
                .map(|cwd| cwd.join(&dir))
                .unwrap_or(dir)
        };
        Self {
            given,
            canonical: RwLock::new(None),
            follows_bucket: false,
        }
    }

    /// A root that is a local copy of a bucket's runs (see the field).
    pub fn following_bucket(dir: impl Into<PathBuf>) -> Self {
        Self {
            follows_bucket: true,
            ..Self::new(dir)
        }
    }

    /// Whether the dir is a copy of a bucket's runs.
    pub fn follows_bucket(&self) -> bool {
        self.follows_bucket
    }

    /// The dir as configured (absolute).
    pub fn path(&self) -> &Path {
        &self.given
    }

    /// The canonical dir, or `None` while it does not exist.
    pub fn canonical(&self) -> Option<PathBuf> {
        if let Ok(guard) = self.canonical.read() {
            if let Some(path) = guard.as_ref() {
                return Some(path.clone());
            }
        }
        let resolved = std::fs::canonicalize(&self.given).ok()?;
        if let Ok(mut guard) = self.canonical.write() {
            *guard = Some(resolved.clone());
        }
        Some(resolved)
    }

    /// The layout of run `run_number` under the canonical root.
    pub fn layout(&self, run_number: u32) -> Option<RunLayout> {
        self.canonical()
            .map(|root| RunLayout::new(root, run_number))
    }

    /// Opens `path` (built from a `RunLayout`) for reading if it resolves inside the root.
    pub fn open(&self, path: &Path) -> Result<File, ConfineError> {
        let root = self
            .canonical()
            .ok_or_else(|| ConfineError::NotFound(self.given.clone()))?;
        let resolved = std::fs::canonicalize(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => ConfineError::NotFound(path.to_path_buf()),
            _ => ConfineError::Io {
                path: path.to_path_buf(),
                source,
            },
        })?;
        if !resolved.starts_with(&root) {
            return Err(ConfineError::Outside(path.to_path_buf()));
        }
        let file = File::open(&resolved).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => ConfineError::NotFound(path.to_path_buf()),
            _ => ConfineError::Io {
                path: path.to_path_buf(),
                source,
            },
        })?;
        if let Some(actual) = opened_path(&file) {
            if !actual.starts_with(&root) {
                return Err(ConfineError::Outside(path.to_path_buf()));
            }
        }
        let is_file = file.metadata().map(|m| m.is_file()).unwrap_or(false);
        if !is_file {
            return Err(ConfineError::NotFound(path.to_path_buf()));
        }
        Ok(file)
    }

    /// True when `path` exists and resolves inside the root (for run folders).
    pub fn contains_dir(&self, path: &Path) -> Result<bool, ConfineError> {
        let Some(root) = self.canonical() else {
            return Ok(false);
        };
        match std::fs::canonicalize(path) {
            Ok(resolved) if resolved.starts_with(&root) => Ok(resolved.is_dir()),
            Ok(_) => Err(ConfineError::Outside(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(ConfineError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

/// Where an open descriptor really points (Linux: `/proc/self/fd`); `None` elsewhere.
fn opened_path(file: &File) -> Option<PathBuf> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        None
    }
}
