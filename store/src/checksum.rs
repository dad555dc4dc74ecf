//! Whole-file checksums (`blake3:<hex>`), computed while writing and checked on load.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use format::CheckpointRecord;

use super::error::{IoContext, Result, StoreError};

/// Prefix of every checksum string.
pub const CHECKSUM_PREFIX: &str = "blake3:";

/// The checksum and size of a file's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    /// `blake3:<hex>`.
    pub checksum: String,
    /// Size in bytes.
    pub size: u64,
}

impl FileDigest {
    /// Returns a `Damaged` error naming `path` unless `actual` matches this expected digest.
    pub fn check(&self, path: &Path, actual: &FileDigest) -> Result<()> {
        if actual.size != self.size {
            return Err(StoreError::Damaged {
                path: path.to_path_buf(),
                reason: format!(
                    "size is {} bytes, metadata records {} (truncated or overwritten)",
                    actual.size, self.size
                ),
            });
        }
        if actual.checksum != self.checksum {
            return Err(StoreError::Damaged {
                path: path.to_path_buf(),
                reason: format!(
                    "checksum is {}, metadata records {}",
                    actual.checksum, self.checksum
                ),
            });
        }
        Ok(())
    }
}

/// A writer that hashes and counts every byte passing through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: blake3::Hasher::new(),
            written: 0,
        }
    }

    /// The wrapped writer.
    pub fn into_inner(self) -> W {
        self.inner
    }

    /// The digest of everything written so far.
    pub fn digest(&self) -> FileDigest {
        FileDigest {
            checksum: format!("{CHECKSUM_PREFIX}{}", self.hasher.finalize().to_hex()),
            size: self.written,
        }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The digest of a byte slice.
pub fn digest_bytes(bytes: &[u8]) -> FileDigest {
    FileDigest {
        checksum: format!("{CHECKSUM_PREFIX}{}", blake3::hash(bytes).to_hex()),
        size: bytes.len() as u64,
    }
}

/// Hashes a file from disk, streaming.
pub fn digest_file(path: &Path) -> Result<FileDigest> {
    let file = File::open(path).ctx("open", path)?;
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(file).ctx("read", path)?;
    let size = hasher.count();
    Ok(FileDigest {
        checksum: format!("{CHECKSUM_PREFIX}{}", hasher.finalize().to_hex()),
        size,
    })
}

/// The digest metadata records for a checkpoint, when it records both checksum and size.
pub(crate) fn record_digest(record: &CheckpointRecord) -> Option<FileDigest> {
    Some(FileDigest {
        checksum: record.checksum.clone()?,
        size: record.size?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_and_whole_digests_agree() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = HashingWriter::new(Vec::new());
        for chunk in data.chunks(777) {
            w.write_all(chunk).unwrap();
        }
        assert_eq!(w.digest(), digest_bytes(&data));
        assert!(w.digest().checksum.starts_with("blake3:"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, &data).unwrap();
        assert_eq!(digest_file(&path).unwrap(), digest_bytes(&data));
    }
}
