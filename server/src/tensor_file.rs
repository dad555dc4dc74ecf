//! A checkpoint file as served: its safetensors header (read once per file version and cached),
//! its content checksum, the weights-only (LoRA) view built from header and byte ranges, and a
//! body stream that reads the opened file piece by piece so memory stays flat at any size.
//!
//! The file is opened once per request and every byte comes from that descriptor: the trainer
//! replaces checkpoint files by atomic rename, so a request sees one complete version, never a
//! mix or a partial file.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use format::tensors::{is_lora_tensor, meta_keys};
use futures_util::Stream;
use safetensors::tensor::{Metadata as SafetensorsHeader, TensorInfo};
use store::{read_header, HeaderError, TensorFileHeader};

/// Bytes read from disk per body chunk.
const CHUNK_BYTES: usize = 256 * 1024;
/// Bytes read per step while hashing.
const HASH_CHUNK_BYTES: usize = 1024 * 1024;
/// Cached file versions kept before the cache is emptied (each entry is a header, small).
const MAX_CACHED_FILES: usize = 4096;
/// `format` written into a weights-only view (see `format::tensors::meta_keys::FORMAT`).
pub const LORA_ADAPTER_FORMAT: &str = "diffit-lora-adapter";

/// Identity of one version of a file: atomic replacement changes the inode, writes change
/// size or mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileKey {
    dev: u64,
    ino: u64,
    /// Size in bytes.
    pub size: u64,
    mtime_ns: u128,
}

impl FileKey {
    /// A tag naming this version of the file (device, inode, size, mtime), for an ETag where
    /// no content checksum is recorded (the seed system's `.ckpt` files).
    pub fn version_tag(&self) -> String {
        format!(
            "{:x}-{:x}-{:x}-{:x}",
            self.dev, self.ino, self.size, self.mtime_ns
        )
    }

    /// The key of an open file.
    pub fn of(file: &File) -> io::Result<Self> {
        let meta = file.metadata()?;
        #[cfg(unix)]
        let (dev, ino) = {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino())
        };
        #[cfg(not(unix))]
        let (dev, ino) = (0, 0);
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        Ok(Self {
            dev,
            ino,
            size: meta.len(),
            mtime_ns,
        })
    }
}

/// What the server knows about one version of a tensor file.
#[derive(Debug)]
pub struct FileFacts {
    /// `8 + header length`: where tensor data starts.
    data_start: u64,
    header: SafetensorsHeader,
    checksum: OnceLock<String>,
}

impl FileFacts {
    /// The content checksum if already known.
    pub fn checksum(&self) -> Option<&str> {
        self.checksum.get().map(String::as_str)
    }

    /// Records the content checksum (first one wins).
    pub fn set_checksum(&self, checksum: String) -> &str {
        self.checksum.get_or_init(|| checksum)
    }

    /// Names of the tensors in the file.
    pub fn tensor_names(&self) -> Vec<String> {
        self.header.offset_keys()
    }
}

/// Cache of `FileFacts` by file version.
#[derive(Debug, Default)]
pub struct FileFactsCache {
    entries: Mutex<HashMap<FileKey, Arc<FileFacts>>>,
}

impl FileFactsCache {
    /// The facts of `file` (version `key`), reading its header on a miss. Blocking.
    pub fn get_or_read(&self, file: &File, key: FileKey) -> Result<Arc<FileFacts>, HeaderError> {
        if let Some(found) = self
            .entries
            .lock()
            .ok()
            .and_then(|map| map.get(&key).cloned())
        {
            return Ok(found);
        }
        let facts = Arc::new(read_facts(file, key.size)?);
        if let Ok(mut map) = self.entries.lock() {
            if map.len() >= MAX_CACHED_FILES {
                map.clear();
            }
            map.insert(key, facts.clone());
        }
        Ok(facts)
    }
}

fn read_facts(file: &File, size: u64) -> Result<FileFacts, HeaderError> {
    let TensorFileHeader { data_start, header } =
        read_header(PositionalReader { file, offset: 0 }, size)?;
    Ok(FileFacts {
        data_start,
        header,
        checksum: OnceLock::new(),
    })
}

/// `Read` over positional reads of a shared descriptor (its cursor is never moved).
struct PositionalReader<'a> {
    file: &'a File,
    offset: u64,
}

impl io::Read for PositionalReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let got = read_at(self.file, buf, self.offset)?;
        self.offset += got as u64;
        Ok(got)
    }
}

/// `blake3:<hex>` of the whole file, read in chunks (memory stays flat). Blocking.
pub fn compute_checksum(file: &File, size: u64) -> io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; HASH_CHUNK_BYTES];
    let mut offset = 0;
    while offset < size {
        let want = (size - offset).min(HASH_CHUNK_BYTES as u64) as usize;
        let got = read_at(file, &mut buf[..want], offset)?;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while hashing",
            ));
        }
        hasher.update(&buf[..got]);
        offset += got as u64;
    }
    Ok(format!("blake3:{}", hasher.finalize().to_hex()))
}

/// One piece of a response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Bytes built in memory (a rewritten header).
    Inline(Bytes),
    /// A byte range of the opened file.
    File {
        /// Offset in the file.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
}

impl Segment {
    fn len(&self) -> u64 {
        match self {
            Segment::Inline(bytes) => bytes.len() as u64,
            Segment::File { len, .. } => *len,
        }
    }
}

/// A representation to send: pieces of the opened file and built bytes, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Representation {
    segments: Vec<Segment>,
}

impl Representation {
    /// The whole file.
    pub fn whole(size: u64) -> Self {
        Self {
            segments: vec![Segment::File {
                offset: 0,
                len: size,
            }],
        }
    }

    /// A valid safetensors file holding only the LoRA tensors of `facts`' file: a new header
    /// with recomputed offsets, then the original byte ranges of those tensors. `__metadata__`
    /// is kept, with `format` set to `diffit-lora-adapter` since optimizer state is dropped.
    pub fn lora_only(facts: &FileFacts) -> Result<Self, HeaderError> {
        let mut tensors: Vec<(String, TensorInfo)> = facts
            .header
            .tensors()
            .into_iter()
            .filter(|(name, _)| is_lora_tensor(name))
            .map(|(name, info)| (name, info.clone()))
            .collect();
        tensors.sort_by_key(|(_, info)| info.data_offsets);
        let mut segments = vec![];
        let mut next = 0usize;
        for (_, info) in &mut tensors {
            let (start, end) = info.data_offsets;
            let len = end - start;
            push_file_range(&mut segments, facts.data_start + start as u64, len as u64);
            info.data_offsets = (next, next + len);
            next += len;
        }
        let mut metadata = facts.header.metadata().clone();
        if let Some(meta) = metadata.as_mut() {
            if meta.contains_key(meta_keys::FORMAT) {
                meta.insert(
                    meta_keys::FORMAT.to_string(),
                    LORA_ADAPTER_FORMAT.to_string(),
                );
            }
        }
        let header = SafetensorsHeader::new(metadata, tensors)
            .map_err(|e| HeaderError::Invalid(format!("LoRA view: {e:?}")))?;
        let mut json = serde_json::to_vec(&header)
            .map_err(|e| HeaderError::Invalid(format!("LoRA view header: {e}")))?;
        // Pad with spaces so tensor data starts 8-byte aligned, as safetensors writers do.
        while !json.len().is_multiple_of(8) {
            json.push(b' ');
        }
        let mut head = Vec::with_capacity(8 + json.len());
        head.extend_from_slice(&(json.len() as u64).to_le_bytes());
        head.extend_from_slice(&json);
        segments.insert(0, Segment::Inline(Bytes::from(head)));
        Ok(Self { segments })
    }

    /// Total length in bytes.
    pub fn len(&self) -> u64 {
        self.segments.iter().map(Segment::len).sum()
    }

    /// True when it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes `range` (inclusive, within `0..len`) of this representation.
    pub fn slice(&self, range: RangeInclusive<u64>) -> Self {
        let (from, to) = (*range.start(), range.end().saturating_add(1));
        let mut out = vec![];
        let mut at = 0u64;
        for segment in &self.segments {
            let (seg_start, seg_end) = (at, at + segment.len());
            at = seg_end;
            let (lo, hi) = (from.max(seg_start), to.min(seg_end));
            if lo >= hi {
                continue;
            }
            let skip = lo - seg_start;
            let take = hi - lo;
            out.push(match segment {
                Segment::Inline(bytes) => {
                    Segment::Inline(bytes.slice(skip as usize..(skip + take) as usize))
                }
                Segment::File { offset, .. } => Segment::File {
                    offset: offset + skip,
                    len: take,
                },
            });
        }
        Self { segments: out }
    }

    /// The bytes as a stream reading `file` chunk by chunk on the blocking pool.
    pub fn into_stream(
        self,
        file: Arc<File>,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        let state = (file, VecDeque::from(self.segments));
        futures_util::stream::try_unfold(state, |(file, mut segments)| async move {
            let Some(segment) = segments.pop_front() else {
                return Ok(None);
            };
            match segment {
                Segment::Inline(bytes) => Ok(Some((bytes, (file, segments)))),
                Segment::File { offset, len } => {
                    let want = len.min(CHUNK_BYTES as u64) as usize;
                    let reader = file.clone();
                    let chunk = tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0u8; want];
                        let got = read_at(&reader, &mut buf, offset)?;
                        buf.truncate(got);
                        Ok::<_, io::Error>(buf)
                    })
                    .await
                    .map_err(io::Error::other)??;
                    if chunk.is_empty() {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "checkpoint file ended early",
                        ));
                    }
                    let got = chunk.len() as u64;
                    if got < len {
                        segments.push_front(Segment::File {
                            offset: offset + got,
                            len: len - got,
                        });
                    }
                    Ok(Some((Bytes::from(chunk), (file, segments))))
                }
            }
        })
    }
}

fn push_file_range(segments: &mut Vec<Segment>, offset: u64, len: u64) {
    if len == 0 {
        return;
    }
    if let Some(Segment::File {
        offset: prev,
        len: prev_len,
    }) = segments.last_mut()
    {
        if *prev + *prev_len == offset {
            *prev_len += len;
            return;
        }
    }
    segments.push(Segment::File { offset, len });
}

/// Positional read: no shared cursor, so concurrent readers of one descriptor do not interfere.
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        std::os::windows::fs::FileExt::seek_read(file, buf, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cross_segment_boundaries() {
        let rep = Representation {
            segments: vec![
                Segment::Inline(Bytes::from_static(b"abcd")),
                Segment::File {
                    offset: 100,
                    len: 10,
                },
                Segment::File {
                    offset: 500,
                    len: 5,
                },
            ],
        };
        assert_eq!(rep.len(), 19);
        assert_eq!(
            rep.slice(2..=6).segments,
            vec![
                Segment::Inline(Bytes::from_static(b"cd")),
                Segment::File {
                    offset: 100,
                    len: 3
                }
            ]
        );
        assert_eq!(
            rep.slice(13..=18).segments,
            vec![
                Segment::File {
                    offset: 109,
                    len: 1
                },
                Segment::File {
                    offset: 500,
                    len: 5
                }
            ]
        );
        assert_eq!(rep.slice(0..=18), rep);
    }

    #[test]
    fn adjacent_ranges_merge() {
        let mut segments = vec![];
        push_file_range(&mut segments, 8, 4);
        push_file_range(&mut segments, 12, 4);
        push_file_range(&mut segments, 20, 0);
        push_file_range(&mut segments, 24, 4);
        assert_eq!(
            segments,
            vec![
                Segment::File { offset: 8, len: 8 },
                Segment::File { offset: 24, len: 4 }
            ]
        );
    }
}
